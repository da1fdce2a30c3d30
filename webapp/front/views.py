"""Server-rendered pages: thin function views over the services and for_user querysets.

Every object is looked up through `for_user`, so another team's search or architecture
is a 404, never a 403: an outsider must not learn that it exists.
"""

from __future__ import annotations

import heapq
import json
import math

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models import F, JSONField, Max
from django.db.models.expressions import RawSQL
from django.db.models.fields.json import KeyTransform
from django.db.models.functions import Greatest, Least
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from nas_engine.genotype import Genotype, GenotypeError
from nas_engine.render import render_genotype_svg
from nas_engine.selection import DEFAULT_SEEDS, EPOCHS_FACTOR, default_top_k
from nas_engine.space import SearchSpace, SpaceError
from webapp.accounts.models import Team
from webapp.front import charts, children
from webapp.front.forms import SearchForm, SelectionForm, TrainForm
from webapp.front.presets import DEFAULT_PRESET, PRESETS, preset_initial, preset_spec, promote
from webapp.live import events as live_events
from webapp.live.models import SearchEvent
from webapp.searches import models as m
from webapp.searches import services
from webapp.searches.models import Architecture, Search, TrainingJob, latest_epoch

ARCHITECTURES_PER_PAGE = 25
SEARCHES_PER_PAGE = 50
# nas_engine.trainer.EpochMetrics, in reading order (JSONB does not keep key order).
EPOCH_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]


def cells_svg(genotype: object, title: str | None = None) -> str | None:
    """Both cells as inline SVG. The renderer escapes every text it draws, so only its
    output is marked safe; a stored genotype that does not parse draws nothing."""
    try:
        parsed = Genotype.from_dict(genotype)
    except GenotypeError:
        return None
    return mark_safe(render_genotype_svg(parsed, title=title))  # noqa: S308 - escaped by the renderer


def sparklines(searches: list[Search]) -> dict[int, str]:
    """Best reward so far of every search of a page over SPARK_BUCKETS stretches of its
    budget, as inline SVG: one GROUP BY query for the whole page, not one per search."""
    buckets = charts.SPARK_BUCKETS
    rows = (
        m.ChildRun.objects.filter(
            architecture__search__in=[s.id for s in searches],
            status__in=(m.RUN_SUCCEEDED, m.RUN_REUSED),
            reward__isnull=False,
        )
        .annotate(
            bucket=Least(
                F("architecture__sample_index") * buckets / Greatest(F("architecture__search__children_total"), 1),
                buckets - 1,
            )
        )
        .values_list("architecture__search_id", "bucket")
        .annotate(best=Max("reward"))
        .order_by()
    )
    per_search: dict[int, list[tuple[int, float]]] = {}
    for search_id, bucket, best in rows:
        per_search.setdefault(search_id, []).append((bucket, best))
    return {sid: charts.sparkline_svg(charts.best_so_far_buckets(r)) for sid, r in per_search.items()}


@login_required
def index(request: HttpRequest) -> HttpResponse:
    searches = Search.objects.for_user(request.user).select_related("team", "owner").defer("spec")
    page = Paginator(searches, SEARCHES_PER_PAGE).get_page(request.GET.get("page"))
    sparks = sparklines(list(page))
    for search in page:
        search.spark = mark_safe(sparks.get(search.id, ""))  # noqa: S308 - numbers only (charts.sparkline_svg)
        search.is_active = search.status in m.SEARCH_ACTIVE
    return render(request, "front/index.html", {"page": page})


