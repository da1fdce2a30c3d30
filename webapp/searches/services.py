"""What users and staff do to searches and training jobs, in one place.

Views, the API and admin actions call these functions; they validate, write rows in a
transaction, and queue Celery work by task name only after the transaction commits
through webapp.dispatch (the web app never imports `workers`). Every function raises `ServiceError(field,
reason, status)` for what the caller did wrong, which views turn into a 4xx.
"""

from __future__ import annotations

import logging
import unicodedata

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from nas_engine.data import DatasetShape
from nas_engine.genotype import Genotype, GenotypeError
from nas_engine.limits import SETTING_NAMES, LimitError, check_training
from nas_engine.selection import (
    DEFAULT_SEEDS,
    Candidate,
    SelectionError,
    check_count,
    default_top_k,
    distinct,
    noise_floor_sample,
    seeds_for,
    selection_recipe,
)
from nas_engine.selection import top_k as top_k_of
from nas_engine.spec import Limits, SpecError, validate_dataset, validate_spec
from nas_engine.trainer import Recipe, RecipeError
from nas_engine.transfer import TRANSFER_PRESETS, BudgetError, TransferPreset, check_recipe_budget, parse_count
from webapp import dispatch
from webapp.accounts.models import Team
from webapp.live import events as live
from webapp.searches import models as m

log = logging.getLogger("nasnet.service")


class ServiceError(Exception):
    """A refused request. `status` is the HTTP status a view should answer with."""

    def __init__(self, field: str, reason: str, status: int = 400):
        self.field, self.reason, self.status = field, reason, status
        super().__init__(f"{field}: {reason}")


def limits() -> Limits:
    """This deployment's limits (webapp/settings.py; nas_engine/limits.py says what each bounds)."""
    return Limits(**{name: getattr(settings, setting) for name, setting in SETTING_NAMES.items()})


def check_member(user, team: Team) -> None:
    if not team.has_member(user):
        # 404, not 403: an outsider must not learn that the team exists.
        raise ServiceError("team", "no such team", status=404)


NAME_MAX = 200  # the models' CharField


def clean_name(name: object) -> str:
    """A search's or training job's name: trimmed, 1 to 200 characters, something visible
    (a name of only spaces, zero-width or control characters shows as nothing in lists),
    never cut silently."""
    if not isinstance(name, str):
        raise ServiceError("name", "required: a string")
    name = name.strip()
    if not name:
        raise ServiceError("name", "required")
    if len(name) > NAME_MAX:
        raise ServiceError("name", f"at most {NAME_MAX} characters, got {len(name)}")
    if not any(unicodedata.category(c)[0] in "LNPS" for c in name):
        raise ServiceError("name", "must contain a visible character (a letter, digit, punctuation or symbol)")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise ServiceError("name", "must not contain control characters (newlines, tabs, escapes)")
    return name


def submit_search(*, user, team: Team, name: str, spec_data: object) -> m.Search:
    """Validate everything, write the Search row, queue the first advance on commit."""
    check_member(user, team)
    name = clean_name(name)
    try:
        spec = validate_spec(spec_data, data_root=settings.NAS_DATA_ROOT, limits=limits())
    except SpecError as exc:
        # The spec itself (not an object) is "spec", not "spec.spec".
        raise ServiceError("spec" if exc.field == "spec" else f"spec.{exc.field}", exc.reason) from None
    with transaction.atomic():
        # Lock the team row so two concurrent submissions cannot both slip under the quota.
        Team.objects.select_for_update().get(pk=team.pk)
        active = m.Search.objects.filter(team=team, status__in=m.SEARCH_ACTIVE).count()
        if active >= settings.NAS_MAX_ACTIVE_SEARCHES_PER_TEAM:
            raise ServiceError(
                "team",
                f"quota reached: {active} active searches (limit {settings.NAS_MAX_ACTIVE_SEARCHES_PER_TEAM})",
                status=429,
            )
        search = m.Search.objects.create(
            team=team,
            owner=user,
            name=name,
            spec=spec.to_dict(),
            children_total=spec.children,
            measure_key=spec.measurement_key(),
        )
        dispatch.send_on_commit(dispatch.TASK_ADVANCE, search.id)
    log.info(
        "search %s submitted by %s for team %s: %r, %s on %s (%s), %d children, %d in parallel",
        search.id,
        user,
        team,
        name,
        spec.strategy,
        spec.dataset["name"],
        spec.objective["name"],
        spec.children,
        spec.parallel,
    )
    return search


