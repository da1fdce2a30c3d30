"""/api/...: every route without a trailing slash, and the same with one."""

from __future__ import annotations

from django.urls import path, re_path
from drf_spectacular.renderers import OpenApiJsonRenderer, OpenApiJsonRenderer2
from drf_spectacular.views import SpectacularAPIView

from webapp.api import views as v

ROUTES = [
    ("teams", v.TeamList, "teams"),
    ("searches", v.SearchList, "searches"),
    ("searches/<int:pk>", v.SearchDetail, "search"),
    ("searches/<int:pk>/cancel", v.SearchCancel, "search-cancel"),
    ("searches/<int:pk>/pause", v.SearchPause, "search-pause"),
    ("searches/<int:pk>/resume", v.SearchResume, "search-resume"),
    ("searches/<int:pk>/architectures", v.SearchArchitectures, "search-architectures"),
    ("searches/<int:pk>/selections", v.SearchSelections, "search-selections"),
    ("searches/<int:pk>/rungs", v.SearchRungs, "search-rungs"),
    ("selections/<int:pk>", v.SelectionDetail, "selection"),
    ("selections/<int:pk>/cancel", v.SelectionCancel, "selection-cancel"),
    ("architectures/<int:pk>", v.ArchitectureDetail, "architecture"),
    ("architectures/<int:pk>/genotype", v.ArchitectureGenotype, "architecture-genotype"),
    ("training-jobs", v.TrainingJobList, "training-jobs"),
    ("training-jobs/<int:pk>", v.TrainingJobDetail, "training-job"),
    ("training-jobs/<int:pk>/cancel", v.TrainingJobCancel, "training-job-cancel"),
    ("training-jobs/<int:pk>/bundle", v.TrainingJobBundle, "training-job-bundle"),
    ("transfer-presets", v.TransferPresetList, "transfer-presets"),
]

schema_view = SpectacularAPIView.as_view(renderer_classes=[OpenApiJsonRenderer2, OpenApiJsonRenderer])

app_name = "api"
urlpatterns = [path("openapi.json", schema_view, name="openapi")]
for route, view, name in ROUTES:
    # The slash variant is left out of the schema (schema=None), so each operation is documented once.
    urlpatterns += [path(route, view.as_view(), name=name), path(f"{route}/", view.as_view(schema=None))]
# Last: whatever matched none of the above (`searches/abc`, `nope`) is a JSON 404, not
# Django's HTML page (which DEBUG would also turn into its technical page).
urlpatterns.append(re_path(r"", v.no_route))
