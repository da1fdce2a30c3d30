"""Workers in admin: read-only (the workers write their own rows); staff may delete a
row of a worker that is gone for good (its process rows go with it)."""

from __future__ import annotations

from django.contrib import admin

from webapp.fleet.models import Worker, WorkerProcess


class WorkerProcessInline(admin.TabularInline):
    model = WorkerProcess
    extra = 0
    fields = ["identity", "index", "pid", "task_name", "task_object_id", "task_started_at", "tasks_done"]
    readonly_fields = fields

    # Shown to whoever may view the worker: a process row is part of it, not a model of its own.
    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.has_perm("fleet.view_worker")

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    list_display = ["hostname", "queues", "device", "shown_status", "last_seen", "tasks_done"]
    list_filter = ["status", "queues"]
    search_fields = ["hostname", "device"]
    ordering = ["hostname"]
    inlines = [WorkerProcessInline]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("processes")

    @admin.display(description="status")
    def shown_status(self, obj: Worker) -> str:
        return obj.shown_status()

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