# Which statuses each action may start from, and where it leads.
TRANSITIONS = {
    "cancel": ({m.QUEUED, m.RUNNING, m.PAUSED}, m.CANCELLING),
    "pause": ({m.QUEUED, m.RUNNING}, m.PAUSED),
    "resume": ({m.PAUSED}, m.RUNNING),
}


def transition(search: m.Search, action: str) -> m.Search:
    """Cancel, pause or resume. The advance task finishes what the new status implies."""
    allowed, target = TRANSITIONS[action]
    with transaction.atomic():
        # The owner in the same query: the status event's Search.to_dict names it.
        row = m.Search.objects.select_for_update(of=("self",)).select_related("owner").get(pk=search.pk)
        if row.status not in allowed:
            raise ServiceError("status", f"cannot {action} a {row.status} search", status=409)
        old, row.status = row.status, target
        if action == "resume" and row.started_at is None:
            row.status = m.QUEUED
        row.save(update_fields=["status", "updated_at"])
        live.publish_many(row.id, [live.status(row)])
        dispatch.send_on_commit(dispatch.TASK_ADVANCE, row.id)
    log.info("search %s: %s (%s -> %s)", row.id, action, old, row.status)
    return row


def requeue_failed_runs(search: m.Search) -> int:
    """Give failed child runs of an unfinished search another try (admin action)."""
    if search.is_done:
        raise ServiceError("status", f"the search is {search.status}", status=409)
    with transaction.atomic():
        runs = m.ChildRun.objects.select_for_update().filter(
            architecture__search=search, status=m.RUN_FAILED, architecture__told=False
        )
        count = runs.update(status=m.RUN_QUEUED, attempt=0, error="", lease_expires_at=None, worker="")
        dispatch.send_on_commit(dispatch.TASK_ADVANCE, search.id)
    log.info("search %s: %d failed child runs queued again", search.id, count)
    return count