@login_required
def search_new(request: HttpRequest) -> HttpResponse:
    teams = Team.objects.for_user(request.user)
    if request.method == "POST" and "apply_preset" not in request.POST:
        form = SearchForm(request.POST, user=request.user)
        if form.is_valid():
            d = form.cleaned_data
            try:
                search = services.submit_search(
                    user=request.user, team=d["team"], name=d["name"], spec_data=form.spec_data()
                )
            except services.ServiceError as exc:
                form.add_service_error(exc)
            else:
                messages.success(request, f"Search “{search.name}” submitted.")
                return redirect("front:search", search_id=search.id)
        return render(request, "front/search_new.html", {"form": form, "presets": PRESETS}, status=400)

    source = request.POST if request.method == "POST" else request.GET
    key = source.get("preset", DEFAULT_PRESET)
    initial = preset_initial(key)
    if request.method == "POST":  # "apply preset": keep what the user typed above it
        initial.update(team=source.get("team"), name=source.get("name", ""))
    elif teams:
        initial["team"] = teams[0].pk
    form = SearchForm(initial=initial, user=request.user)
    form.fields["spec_json"].widget.attrs["placeholder"] = json.dumps(preset_spec(key), indent=2)
    return render(request, "front/search_new.html", {"form": form, "presets": PRESETS})


def _search(request: HttpRequest, search_id: int) -> Search:
    qs = Search.objects.for_user(request.user).select_related("team", "owner", "best_architecture")
    return get_object_or_404(qs, pk=search_id)


@login_required
def search_detail(request: HttpRequest, search_id: int) -> HttpResponse:
    search = _search(request, search_id)
    return _render_search(request, search, _selection_form(search))


def _selection_form(search: Search, data=None) -> SelectionForm:
    child = search.parsed_spec.child
    initial = {"top_k": default_top_k(search.children_total), "seeds": DEFAULT_SEEDS}
    initial["epochs"] = child.epochs * EPOCHS_FACTOR
    return SelectionForm(data, initial=initial)


def _render_search(request: HttpRequest, search: Search, select_form: SelectionForm, status: int = 200):
    # The table shows no genotype (~2 kB of JSON per row to read and parse).
    architectures = children.with_origin(search.architectures.prefetch_related("runs")).order_by("-sample_index")
    page = Paginator(architectures, ARCHITECTURES_PER_PAGE).get_page(request.GET.get("page"))
    best = search.best_architecture
    epochs = _planned_epochs(search)
    rows = []
    for a in page:
        run = next(iter(a.runs.all()), None)
        a.child = children.child_row(a, run, search, epochs)
        a.epoch, a.epochs = a.child["epoch"], a.child["epochs"]
        rows.append((a, run))
    early_stop = search.parsed_spec.early_stop
    selections = list(search.selections.select_related("winner").order_by("-created_at", "-id"))
    measuring = any(s.kind == m.SELECTION_NOISE_FLOOR and not s.is_done for s in selections)
    live = {
        "search": search.id,
        "chart_url": reverse("front:search_chart", args=[search.id]),
        "ws_path": f"/ws/searches/{search.id}/",
        "architecture_prefix": "/architectures/",
        "search_prefix": "/searches/",
        "transitions": {a: sorted(allowed) for a, (allowed, _) in services.TRANSITIONS.items()},
        "rl": _is_rl(search),
        "live_table": page.number == 1,
        "per_page": ARCHITECTURES_PER_PAGE,
        "children_total": search.children_total,
        "epochs": epochs,
        "early_stop": early_stop.active,
    }
    context = {
        "search": search,
        "page": page,
        "rows": rows,
        "best_svg": cells_svg(best.genotype) if best else None,
        "spec_json": json.dumps(search.spec, indent=2),
        "actions": {a: search.status in allowed for a, (allowed, _) in services.TRANSITIONS.items()},
        "progress": search.progress,
        "selections": selections,
        "noise_floor_measuring": measuring,
        "select_form": select_form,
        "can_select": search.team.has_member(request.user),
        "early_stop": early_stop,
        "early_stop_words": children.early_stop_words(early_stop, epochs),
        "stopped_reward_words": children.STOPPED_REWARD_WORDS.get(early_stop.stopped_reward),
        "rungs": search.rung_counts(),
        "live": live,
    }
    return render(request, "front/search_detail.html", context, status=status)


@login_required
@require_POST
def search_select(request: HttpRequest, search_id: int) -> HttpResponse:
    """The search page's "Select top K" form: a top-K selection, then its page."""
    search = _search(request, search_id)
    form = _selection_form(search, request.POST)
    if form.is_valid():
        try:
            selection = services.create_selection(
                user=request.user, search=search, kind=m.SELECTION_TOP_K, **form.service_args()
            )
        except services.ServiceError as exc:
            form.add_service_error(exc)
        else:
            messages.success(request, f"Selection #{selection.id} queued: {selection.top_k} × {selection.seeds} seeds.")
            return redirect("front:selection", selection_id=selection.id)
    return _render_search(request, search, form, status=400)


