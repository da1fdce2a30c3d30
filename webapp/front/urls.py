"""Web pages. Login and logout come from django.contrib.auth.urls (accounts/)."""

from django.urls import path

from webapp.front import boards, views

app_name = "front"

urlpatterns = [
    path("", views.index, name="index"),
    path("searches/new", views.search_new, name="search_new"),
    path("searches/<int:search_id>", views.search_detail, name="search"),
    path("searches/<int:search_id>/chart.json", views.search_chart, name="search_chart"),
    path("searches/<int:search_id>/select", views.search_select, name="search_select"),
    path("searches/<int:search_id>/<slug:action>", views.search_action, name="search_action"),
    path("architectures/<int:arch_id>", views.architecture_detail, name="architecture"),
    path("architectures/<int:arch_id>/genotype.json", views.architecture_genotype, name="genotype_json"),
    path("architectures/<int:arch_id>/cells.svg", views.architecture_cells_svg, name="cells_svg"),
    path("architectures/<int:arch_id>/train", views.architecture_train, name="architecture_train"),
    path("selections/<int:selection_id>", views.selection_detail, name="selection"),
    path("selections/<int:selection_id>/cancel", views.selection_cancel, name="selection_cancel"),
    path("training-jobs/<int:job_id>", boards.training_job, name="training_job"),
    path("training-jobs/<int:job_id>/cancel", boards.training_job_cancel, name="training_job_cancel"),
    path("leaderboard", boards.leaderboard, name="leaderboard"),
    path("compare", boards.compare, name="compare"),
]