def create_training_job(
    *,
    user,
    team: Team,
    name: str,
    genotype: object,
    dataset: object,
    recipe: object,
    architecture=None,
    preset: object = None,
    budget: object = None,
) -> m.TrainingJob:
    """Validate a transfer-step job and queue it on commit.

    `preset` names a final training (nas_engine.transfer.TRANSFER_PRESETS): its recipe is
    the base that `recipe`'s fields override, and its image size the data set's unless
    `dataset.image_size` is given (as `train --preset` does). `budget` ({max_params,
    max_mult_adds}: numbers or "564M"-style strings) lets the worker pick N and F: the
    widest network within it, N fixed by `recipe.repeats` or the preset's. An invalid or
    unreachable budget is refused here (one count of the smallest network); the fit itself
    (a few seconds to half a minute of counting) runs on the worker."""
    check_member(user, team)
    name = clean_name(name)
    try:
        parsed = Genotype.from_dict(genotype)
    except GenotypeError as exc:
        raise ServiceError(f"genotype.{exc.field}" if exc.field else "genotype", exc.reason) from None
    if not isinstance(recipe, dict):
        raise ServiceError("recipe", "must be an object")
    chosen = _transfer_preset(preset)
    deployment = limits()
    if chosen is not None:
        dataset = {"name": dataset} if isinstance(dataset, str) else dataset
        if isinstance(dataset, dict) and dataset.get("image_size") is None:
            dataset = {**dataset, "image_size": chosen.image_size}
    try:
        # A final training may use every training image (val_size 0): no reward needed.
        dataset = validate_dataset(dataset, settings.NAS_DATA_ROOT, needs_validation=False, limits=deployment)
    except SpecError as exc:
        raise ServiceError(exc.field, exc.reason) from None
    try:
        parsed_recipe = Recipe.from_dict({**(chosen.recipe.to_dict() if chosen else {}), **recipe})
    except RecipeError as exc:
        raise ServiceError(f"recipe.{exc.field}", exc.reason) from None
    try:
        root = settings.NAS_DATA_ROOT
        shape = check_training(
            parsed, parsed_recipe, dataset, root, deployment, prefix="recipe", cost_limit="max_job_cost"
        )
    except LimitError as exc:
        raise ServiceError(exc.field, exc.reason) from None
    fixed_n = recipe.get("repeats", chosen.recipe.repeats if chosen else None)
    budget = _transfer_budget(budget, parsed, parsed_recipe, shape, fixed_n, width_given="filters" in recipe)
    with transaction.atomic():
        # One team's jobs at a time are bounded: the gpu queue is shared.
        Team.objects.select_for_update().filter(pk=team.pk).first()
        active = m.TrainingJob.objects.filter(team=team, status__in=m.RUN_ACTIVE).count()
        if active >= settings.NAS_MAX_ACTIVE_JOBS_PER_TEAM:
            raise ServiceError(
                "team",
                f"the team has {active} training jobs queued or running, the limit (NAS_MAX_ACTIVE_JOBS_PER_TEAM); "
                "wait for one to end or cancel one",
                status=429,
            )
        job = m.TrainingJob.objects.create(
            team=team,
            owner=user,
            name=name,
            architecture=architecture,
            genotype=parsed.to_dict(),
            dataset=dataset,
            recipe=parsed_recipe.to_dict(),
            preset=preset or "",
            budget=budget,
            dispatched_at=timezone.now(),
        )
        dispatch.send_on_commit(dispatch.TASK_TRAIN_JOB, job.id)
    log.info(
        "training job %s submitted by %s for team %s: %r on %s, %d epochs%s",
        job.id,
        user,
        team,
        job.name,
        dataset["name"],
        parsed_recipe.epochs,
        f", preset {preset}" if preset else "",
    )
    return job


def cancel_training_job(job: m.TrainingJob, *, by=None) -> m.TrainingJob:
    """Stop a queued or running training job. A worker training it notices at its next
    heartbeat (the row is no longer its), stops, and drops the checkpoint."""
    with transaction.atomic():
        row = (
            m.TrainingJob.objects.select_for_update(of=("self",)).select_related("architecture", "owner").get(pk=job.pk)
        )
        if row.status not in m.RUN_ACTIVE:
            raise ServiceError("status", f"cannot cancel a {row.status} training job", status=409)
        row.status, row.finished_at, row.lease_expires_at = m.RUN_CANCELLED, timezone.now(), None
        row.error = f"cancelled by {by}" if by is not None else "cancelled"
        row.save(update_fields=["status", "finished_at", "lease_expires_at", "error"])
        if row.architecture is not None:
            live.publish_many(row.architecture.search_id, [live.job_progress(row)])
    log.info("training job %s cancelled%s", row.id, f" by {by}" if by is not None else "")
    return row


def _transfer_preset(name: object) -> TransferPreset | None:
    if name is None or name == "":
        return None
    if not isinstance(name, str) or name not in TRANSFER_PRESETS:
        raise ServiceError("preset", f"unknown preset {name!r}; known presets: {', '.join(TRANSFER_PRESETS)}")
    return TRANSFER_PRESETS[name]


BUDGET_FIELDS = ("max_params", "max_mult_adds")


