"""Staff pages under /staff/: the workers page and its JSON snapshot."""

from django.urls import path

from webapp.fleet import views

app_name = "fleet"

urlpatterns = [
    path("workers", views.workers_page, name="workers"),
    path("workers.json", views.workers_json, name="workers_json"),
]
