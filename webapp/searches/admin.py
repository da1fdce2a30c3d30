"""Admin for searches, architectures, child runs, training jobs, and selections (the
top-K stage and noise floors) with their runs.

Staff review here and act through the services (cancel, requeue failed runs, promote
an architecture to a training job), never by editing statuses or counters by hand:
those fields are read-only. A search's checkpoint is shown by its size only.
"""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from nas_engine.genotype import Genotype, GenotypeError
from nas_engine.render import render_genotype_svg
from webapp.front.presets import SCALE_DEFAULTS, promote
from webapp.searches import services
from webapp.searches.models import (
    Architecture,
    ChildRun,
    RungDecision,
    Search,
    Selection,
    SelectionRun,
    StrategyCheckpointPart,
    TrainingJob,
)

TOP_ARCHITECTURES = 10
PROGRESS_FIELDS = [
    "children_total", "children_sampled", "children_done", "children_failed", "children_reused",
    "children_stopped", "epochs_trained", "epochs_saved", "best_reward", "best_link", "architectures_links",
]  # fmt: skip


def _size(n: int | None) -> str:
    if n is None:
        return "none"
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _link(obj, label: object) -> str:
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, label)


def _pretty(data: object) -> str:
    return format_html("<pre style='white-space: pre-wrap; margin: 0'>{}</pre>", json.dumps(data, indent=2))


def _report(modeladmin, request, done: int, verb: str, refused: list[str]) -> None:
    modeladmin.message_user(request, f"{verb} {done}.", messages.SUCCESS if done else messages.WARNING)
    if refused:
        modeladmin.message_user(request, "Refused: " + "; ".join(refused), messages.WARNING)


@admin.register(Search)
class SearchAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "owner", "status", "progress", "children_failed", "best_reward", "created_at"]
    list_filter = ["status", "team", "created_at"]
    search_fields = ["name", "team__name", "owner__username"]
    list_select_related = ["team", "owner"]
    date_hierarchy = "created_at"
    actions = ["cancel_searches", "requeue_failed"]
    readonly_fields = [
        "team", "owner", "status", "spec_pretty", "children_total", "children_sampled", "children_done",
        "children_failed", "children_reused", "children_stopped", "epochs_trained", "epochs_saved", "best_reward",
        "best_link", "checkpoint_size", "checkpoint_at", "architectures_links", "measure_key", "error",
        "created_at", "started_at", "finished_at", "updated_at",
    ]  # fmt: skip
    fieldsets = [
        (None, {"fields": ["name", "team", "owner", "status", "error"]}),
        ("Progress", {"fields": PROGRESS_FIELDS}),
        ("Spec and strategy state", {"fields": ["spec_pretty", "measure_key", "checkpoint_size", "checkpoint_at"]}),
        ("Times", {"fields": ["created_at", "started_at", "finished_at", "updated_at"]}),
    ]

    def get_queryset(self, request):
        # The checkpoint can be megabytes: never load it for a page, only its length.
        return super().get_queryset(request).annotate(_checkpoint_bytes=StrategyCheckpointPart.stored_bytes())

    def has_add_permission(self, request) -> bool:
        return False  # searches are submitted through the form or the API (services.submit_search)

    @admin.display(description="done / total", ordering="children_done")
    def progress(self, obj: Search) -> str:
        return f"{obj.children_done} / {obj.children_total}"

    @admin.display(description="spec")
    def spec_pretty(self, obj: Search) -> str:
        return _pretty(obj.spec)

    @admin.display(description="checkpoint")
    def checkpoint_size(self, obj: Search) -> str:
        return _size(getattr(obj, "_checkpoint_bytes", None))

    @admin.display(description="best architecture")
    def best_link(self, obj: Search) -> str:
        return _link(obj.best_architecture, obj.best_architecture) if obj.best_architecture_id else "-"

    @admin.display(description="architectures")
    def architectures_links(self, obj: Search) -> str:
        count = obj.architectures.count()
        url = reverse("admin:searches_architecture_changelist") + f"?search__id__exact={obj.pk}"
        top = obj.architectures.filter(reward__isnull=False).order_by("-reward")[:TOP_ARCHITECTURES]
        links = [
            (reverse("admin:searches_architecture_change", args=[a.pk]), a.sample_index, f"{a.reward:.4f}") for a in top
        ]
        best = format_html_join(", ", '<a href="{}">#{} ({})</a>', links)
        return format_html('<a href="{}">all {} architectures</a><br>best: {}', url, count, best or "-")

    # Actions without `allowed_permissions` are offered to anyone who may open the list;
    # the review actions ask for the change permission (webapp.accounts.roles).
    @admin.action(description="Cancel selected searches", permissions=["change"])
    def cancel_searches(self, request, queryset) -> None:
        done, refused = 0, []
        for search in queryset:
            try:
                services.transition(search, "cancel")
                done += 1
            except services.ServiceError as exc:
                refused.append(f"{search.name}: {exc.reason}")
        _report(self, request, done, "Cancelling", refused)

    @admin.action(description="Requeue failed child runs", permissions=["change"])
    def requeue_failed(self, request, queryset) -> None:
        total, refused = 0, []
        for search in queryset:
            try:
                total += services.requeue_failed_runs(search)
            except services.ServiceError as exc:
                refused.append(f"{search.name}: {exc.reason}")
        _report(self, request, total, "Requeued failed child runs:", refused)