def _transfer_budget(
    budget: object, genotype: Genotype, recipe: Recipe, shape: DatasetShape, fixed_n: int | None, *, width_given: bool
) -> dict:
    """The budget as stored ({} without one), after refusing what no worker could fit."""
    if budget is None or budget == {}:
        return {}
    if not isinstance(budget, dict):
        raise ServiceError("budget", "must be an object: {max_params, max_mult_adds} (one or both)")
    unknown = sorted(set(budget) - set(BUDGET_FIELDS))
    if unknown:
        raise ServiceError(f"budget.{unknown[0]}", f"unknown field; known: {', '.join(BUDGET_FIELDS)}")
    given = {k: v for k, v in budget.items() if v is not None}
    if not given:
        raise ServiceError("budget", "give max_params, max_mult_adds or both")
    counts = {}
    for key, value in given.items():
        try:
            counts[key] = parse_count(value)
        except ValueError as exc:
            raise ServiceError(f"budget.{key}", str(exc)) from None
    if width_given:
        raise ServiceError("recipe.filters", "a budget picks the width F; leave filters out (repeats may fix N)")
    try:
        check_recipe_budget(genotype, recipe, shape, counts, fixed_n)
    except BudgetError as exc:
        raise ServiceError(f"budget.{exc.field}", exc.reason) from None
    return {**dict.fromkeys(BUDGET_FIELDS), **counts, "repeats": fixed_n}


# -- selections: the top-K stage and noise floors ------------------------------------------------
def _candidates(search: m.Search) -> list[Candidate]:
    """The search's children with a reward (trained or reused)."""
    rows = m.Architecture.objects.filter(search=search, reward__isnull=False)
    return [Candidate(a, h, r, i) for a, h, r, i in rows.values_list("id", "canonical_hash", "reward", "sample_index")]


def create_selection(
    *,
    user,
    search: m.Search,
    kind: str = m.SELECTION_TOP_K,
    top_k: object = None,
    seeds: object = None,
    recipe: object = None,
) -> m.Selection:
    """Queue a selection of `search`: its top K distinct architectures (or, for a noise
    floor, K random children) trained with `seeds` seeds each. `recipe` overrides fields of
    the default (the child's recipe, nas_engine.selection.selection_recipe; a noise floor
    keeps the child's recipe exactly). `user` None: started by the search's spec."""
    if user is not None:
        check_member(user, search.team)
    if kind not in dict(m.SELECTION_KINDS):
        raise ServiceError("kind", f"must be one of {', '.join(dict(m.SELECTION_KINDS))}")
    spec = search.parsed_spec
    if spec.objective["name"] == "accuracy" and spec.dataset.get("val_size") == 0:
        raise ServiceError("dataset.val_size", "a selection ranks by validation accuracy; this search has none")
    noise = kind == m.SELECTION_NOISE_FLOOR
    try:
        k = default_top_k(search.children_total) if top_k is None else check_count(top_k, "top_k", 10**6)
        n_seeds = DEFAULT_SEEDS if seeds is None else check_count(seeds, "seeds", settings.NAS_MAX_SELECTION_SEEDS)
        if recipe is not None and not isinstance(recipe, dict):
            raise ServiceError("recipe", "must be an object of recipe fields")
        candidates = _candidates(search)
        if not candidates:
            raise ServiceError("search", "no child of this search has a reward yet")
        if noise:
            parsed_recipe = Recipe.from_dict({**spec.child.to_dict(), **(recipe or {})})
            chosen = noise_floor_sample(candidates, k, spec.seed)
        else:
            parsed_recipe = selection_recipe(spec.child, recipe)
            chosen = top_k_of(candidates, k)
    except SelectionError as exc:
        raise ServiceError(exc.field, exc.reason) from None
    except RecipeError as exc:
        raise ServiceError(f"recipe.{exc.field}", exc.reason) from None
    if len(chosen) * n_seeds > settings.NAS_MAX_SELECTION_RUNS:
        raise ServiceError(
            "top_k",
            f"{len(chosen)} architectures x {n_seeds} seeds = {len(chosen) * n_seeds} runs, more than this "
            f"deployment's limit of {settings.NAS_MAX_SELECTION_RUNS} (NAS_MAX_SELECTION_RUNS)",
        )
    run_seeds = seeds_for(noise, spec.child.seed, n_seeds)
    with transaction.atomic():
        # One team's selections at a time are bounded: the gpu queue is shared.
        Team.objects.select_for_update().filter(pk=search.team_id).first()
        active = m.Selection.objects.filter(search__team_id=search.team_id, status__in=m.RUN_ACTIVE).count()
        if active >= settings.NAS_MAX_ACTIVE_SELECTIONS_PER_TEAM:
            raise ServiceError(
                "team",
                f"the team has {active} selections running, the limit (NAS_MAX_ACTIVE_SELECTIONS_PER_TEAM); "
                "wait for one to end or cancel one",
                status=429,
            )
        selection = m.Selection.objects.create(
            search=search,
            owner=user,
            kind=kind,
            top_k=len(chosen),
            seeds=n_seeds,
            recipe=parsed_recipe.to_dict(),
        )
        now = timezone.now()
        runs = m.SelectionRun.objects.bulk_create(
            m.SelectionRun(selection=selection, architecture_id=c.architecture, seed=s, dispatched_at=now)
            for c in chosen
            for s in run_seeds
        )
        live.publish_many(search.id, [live.selection_progress(selection)])
        for run in runs:
            dispatch.send_on_commit(dispatch.TASK_TRAIN_SELECTION, run.id)
    log.info(
        "selection %s (%s) of search %s: %d architectures x %d seeds, %d epochs, by %s",
        selection.id,
        kind,
        search.id,
        len(chosen),
        n_seeds,
        parsed_recipe.epochs,
        user or "the search's spec",
    )
    return selection