def _planned_epochs(search: Search) -> int | None:
    return search.parsed_spec.child.epochs


def _is_rl(search: Search) -> bool:
    return search.parsed_spec.strategy in charts.RL_STRATEGIES


@login_required
@require_POST
def search_action(request: HttpRequest, search_id: int, action: str) -> HttpResponse:
    if action not in services.TRANSITIONS:
        raise Http404("no such action")
    search = get_object_or_404(Search.objects.for_user(request.user), pk=search_id)
    try:
        search = services.transition(search, action)
    except services.ServiceError as exc:
        messages.error(request, f"Could not {action}: {exc.reason}.")
    else:
        messages.success(request, f"Search is now {search.status}.")
    return redirect("front:search", search_id=search.id)


CONTROLLER_FIELDS = ("step", "loss", "entropy", "baseline", "mean_reward")
RECENT_FINISHED = 200  # ids of the latest finished children, sent so the page never plots one twice


def _chart_state(user, search_id: int) -> dict:
    search = get_object_or_404(Search.objects.for_user(user).select_related("best_architecture", "owner"), pk=search_id)
    # First the last event seq: everything below is at least as new, so a client that asks
    # for the events after it misses nothing. It may get an event already reflected here: a
    # worker commits a run's result just before its child.finished event (and without the
    # REPEATABLE READ snapshot, rows may be newer still). The page skips the reward of an
    # architecture listed in `recent`; status events carry the whole state anyway.
    last_seq = live_events.last_stored_seq(search.id)
    runs = m.ChildRun.objects.filter(architecture__search_id=search.id, reward__isnull=False)
    fields = ("architecture__sample_index", "reward", "architecture_id", "finished_at")
    rows = list(runs.filter(status__in=children.FINAL).order_by("architecture__sample_index").values_list(*fields))
    # A stopped child's reward is its value at a rung (after 1 of 20 epochs, say): far below
    # any final reward for having been stopped, not for being a worse cell. Plotted among the
    # rewards, or in the running best and the moving average, it would read as a bad child and
    # drag the average down. It goes to a series of its own ("stopped (rung value)", drawn
    # apart), so the chart still shows what early stopping cut and where.
    stopped = list(runs.filter(status=m.RUN_STOPPED).order_by("architecture__sample_index").values_list(*fields))
    rewards = charts.reward_series([(index, reward) for index, reward, _, _ in rows])
    rewards["stopped"] = charts.point_series([(index, value) for index, value, _, _ in stopped])
    latest = heapq.nlargest(
        RECENT_FINISHED, rows + stopped, key=lambda r: (r[3] is not None, r[3] and r[3].timestamp(), r[2])
    )
    rewards["recent"] = [r[2] for r in latest]
    data = {
        "search": search.id,
        "last_seq": last_seq,
        "status": live_events.status(search)[1]["search"],  # as a search.status event carries it
        "best_sample_index": search.best_architecture.sample_index if search.best_architecture else None,
        "rewards": rewards,
        "children": _children_snapshot(search),
        "rl": _is_rl(search),
        "controller": None,
        "policy": None,
    }
    if data["rl"]:
        updates = SearchEvent.objects.filter(search_id=search.id, type=live_events.CONTROLLER, seq__lte=last_seq)
        if connection.vendor == "postgresql":  # one read of each (large) payload, less its policy
            small = updates.annotate(small=RawSQL("payload - 'policy'", (), output_field=JSONField()))
            payloads = small.order_by("seq").values_list("small", flat=True)
            history = [tuple(p.get(f) for f in CONTROLLER_FIELDS) for p in payloads]
        else:
            history = updates.order_by("seq").values_list(*(KeyTransform(f, "payload") for f in CONTROLLER_FIELDS))
        history = charts.thin([tuple(row) for row in history])
        data["controller"] = {f: [row[i] for row in history] for i, f in enumerate(CONTROLLER_FIELDS)}
        latest = updates.order_by("-seq").values_list(*(KeyTransform(f, "payload") for f in ("step", "policy")))
        step, policy = latest.first() or (None, None)
        data["policy"] = _policy(search, step, policy)
    return data


