"""Admin for teams, memberships and API tokens.

Tokens are stored as a SHA-256 digest; the admin shows the prefix, digest and expiry read-only
and cannot create tokens (the raw value would have to be shown, and it is shown once,
to its owner, by the API). Deleting a token revokes it.
"""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Count

from webapp.accounts.models import ApiToken, Membership, Team


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["name", "member_count", "created_at"]
    search_fields = ["name"]
    date_hierarchy = "created_at"
    inlines = [MembershipInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_members=Count("memberships"))

    @admin.display(description="members", ordering="_members")
    def member_count(self, obj: Team) -> int:
        return obj._members


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "team", "role", "created_at"]
    list_filter = ["role", "team"]
    search_fields = ["user__username", "user__email", "team__name"]
    list_select_related = ["user", "team"]
    autocomplete_fields = ["user", "team"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["prefix", "name", "user", "created_at", "last_used_at", "expires_at"]
    list_filter = ["created_at", "last_used_at", "expires_at"]
    search_fields = ["prefix", "name", "user__username"]
    list_select_related = ["user"]
    fields = ["user", "name", "prefix", "digest", "created_at", "last_used_at", "expires_at"]
    # expires_at is read-only: a later date would extend a token nobody re-issued; to cut
    # one short, delete it.
    readonly_fields = ["user", "prefix", "digest", "created_at", "last_used_at", "expires_at"]

    def has_add_permission(self, request) -> bool:
        return False
