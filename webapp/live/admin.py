from django.contrib import admin

from webapp.live.models import SearchEvent


@admin.register(SearchEvent)
class SearchEventAdmin(admin.ModelAdmin):
    list_display = ("search", "seq", "type", "created_at")
    list_filter = ("type",)
    raw_id_fields = ("search",)
    readonly_fields = ("search", "seq", "type", "payload", "created_at")
