"""URL routes: pages, the REST API (with its OpenAPI schema), accounts and admin."""

from django.contrib import admin
from django.urls import include, path

from webapp.health import healthz

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/", include("webapp.api.urls")),
    path("staff/", include("webapp.fleet.urls")),
    path("", include("webapp.front.urls")),
]
