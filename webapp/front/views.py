"""Server-rendered pages: thin function views over the services and for_user querysets.

Every object is looked up through `for_user`, so another team's search or architecture
is a 404, never a 403: an outsider must not learn that it exists.
"""

from __future__ import annotations

import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from nas_engine.genotype import Genotype, GenotypeError
from nas_engine.render import render_genotype_svg
from webapp.accounts.models import Team
from webapp.front.forms import SearchForm, TrainForm
from webapp.front.presets import DEFAULT_PRESET, PRESETS, SCALE_DEFAULTS, preset_initial, preset_spec, promote
from webapp.searches import services
from webapp.searches.models import Architecture, Search

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


@login_required
def index(request: HttpRequest) -> HttpResponse:
    searches = Search.objects.for_user(request.user).select_related("team", "owner").defer("checkpoint", "spec")
    page = Paginator(searches, SEARCHES_PER_PAGE).get_page(request.GET.get("page"))
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


@login_required
def search_detail(request: HttpRequest, search_id: int) -> HttpResponse:
    search = get_object_or_404(
        Search.objects.for_user(request.user).select_related("team", "owner", "best_architecture"), pk=search_id
    )
    architectures = search.architectures.prefetch_related("runs").order_by("-sample_index")
    page = Paginator(architectures, ARCHITECTURES_PER_PAGE).get_page(request.GET.get("page"))
    best = search.best_architecture
    context = {
        "search": search,
        "page": page,
        "rows": [(a, next(iter(a.runs.all()), None)) for a in page],
        "best_svg": cells_svg(best.genotype) if best else None,
        "spec_json": json.dumps(search.spec, indent=2),
        "actions": {a: search.status in allowed for a, (allowed, _) in services.TRANSITIONS.items()},
        "progress": round(100 * search.children_done / search.children_total) if search.children_total else 0,
    }
    return render(request, "front/search_detail.html", context)


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


def _render_architecture(request: HttpRequest, arch: Architecture, form: TrainForm, status: int = 200):
    run = arch.runs.first()
    epochs = run.epochs if run and isinstance(run.epochs, list) else []
    seen = {k for e in epochs if isinstance(e, dict) for k in e} - {"epochs"}
    columns = [c for c in EPOCH_COLUMNS if c in seen] + sorted(seen - set(EPOCH_COLUMNS))
    context = {
        "column_keys": columns,
        "arch": arch,
        "search": arch.search,
        "run": run,
        "columns": [c.replace("_", " ") for c in columns],
        "epoch_rows": [[_metric(c, e.get(c)) for c in columns] for e in epochs if isinstance(e, dict)],
        "svg": cells_svg(arch.genotype),
        "genotype_json": json.dumps(arch.genotype, indent=2),
        "form": form,
        "jobs": arch.training_jobs.order_by("-created_at")[:20],
    }
    return render(request, "front/architecture_detail.html", context, status=status)


@login_required
def architecture_detail(request: HttpRequest, arch_id: int) -> HttpResponse:
    arch = _architecture(request, arch_id)
    dataset = (arch.search.spec.get("dataset") or {}).get("name", "")
    n, f = SCALE_DEFAULTS["repeats"], SCALE_DEFAULTS["filters"]
    form = TrainForm(initial={"name": f"{arch.search.name} #{arch.sample_index} at N={n} F={f}", "dataset": dataset})
    return _render_architecture(request, arch, form)


@login_required
@require_POST
def architecture_train(request: HttpRequest, arch_id: int) -> HttpResponse:
    arch = _architecture(request, arch_id)
    form = TrainForm(request.POST)
    if form.is_valid():
        d = form.cleaned_data
        try:
            job = promote(
                arch,
                user=request.user,
                name=d["name"],
                dataset_name=d["dataset"],
                repeats=d["repeats"],
                filters=d["filters"],
                epochs=d["epochs"],
            )
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