def _policy(search: Search, step, probs) -> dict:
    try:
        space = SearchSpace.from_dict((search.spec or {}).get("space"))
    except SpaceError:
        space = SearchSpace()
    labels, options = charts.policy_labels(space)
    return {"step": step, "probs": probs if isinstance(probs, list) else None, "labels": labels, "options": options}


def _children_snapshot(search: Search) -> list[dict]:
    """The latest architectures as the live table shows them (children.child_row)."""
    planned = _planned_epochs(search)
    archs = children.with_origin(search.architectures.prefetch_related("runs")).order_by("-sample_index")
    archs = archs[:ARCHITECTURES_PER_PAGE]
    return [children.child_row(a, next(iter(a.runs.all()), None), search, planned) for a in archs]


class _MarkupSafeJSONEncoder(DjangoJSONEncoder):
    """JSON with <, > and & as \\u escapes (the same value once parsed): chart.json carries
    user text (the search's name, in its status), and no byte of it may read as markup."""

    ESCAPES = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026"}

    def encode(self, o) -> str:
        return super().encode(o).translate(self.ESCAPES)


@login_required
def search_chart(request: HttpRequest, search_id: int) -> HttpResponse:
    """/searches/<id>/chart.json: the state of the live page's charts, reduced on the server
    (charts.py), with `last_seq`, the live event the page asks the websocket to continue after.
    On PostgreSQL it is read in one REPEATABLE READ snapshot, so last_seq and the rows agree."""
    if connection.vendor == "postgresql" and not connection.in_atomic_block:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            data = _chart_state(request.user, search_id)
    else:
        data = _chart_state(request.user, search_id)
    return JsonResponse(data, encoder=_MarkupSafeJSONEncoder)


