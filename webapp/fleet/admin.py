"""Workers in admin: read-only (the workers write their own rows); staff may delete a
row of a worker that is gone for good."""

from __future__ import annotations

from django.contrib import admin

from webapp.fleet.models import Worker


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    list_display = ["hostname", "queues", "device", "shown_status", "last_seen", "task_name", "task_object_id"]
    list_filter = ["status", "queues"]
    search_fields = ["hostname", "device"]
    ordering = ["hostname"]

    @admin.display(description="status")
    def shown_status(self, obj: Worker) -> str:
        return obj.shown_status

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