class ChildRunInline(admin.StackedInline):
    model = ChildRun
    extra = 0
    can_delete = False
    fields = ["status", "attempt", "worker", "reward", "wall_time", "lease_expires_at", "heartbeat_at", "error"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Architecture)
class ArchitectureAdmin(admin.ModelAdmin):
    list_display = ["__str__", "search", "sample_index", "reward", "params", "mult_adds", "told", "created_at"]
    list_filter = ["told", "search__status", "search__team"]
    search_fields = ["search__name", "canonical_hash", "=sample_index"]
    list_select_related = ["search", "search__team"]
    actions = ["promote_architectures"]
    fields = [
        "search_link", "sample_index", "reward", "reused_from_link", "params", "mult_adds", "told",
        "canonical_hash", "cells", "genotype_pretty", "created_at",
    ]  # fmt: skip
    readonly_fields = fields
    inlines = [ChildRunInline]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.display(description="search")
    def search_link(self, obj: Architecture) -> str:
        return _link(obj.search, obj.search)

    @admin.display(description="reward measured by")
    def reused_from_link(self, obj: Architecture) -> str:
        source = obj.reused_from
        return _link(source, f"#{source.sample_index} of {source.search.name}") if source else "-"

    @admin.display(description="cells")
    def cells(self, obj: Architecture) -> str:
        try:
            genotype = Genotype.from_dict(obj.genotype)
        except GenotypeError as exc:
            return f"cannot draw: {exc}"
        # The renderer escapes every text it writes; its output is the only thing marked safe.
        svg = render_genotype_svg(genotype)
        return format_html('<div style="max-width: 1100px; overflow-x: auto">{}</div>', mark_safe(svg))

    @admin.display(description="genotype")
    def genotype_pretty(self, obj: Architecture) -> str:
        return _pretty(obj.genotype)

    def has_promote_permission(self, request) -> bool:
        # Promoting adds a training job to the team (and spends GPU time): it asks for the
        # add permission of training jobs, which reviewers do not hold.
        return request.user.has_perm("searches.add_trainingjob")

    @admin.action(
        description=f"Promote: train at N={SCALE_DEFAULTS['repeats']} F={SCALE_DEFAULTS['filters']}, "
        f"{SCALE_DEFAULTS['epochs']} epochs on the search's data set",
        permissions=["promote"],
    )
    def promote_architectures(self, request, queryset) -> None:
        done, refused = 0, []
        for arch in queryset.select_related("search__team"):
            try:
                promote(arch, user=request.user)
                done += 1
            except services.ServiceError as exc:
                refused.append(f"{arch}: {exc.field}: {exc.reason}")
        _report(self, request, done, "Training jobs queued:", refused)