@login_required
def architecture_cells_svg(request: HttpRequest, arch_id: int) -> HttpResponse:
    """/architectures/<id>/cells.svg: both cells, drawn by the renderer (which escapes every
    text it draws); loaded by the live search page when the best architecture changes."""
    arch = _architecture(request, arch_id)
    try:
        genotype = Genotype.from_dict(arch.genotype)
    except GenotypeError as exc:
        raise Http404("this genotype cannot be drawn") from exc
    response = HttpResponse(render_genotype_svg(genotype), content_type="image/svg+xml; charset=utf-8")
    # Opened on its own, the drawing may run nothing and load nothing.
    response["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    response["X-Content-Type-Options"] = "nosniff"
    return response


def _architecture(request: HttpRequest, arch_id: int) -> Architecture:
    qs = Architecture.objects.for_user(request.user).select_related("search__team")
    return get_object_or_404(qs, pk=arch_id)


def _metric(column: str, value: object) -> str:
    """One cell of the per-epoch table, at a precision that reads well."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "" if value is None else str(value)
    if column == "epoch" or isinstance(value, int):
        return str(value)
    if column == "seconds":
        return f"{value:.1f}"
    return f"{value:.3g}" if column == "lr" else f"{value:.4f}"


def epoch_table(epochs: object) -> tuple[list[str], list[list[str]]]:
    """The per-epoch table of a run or a job: its column keys (reading order first, then
    any others) and the formatted rows. No epoch yet: the usual columns, no rows."""
    epochs = [e for e in epochs if isinstance(e, dict)] if isinstance(epochs, list) else []
    seen = {k for e in epochs for k in e} - {"epochs"}
    if not seen:
        return list(EPOCH_COLUMNS), []
    columns = [c for c in EPOCH_COLUMNS if c in seen] + sorted(seen - set(EPOCH_COLUMNS))
    return columns, [[_metric(c, e.get(c)) for c in columns] for e in epochs]


def _number(value: object) -> float | int | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (isinstance(value, int) or math.isfinite(value))
    return value if ok else None


def curve_points(epochs: object) -> list[dict]:
    """What a chart needs of each epoch: {epoch, val_acc, train_loss} (numbers or None)."""
    epochs = epochs if isinstance(epochs, list) else []
    points = [{k: _number(e.get(k)) for k in ("epoch", "val_acc", "train_loss")} for e in epochs if isinstance(e, dict)]
    return [p for p in points if p["epoch"] is not None]


def job_progress(job: TrainingJob) -> tuple[int | None, int | None]:
    """(latest epoch, epochs planned) of a training job."""
    last = latest_epoch(job.epochs)
    recipe = job.recipe if isinstance(job.recipe, dict) else {}
    return _number(last.get("epoch")), _number(last.get("epochs") or recipe.get("epochs"))


def _render_architecture(request: HttpRequest, arch: Architecture, form: TrainForm, status: int = 200):
    # Read before the rows: an event in between arrives twice (dropped by seq), never lost.
    after = live_events.last_stored_seq(arch.search_id)
    run = arch.runs.first()
    columns, rows = epoch_table(run.epochs if run else [])
    jobs = (
        TrainingJob.objects.for_user(request.user)
        .filter(architecture=arch)
        .defer("genotype", "dataset")
        .order_by("-created_at", "-id")[:20]
    )
    job_rows = [(job, *job_progress(job)) for job in jobs]
    selections = selection_stats([arch]).get(arch.id, [])
    child = children.child_row(arch, run, arch.search, _planned_epochs(arch.search))
    live = {
        "architecture": arch.id,
        "search": arch.search_id,
        "after": after,
        "points": curve_points(run.epochs if run else []),
        "columns": columns,
        "jobs": [job.id for job, _, _ in job_rows],
    }
    context = {
        "column_keys": columns,
        "arch": arch,
        "search": arch.search,
        "run": run,
        "child": child,
        "columns": [c.replace("_", " ") for c in columns],
        "epoch_rows": rows,
        "svg": cells_svg(arch.genotype),
        "genotype_json": json.dumps(arch.genotype, indent=2),
        "form": form,
        "jobs": job_rows,
        "selections": selections,
        "selection_headline": headline_selection(selections),
        "live": live,
    }
    return render(request, "front/architecture_detail.html", context, status=status)


@login_required
def architecture_detail(request: HttpRequest, arch_id: int) -> HttpResponse:
    arch = _architecture(request, arch_id)
    dataset = arch.search.parsed_spec.dataset["name"]
    form = TrainForm(initial={"dataset": dataset})
    return _render_architecture(request, arch, form)


@login_required
@require_POST
def architecture_train(request: HttpRequest, arch_id: int) -> HttpResponse:
    arch = _architecture(request, arch_id)
    form = TrainForm(request.POST)
    if form.is_valid():
        try:
            job = promote(arch, user=request.user, **form.promote_args())
        except services.ServiceError as exc:
            form.add_service_error(exc)
        else:
            messages.success(request, f"Training job #{job.id} queued.")
            return redirect("front:architecture", arch_id=arch.id)
    return _render_architecture(request, arch, form, status=400)


@login_required
def architecture_genotype(request: HttpRequest, arch_id: int) -> HttpResponse:
    arch = _architecture(request, arch_id)
    response = JsonResponse(arch.genotype, json_dumps_params={"indent": 2})
    filename = f"search-{arch.search_id}-architecture-{arch.sample_index}-genotype.json"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


# -- selections: the top-K stage and noise floors ------------------------------------------------
def selection_stats(architectures) -> dict[int, list[dict]]:
    """Per architecture id, what its selections measured, newest selection first:
    {selection, kind, status, mean, std, n, runs}. One query for all the architectures
    given (a page of the leaderboard, or one architecture), summarised by the rule of the
    selection page (searches.models.seed_summary)."""
    search_rewards = {a.id: a.reward for a in architectures}
    if not search_rewards:
        return {}
    runs = (
        m.SelectionRun.objects.filter(architecture_id__in=list(search_rewards))
        .values_list("architecture_id", "selection_id", "selection__kind", "selection__status", "reward")
        .order_by("architecture_id", "-selection_id")
    )
    grouped: dict[tuple, list] = {}  # (architecture, selection, kind, status) -> rewards, in that order
    for arch_id, selection_id, kind, status, reward in runs:
        grouped.setdefault((arch_id, selection_id, kind, status), []).append(reward)
    out: dict[int, list[dict]] = {}
    for (arch_id, selection_id, kind, status), rewards in grouped.items():
        stats = m.seed_summary(kind, rewards, search_rewards[arch_id])
        out.setdefault(arch_id, []).append(
            {"selection": selection_id, "kind": kind, "status": status, **stats, "runs": len(rewards)}
        )
    return out


def headline_selection(stats: list[dict]) -> dict | None:
    """The result a board shows beside the search reward: the newest top-K selection with
    a result, else the newest noise floor with one."""
    measured = [s for s in stats if s["n"]]
    top = [s for s in measured if s["kind"] == m.SELECTION_TOP_K]
    return (top or measured or [None])[0]


def _ranking_rows(data: dict) -> list[dict]:
    """Selection.to_dict()'s ranking, as the page's table shows it."""
    rows, rank = [], 0
    for row in data["ranking"]:
        if row["mean"] is not None:
            rank += 1
        rows.append(
            {
                **row,
                "rank": rank if row["mean"] is not None else None,
                "per_seed": list(zip(row["seeds"], row["rewards"])),
                "is_winner": row["architecture"] == data["winner"],
            }
        )
    return rows


def _selection(request: HttpRequest, selection_id: int) -> m.Selection:
    qs = m.Selection.objects.for_user(request.user).select_related("search__team", "owner")
    return get_object_or_404(qs, pk=selection_id)


SELECTION_LIVE_FIELDS = ["status", "winner", "noise_std", "error", "finished_at"]


@login_required
def selection_detail(request: HttpRequest, selection_id: int) -> HttpResponse:
    """/selections/<id>: a top-K selection or a noise floor, its ranking forming live."""
    selection = _selection(request, selection_id)
    search = selection.search
    after = live_events.last_stored_seq(search.id)
    # Read after the seq: an event in between arrives twice (dropped by seq), never lost.
    selection.refresh_from_db(fields=SELECTION_LIVE_FIELDS)
    data = selection.to_dict()
    ranking = _ranking_rows(data)
    winner = next((r for r in ranking if r["is_winner"]), None)
    recipe = selection.recipe if isinstance(selection.recipe, dict) else {}
    total = data["runs_total"]
    active = not selection.is_done
    live = {
        "selection": selection.id,
        "search": search.id,
        "kind": selection.kind,
        "after": after,
        "ws_path": f"/ws/searches/{search.id}/",
        "architecture_prefix": "/architectures/",
        "active": list(m.RUN_ACTIVE),
        "status": selection.status,
        "winner": data["winner"],
    }
    context = {
        "selection": selection,
        "search": search,
        "data": data,
        "ranking": ranking,
        "winner": winner,
        "noise": selection.kind == m.SELECTION_NOISE_FLOOR,
        "recipe": recipe,
        "recipe_json": json.dumps(recipe, indent=2),
        "progress": round(100 * data["runs_done"] / total) if total else 0,
        "active": active,
        "can_cancel": active and search.team.has_member(request.user),
        "live": live,
    }
    return render(request, "front/selection.html", context)


@login_required
@require_POST
def selection_cancel(request: HttpRequest, selection_id: int) -> HttpResponse:
    selection = _selection(request, selection_id)
    cancel_by_member(
        request, selection.search.team, lambda: services.cancel_selection(selection), "Selection", selection.id
    )
    return redirect("front:selection", selection_id=selection.id)


def cancel_by_member(request: HttpRequest, team, cancel, what: str, pk: int) -> None:
    """Run `cancel()` for a member of `team` and say how it went; a non-member gets a 404
    (a reviewer who may see the row is not one of the team that may stop it)."""
    try:
        services.check_member(request.user, team)
        cancel()
    except services.ServiceError as exc:
        if exc.status == 404:
            raise Http404(f"no such {what.lower()}") from None
        messages.error(request, f"Could not cancel: {exc.reason}.")
    else:
        messages.success(request, f"{what} #{pk} cancelled.")
