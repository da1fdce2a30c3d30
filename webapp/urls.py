"""URL routes: pages, the REST API (with its OpenAPI schema), accounts and admin."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/", include("webapp.api.urls")),
    path("", include("webapp.front.urls")),
]