@admin.register(ChildRun)
class ChildRunAdmin(admin.ModelAdmin):
    list_display = ["id", "architecture", "status", "attempt", "worker", "reward", "wall_time", "lease_expires_at"]
    list_filter = ["status", "architecture__search__team", "architecture__search__status"]
    search_fields = ["worker", "error", "architecture__search__name"]
    list_select_related = ["architecture__search"]
    readonly_fields = [
        "architecture", "status", "attempt", "worker", "lease_expires_at", "heartbeat_at", "dispatched_at",
        "epochs", "reward", "wall_time", "error", "created_at", "started_at", "finished_at",
    ]  # fmt: skip

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(RungDecision)
class RungDecisionAdmin(admin.ModelAdmin):
    """Early stopping's decisions (workers/rungs.py): read-only, as every decision rests on
    the ones before it."""

    list_display = ["search", "sample_index", "epoch", "stop", "value", "threshold", "peers", "created_at"]
    list_filter = ["stop", "epoch", "search__team"]
    search_fields = ["search__name", "=sample_index"]
    list_select_related = ["search"]
    readonly_fields = [
        "search", "sample_index", "epoch", "stop", "value", "threshold", "peers", "statistic", "created_at",
    ]  # fmt: skip

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(TrainingJob)
class TrainingJobAdmin(admin.ModelAdmin):
    list_display = [
        "name", "team", "owner", "status", "preset", "reward", "test_acc", "params", "created_at", "finished_at"
    ]  # fmt: skip
    list_filter = ["status", "preset", "team", "created_at"]
    search_fields = ["name", "team__name", "owner__username"]
    list_select_related = ["team", "owner"]
    readonly_fields = [
        "team", "owner", "architecture", "genotype", "dataset", "recipe", "preset", "budget", "status", "attempt",
        "worker", "lease_expires_at", "heartbeat_at", "dispatched_at", "epochs", "reward", "test_acc", "test_source",
        "resumed_from_epoch", "params", "mult_adds", "wall_time", "bundle_path", "error", "created_at", "started_at",
        "finished_at",
    ]  # fmt: skip

    actions = ["cancel_training_jobs"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Cancel selected training jobs", permissions=["change"])
    def cancel_training_jobs(self, request, queryset) -> None:
        done, refused = 0, []
        for job in queryset:
            try:
                services.cancel_training_job(job, by=request.user)
                done += 1
            except services.ServiceError as exc:
                refused.append(f"#{job.pk}: {exc.reason}")
        _report(self, request, done, "Cancelled", refused)


@admin.register(Selection)
class SelectionAdmin(admin.ModelAdmin):
    list_display = ["id", "search", "kind", "status", "top_k", "seeds", "winner", "noise_std", "created_at"]
    list_filter = ["kind", "status", "search__team", "created_at"]
    search_fields = ["search__name", "search__team__name", "owner__username", "=id"]
    list_select_related = ["search__team", "winner__search"]
    date_hierarchy = "created_at"
    actions = ["cancel_selections"]
    fields = [
        "search_link", "kind", "owner", "status", "top_k", "seeds", "winner_link", "noise_std", "error",
        "ranking_summary", "runs_link", "recipe_pretty", "created_at", "finished_at",
    ]  # fmt: skip
    readonly_fields = fields

    def has_add_permission(self, request) -> bool:
        return False  # started from the search page, the API or the search's spec (services.create_selection)

    @admin.display(description="search")
    def search_link(self, obj: Selection) -> str:
        return _link(obj.search, obj.search)

    @admin.display(description="winner")
    def winner_link(self, obj: Selection) -> str:
        return _link(obj.winner, obj.winner) if obj.winner_id else "-"

    @admin.display(description="recipe")
    def recipe_pretty(self, obj: Selection) -> str:
        return _pretty(obj.recipe)

    @admin.display(description="runs")
    def runs_link(self, obj: Selection) -> str:
        url = reverse("admin:searches_selectionrun_changelist") + f"?selection__id__exact={obj.pk}"
        return format_html('<a href="{}">all {} runs</a>', url, obj.runs.count())

    @admin.display(description="ranking (mean ± std over seeds, best first)")
    def ranking_summary(self, obj: Selection) -> str:
        rows = [
            (
                reverse("admin:searches_architecture_change", args=[r["architecture"]]),
                r["sample_index"],
                "-" if r["mean"] is None else f"{r['mean']:.4f}",
                "" if r["std"] is None else f" ± {r['std']:.4f}",
                r["n"],
                r["failed"],
            )
            for r in obj.ranking()
        ]
        if not rows:
            return "-"
        return format_html_join("", '<div><a href="{}">#{}</a>: {}{} (n={}, failed {})</div>', rows)

    @admin.action(description="Cancel selected selections", permissions=["change"])
    def cancel_selections(self, request, queryset) -> None:
        done, refused = 0, []
        for selection in queryset:
            try:
                services.cancel_selection(selection)
                done += 1
            except services.ServiceError as exc:
                refused.append(f"#{selection.pk}: {exc.reason}")
        _report(self, request, done, "Cancelled", refused)


@admin.register(SelectionRun)
class SelectionRunAdmin(admin.ModelAdmin):
    list_display = ["id", "selection", "architecture", "seed", "status", "attempt", "worker", "reward", "wall_time"]
    list_filter = ["status", "selection__kind", "selection__search__team", "selection__status"]
    search_fields = ["worker", "error", "selection__search__name", "=selection__id"]
    list_select_related = ["selection__search__team", "architecture__search"]
    readonly_fields = [
        "selection", "architecture", "seed", "status", "attempt", "worker", "lease_expires_at", "heartbeat_at",
        "dispatched_at", "epochs", "reward", "wall_time", "error", "created_at", "started_at", "finished_at",
    ]  # fmt: skip

    def has_add_permission(self, request) -> bool:
        return False
