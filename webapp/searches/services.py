"""What users and staff do to searches and training jobs, in one place.

Views, the API and admin actions call these functions; they validate, write rows in a
transaction, and queue Celery work by task name only after the transaction commits
through webapp.dispatch (the web app never imports `workers`). Every function raises `ServiceError(field,
reason, status)` for what the caller did wrong, which views turn into a 4xx.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction

from nas_engine.genotype import Genotype, GenotypeError
from nas_engine.spec import Limits, SpecError, validate_spec
from nas_engine.trainer import Recipe, RecipeError
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
    return Limits(max_children=settings.NAS_MAX_CHILDREN_PER_SEARCH, max_parallel=settings.NAS_MAX_PARALLEL_PER_SEARCH)


def check_member(user, team: Team) -> None:
    if not team.has_member(user):
        # 404, not 403: an outsider must not learn that the team exists.
        raise ServiceError("team", "no such team", status=404)


def submit_search(*, user, team: Team, name: str, spec_data: object) -> m.Search:
    """Validate everything, write the Search row, queue the first advance on commit."""
    check_member(user, team)
    name = (name or "").strip()
    if not name:
        raise ServiceError("name", "required")
    if len(name) > 200:
        raise ServiceError("name", "at most 200 characters")
    try:
        spec = validate_spec(spec_data, data_root=settings.NAS_DATA_ROOT, limits=limits())
    except SpecError as exc:
        raise ServiceError(f"spec.{exc.field}", exc.reason) from None
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
            team=team, owner=user, name=name, spec=spec.to_dict(), children_total=spec.children
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
        row = m.Search.objects.select_for_update().get(pk=search.pk)
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
    *, user, team: Team, name: str, genotype: object, dataset: object, recipe: object, architecture=None
) -> m.TrainingJob:
    """Validate a transfer-step job (genotype, data set, recipe) and queue it on commit."""
    check_member(user, team)
    name = (name or "").strip()
    if not name:
        raise ServiceError("name", "required")
    try:
        parsed = Genotype.from_dict(genotype)
    except GenotypeError as exc:
        raise ServiceError(f"genotype.{exc.field}" if exc.field else "genotype", exc.reason) from None
    try:
        spec = validate_spec({"dataset": dataset}, data_root=settings.NAS_DATA_ROOT, limits=limits())
    except SpecError as exc:
        raise ServiceError(exc.field, exc.reason) from None
    if not isinstance(recipe, dict):
        raise ServiceError("recipe", "must be an object")
    try:
        parsed_recipe = Recipe.from_dict(recipe)
    except RecipeError as exc:
        raise ServiceError(f"recipe.{exc.field}", exc.reason) from None
    with transaction.atomic():
        job = m.TrainingJob.objects.create(
            team=team,
            owner=user,
            name=name[:200],
            architecture=architecture,
            genotype=parsed.to_dict(),
            dataset=spec.dataset,
            recipe=parsed_recipe.to_dict(),
        )
        dispatch.send_on_commit(dispatch.TASK_TRAIN_JOB, job.id)
    log.info(
        "training job %s submitted by %s for team %s: %r on %s, %d epochs",
        job.id,
        user,
        team,
        job.name,
        spec.dataset["name"],
        parsed_recipe.epochs,
    )
    return job