def start_follow_ups(search: m.Search) -> list[m.Selection]:
    """What a finished search's spec asks for next: its noise floor and its top-K selection.
    Called by the advance that finishes the search, in its transaction; a follow-up that
    cannot start (too few children with a reward, the team's limit) is logged, not raised:
    the search itself finished well."""
    spec = search.parsed_spec
    started = []
    for kind, options in ((m.SELECTION_NOISE_FLOOR, spec.noise_floor), (m.SELECTION_TOP_K, spec.selection)):
        if options is None:
            continue
        if kind == m.SELECTION_NOISE_FLOOR:
            args = {"top_k": options["children"], "seeds": options["seeds"]}
        else:
            recipe = {"epochs": options["epochs"]} if options.get("epochs") else None
            args = {"top_k": options["top_k"], "seeds": options["seeds"], "recipe": recipe}
            if args["top_k"] is not None:
                args["top_k"] = min(args["top_k"], len(distinct(_candidates(search))))
        try:
            with transaction.atomic():
                started.append(create_selection(user=None, search=search, kind=kind, **args))
        except ServiceError as exc:
            log.warning("search %s: %s not started: %s", search.id, kind, exc)
    return started


def cancel_selection(selection: m.Selection) -> m.Selection:
    """Stop a selection: its queued and running runs are cancelled (a worker training one
    notices at its next heartbeat and stops)."""
    with transaction.atomic():
        row = m.Selection.objects.select_for_update().get(pk=selection.pk)
        if row.is_done:
            raise ServiceError("status", f"cannot cancel a {row.status} selection", status=409)
        now = timezone.now()
        row.runs.filter(status__in=m.RUN_ACTIVE).update(
            status=m.RUN_CANCELLED, finished_at=now, lease_expires_at=None, error="selection cancelled"
        )
        row.status, row.finished_at = m.RUN_CANCELLED, now
        row.save(update_fields=["status", "finished_at"])
        live.publish_many(row.search_id, [live.selection_progress(row)])
    log.info("selection %s cancelled", row.id)
    return row
