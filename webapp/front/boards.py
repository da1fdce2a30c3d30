"""The boards: a leaderboard of architectures across a user's searches, a side-by-side
comparison of a few, and the page of a training job (the transfer step).

Same rules as views.py: every row comes through `for_user`, so another team's
architecture or job is a 404, never a 403. The leaderboard orders and pages in the
database and reads no genotype, spec or checkpoint, so a search of 20,000 architectures
costs three queries per page (the count, the rows, and one aggregate of the rows' selection
runs: mean ± std over seeds beside the search reward).
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from django import forms
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import F
from django.db.models.fields.json import KT, KeyTextTransform, KeyTransform
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from webapp.accounts.models import Team
from webapp.front.views import (
    cancel_by_member,
    cells_svg,
    curve_points,
    epoch_table,
    headline_selection,
    job_progress,
    selection_stats,
)
from webapp.live.events import last_stored_seq
from webapp.searches import services
from webapp.searches.models import RUN_ACTIVE, RUN_SUCCEEDED, Architecture, Search, TrainingJob

LEADERBOARD_PER_PAGE = 50
COMPARE_MIN, COMPARE_MAX = 2, 6
SEARCH_CHOICES_MAX = 500  # newest searches offered in the filter (any visible one is accepted)
SORTS = {
    # key: (label, ordering); ties broken by the better reward, then by age
    "reward": ("reward, best first", [F("reward").desc(), "id"]),
    "params": ("params, fewest first", [F("params").asc(nulls_last=True), F("reward").desc(), "id"]),
    "mult_adds": ("mult-adds, fewest first", [F("mult_adds").asc(nulls_last=True), F("reward").desc(), "id"]),
}
# spec->'dataset'->>'name' of an architecture's search (KT() does not follow relations)
DATASET_NAME = KeyTextTransform("name", KeyTransform("dataset", "search__spec"))
# What a training job's worker changes while it runs.
LIVE_FIELDS = ["status", "epochs", "reward", "params", "mult_adds", "wall_time", "bundle_path", "error", "finished_at"]
# Columns a leaderboard row shows; nothing else is read (genotype, spec, checkpoint stay in the database).
ROW_FIELDS = (
    "id",
    "sample_index",
    "reward",
    "params",
    "mult_adds",
    "search__id",
    "search__name",
    "search__team__id",
    "search__team__name",
)


class LeaderboardFilters(forms.Form):
    team = forms.ModelChoiceField(queryset=Team.objects.none(), required=False, empty_label="all teams")
    search = forms.ModelChoiceField(queryset=Search.objects.none(), required=False, empty_label="all searches")
    dataset = forms.ChoiceField(required=False, label="Data set")
    sort = forms.ChoiceField(choices=[(k, label) for k, (label, _) in SORTS.items()], required=False)

    def __init__(self, data, *, user):
        super().__init__(data)
        self.fields["team"].queryset = Team.objects.for_user(user).order_by("name")
        searches = Search.objects.for_user(user).only("id", "name").order_by("-created_at", "-id")
        self.fields["search"].queryset = searches
        # The widget offers the newest, labelled without str(search) (a query per option for its
        # team); validation accepts any visible search (a link from an older one).
        self.fields["search"].widget.choices = [("", "all searches")] + [
            (s.id, f"{s.name} (#{s.id})") for s in searches[:SEARCH_CHOICES_MAX]
        ]
        names = (
            Search.objects.for_user(user)
            .annotate(dataset_name=KT("spec__dataset__name"))
            .exclude(dataset_name=None)
            .order_by("dataset_name")
            .values_list("dataset_name", flat=True)
            .distinct()
        )
        self.fields["dataset"].choices = [("", "all data sets")] + [(n, n) for n in names]


def leaderboard_rows(user, team=None, search=None, dataset: str = "", sort: str = "reward"):
    """Architectures with a reward that the user may see, filtered and ordered in the database."""
    qs = Architecture.objects.for_user(user).filter(reward__isnull=False)
    if team is not None:
        qs = qs.filter(search__team=team)
    if search is not None:
        qs = qs.filter(search=search)
    if dataset:
        qs = qs.filter(search__spec__dataset__name=dataset)
    qs = qs.select_related("search__team").only(*ROW_FIELDS).annotate(dataset_name=DATASET_NAME)
    return qs.order_by(*SORTS.get(sort, SORTS["reward"])[1])


@login_required
def leaderboard(request: HttpRequest) -> HttpResponse:
    form = LeaderboardFilters(request.GET, user=request.user)
    if not form.is_valid():
        context = {"form": form, "page": None, "query": "", "sort": "reward"}
        return render(request, "front/leaderboard.html", context, status=400)
    d = form.cleaned_data
    sort = d["sort"] or "reward"
    rows = leaderboard_rows(request.user, d["team"], d["search"], d["dataset"], sort)
    page = Paginator(rows, LEADERBOARD_PER_PAGE).get_page(request.GET.get("page"))
    page.object_list = list(page.object_list)
    stats = selection_stats(page.object_list)  # one query for the whole page
    for arch in page.object_list:
        arch.selection = headline_selection(stats.get(arch.id, []))
    kept = {k: request.GET[k] for k in ("team", "search", "dataset", "sort") if request.GET.get(k)}
    context = {
        "form": form,
        "page": page,
        "query": urlencode(kept),  # the filters, for the page links
        "sort": sort,
        "sort_label": SORTS[sort][0],
        "filtered": any(k != "sort" for k in kept),
    }
    return render(request, "front/leaderboard.html", context)


class BadRequest(Exception):
    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def parse_ids(values: list[str]) -> list[int]:
    """`?ids=1,2,3` or `?ids=1&ids=2` (the leaderboard's checkboxes): 2 to 6 distinct ids."""
    tokens = [t.strip() for v in values for t in v.split(",") if t.strip()]
    ids = []
    for token in tokens:
        if not token.isascii() or not token.isdigit() or int(token) < 1:
            raise BadRequest("ids", f"“{token[:40]}” is not an architecture id (a positive integer)")
        if int(token) in ids:
            raise BadRequest("ids", f"architecture {int(token)} is given twice")
        ids.append(int(token))
    if not COMPARE_MIN <= len(ids) <= COMPARE_MAX:
        raise BadRequest("ids", f"give {COMPARE_MIN} to {COMPARE_MAX} architecture ids, separated by commas")
    return ids


@login_required
def compare(request: HttpRequest) -> HttpResponse:
    try:
        ids = parse_ids(request.GET.getlist("ids"))
    except BadRequest as exc:
        return render(request, "front/compare.html", {"error": exc}, status=400)
    qs = Architecture.objects.for_user(request.user).select_related("search__team").prefetch_related("runs")
    found = {a.id: a for a in qs.filter(pk__in=ids)}
    if len(found) != len(ids):
        raise Http404("No such architecture.")  # another team's or none at all: the same answer
    columns, series = [], []
    for arch in (found[i] for i in ids):
        run = next(iter(arch.runs.all()), None)
        label = f"#{arch.sample_index} of search {arch.search_id}"
        columns.append({"arch": arch, "run": run, "label": label, "svg": cells_svg(arch.genotype)})
        points = curve_points(run.epochs if run else [])
        series.append({"architecture": arch.id, "label": label, "points": points})
    context = {"columns": columns, "series": series, "ids": ",".join(map(str, ids))}
    return render(request, "front/compare.html", context)


def budget_limits(budget: object) -> str:
    """A job's size budget in words ("" without one): "≤ 3,300,000 params · ≤ 600,000,000 mult-adds"."""
    if not isinstance(budget, dict):
        return ""
    names = {"max_params": "params", "max_mult_adds": "mult-adds"}
    parts = [f"≤ {budget[key]:,} {word}" for key, word in names.items() if isinstance(budget.get(key), int)]
    if parts and isinstance(budget.get("repeats"), int):
        parts.append(f"N fixed at {budget['repeats']}")
    return " · ".join(parts)


@login_required
def training_job(request: HttpRequest, job_id: int) -> HttpResponse:
    qs = TrainingJob.objects.for_user(request.user).select_related("team", "owner")
    job = get_object_or_404(qs, pk=job_id)
    arch = None
    if job.architecture_id is not None:
        arch = Architecture.objects.for_user(request.user).select_related("search").filter(pk=job.architecture_id)
        arch = arch.first()
    after = last_stored_seq(arch.search_id if arch else None)
    job.refresh_from_db(fields=LIVE_FIELDS)  # read after the seq: an event in between arrives twice, never lost
    columns, rows = epoch_table(job.epochs)
    epoch, epochs = job_progress(job)
    recipe = job.recipe if isinstance(job.recipe, dict) else {}
    dataset = job.dataset if isinstance(job.dataset, dict) else {}
    live = {
        "job": job.id,
        "search": arch.search_id if arch else None,
        "after": after,
        "status": job.status,
        "active": list(RUN_ACTIVE),
        "points": curve_points(job.epochs),
        "columns": columns,
        "api": f"/api/training-jobs/{job.id}",
    }
    context = {
        "job": job,
        "arch": arch,
        "recipe": recipe,
        "recipe_json": json.dumps(recipe, indent=2),
        "dataset": dataset,
        "dataset_extras": {k: v for k, v in dataset.items() if k != "name" and v is not None},
        "n_at_f": f"{recipe.get('repeats', '?')}@{recipe.get('filters', '?')}",
        "budget_limits": budget_limits(job.budget),
        "fitted": (job.budget or {}).get("fitted") if isinstance(job.budget, dict) else None,
        "epoch": epoch,
        "epochs": epochs,
        "columns": [c.replace("_", " ") for c in columns],
        "column_keys": columns,
        "epoch_rows": rows,
        "has_bundle": job.status == RUN_SUCCEEDED and bool(job.bundle_path),
        "can_cancel": job.status in RUN_ACTIVE and job.team.has_member(request.user),
        "live": live,
    }
    return render(request, "front/training_job.html", context)


@login_required
@require_POST
def training_job_cancel(request: HttpRequest, job_id: int) -> HttpResponse:
    job = get_object_or_404(TrainingJob.objects.for_user(request.user).select_related("team"), pk=job_id)
    cancel_by_member(
        request, job.team, lambda: services.cancel_training_job(job, by=request.user), "Training job", job.id
    )
    return redirect("front:training_job", job_id=job.id)
