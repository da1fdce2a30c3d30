"""Searches, the architectures they sample, the child runs that train them, and
training jobs (the transfer step). The database is the single source of truth: a
killed worker, a restarted web process or an emptied Redis loses nothing, because
these rows say what is left to do (ARCHITECTURE.md, "The search loop across processes").
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from webapp.accounts.models import Team

# -- Search ----------------------------------------------------------------------------------
QUEUED, RUNNING, PAUSED, CANCELLING, CANCELLED, FINISHED, FAILED = (
    "queued",
    "running",
    "paused",
    "cancelling",
    "cancelled",
    "finished",
    "failed",
)
SEARCH_STATUSES = [(s, s.capitalize()) for s in (QUEUED, RUNNING, PAUSED, CANCELLING, CANCELLED, FINISHED, FAILED)]
SEARCH_ACTIVE = (QUEUED, RUNNING, PAUSED, CANCELLING)  # counts against the team's quota
SEARCH_ADVANCING = (QUEUED, RUNNING)  # may sample and dispatch new children
SEARCH_DONE = (CANCELLED, FINISHED, FAILED)

# -- ChildRun --------------------------------------------------------------------------------
RUN_QUEUED, RUN_RUNNING, RUN_SUCCEEDED, RUN_FAILED, RUN_REUSED, RUN_CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "reused",
    "cancelled",
)
RUN_STATUSES = [
    (s, s.capitalize()) for s in (RUN_QUEUED, RUN_RUNNING, RUN_SUCCEEDED, RUN_FAILED, RUN_REUSED, RUN_CANCELLED)
]
RUN_ACTIVE = (RUN_QUEUED, RUN_RUNNING)
RUN_DONE = (RUN_SUCCEEDED, RUN_FAILED, RUN_REUSED, RUN_CANCELLED)


class TeamScopedQuerySet(models.QuerySet):
    """Rows a user may see: those of their teams (staff: all; anonymous: none)."""

    team_path = "team"  # lookup from the model to its owning Team

    def for_user(self, user):
        if not user.is_authenticated:
            return self.none()
        if user.is_staff:
            return self.all()
        return self.filter(**{f"{self.team_path}__memberships__user": user})


def _iso(moment) -> str | None:
    return moment.isoformat() if moment else None


def latest_epoch(epochs: object) -> dict:
    """The last per-epoch metrics dict of a run's or a job's `epochs` ({} when none)."""
    last = epochs[-1] if isinstance(epochs, list) and epochs else None
    return last if isinstance(last, dict) else {}


class Search(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="searches")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="searches")
    name = models.CharField(max_length=200)
    spec = models.JSONField(help_text="validated search spec (nas_engine.spec), full form")
    status = models.CharField(max_length=20, choices=SEARCH_STATUSES, default=QUEUED, db_index=True)
    # The strategy's complete state (nas_engine.strategies.save_checkpoint bytes):
    # weights, optimizer, baseline, RNG states, pending proposals, population.
    checkpoint = models.BinaryField(null=True, blank=True, editable=False)
    checkpoint_at = models.DateTimeField(null=True, blank=True)
    children_total = models.PositiveIntegerField()
    children_sampled = models.PositiveIntegerField(default=0)
    children_done = models.PositiveIntegerField(default=0)
    children_failed = models.PositiveIntegerField(default=0)
    children_reused = models.PositiveIntegerField(default=0)
    best_reward = models.FloatField(null=True, blank=True)
    best_architecture = models.ForeignKey(
        "Architecture", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = TeamScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "searches"

    def __str__(self) -> str:
        return f"{self.name} ({self.team})"

    @property
    def is_done(self) -> bool:
        return self.status in SEARCH_DONE

    @property
    def progress(self) -> int:
        """Percent of the budget done (told: trained, reused or failed)."""
        return round(100 * self.children_done / self.children_total) if self.children_total else 0

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "team": self.team_id,
            "owner": self.owner.username if self.owner_id else None,
            "name": self.name,
            "status": self.status,
            "spec": self.spec,
            "children_total": self.children_total,
            "children_sampled": self.children_sampled,
            "children_done": self.children_done,
            "children_failed": self.children_failed,
            "children_reused": self.children_reused,
            "best_reward": self.best_reward,
            "best_architecture": self.best_architecture_id,
            "error": self.error,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
        }


class ArchitectureQuerySet(TeamScopedQuerySet):
    team_path = "search__team"


class Architecture(models.Model):
    """One sampled genotype of a search: the strategy's proposal `sample_index`."""

    search = models.ForeignKey(Search, on_delete=models.CASCADE, related_name="architectures")
    sample_index = models.PositiveIntegerField(help_text="the strategy's proposal id")
    genotype = models.JSONField()
    canonical_hash = models.CharField(max_length=64, db_index=True)
    params = models.BigIntegerField(null=True, blank=True)
    mult_adds = models.BigIntegerField(null=True, blank=True)
    reward = models.FloatField(null=True, blank=True, db_index=True, help_text="validation accuracy, once known")
    # Whether the strategy has been told this architecture's result (reward or failure).
    told = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ArchitectureQuerySet.as_manager()

    class Meta:
        ordering = ["search", "sample_index"]
        constraints = [models.UniqueConstraint(fields=["search", "sample_index"], name="one_sample_index")]
        indexes = [models.Index(fields=["search", "told"]), models.Index(fields=["search", "canonical_hash"])]

    def __str__(self) -> str:
        return f"#{self.sample_index} of {self.search.name}"

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "search": self.search_id,
            "sample_index": self.sample_index,
            "genotype": self.genotype,
            "canonical_hash": self.canonical_hash,
            "params": self.params,
            "mult_adds": self.mult_adds,
            "reward": self.reward,
            "created_at": _iso(self.created_at),
        }


class ChildRun(models.Model):
    """A training attempt of an architecture. Claimed with a lease, kept by heartbeats."""

    architecture = models.ForeignKey(Architecture, on_delete=models.CASCADE, related_name="runs")
    status = models.CharField(max_length=20, choices=RUN_STATUSES, default=RUN_QUEUED, db_index=True)
    attempt = models.PositiveIntegerField(default=0, help_text="claims so far (1 = first try)")
    worker = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    epochs = models.JSONField(default=list, blank=True, help_text="per-epoch metrics")
    reward = models.FloatField(null=True, blank=True)
    wall_time = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["architecture", "id"]
        # One run per architecture: attempts are counted, not separate rows, so a reward
        # is written exactly once per architecture (conditional update on status).
        constraints = [models.UniqueConstraint(fields=["architecture"], name="one_run_per_architecture")]

    def __str__(self) -> str:
        return f"run of {self.architecture} ({self.status})"

    @property
    def lease_expired(self) -> bool:
        return self.lease_expires_at is not None and self.lease_expires_at < timezone.now()

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "architecture": self.architecture_id,
            "status": self.status,
            "attempt": self.attempt,
            "worker": self.worker,
            "epochs": self.epochs,
            "reward": self.reward,
            "wall_time": self.wall_time,
            "error": self.error,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
        }


class TrainingJob(models.Model):
    """Train a chosen genotype at a chosen N@P on a chosen data set: the transfer step.

    Its result is a downloadable bundle (genotype JSON, weights, metrics, recipe).
    """

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="training_jobs")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="training_jobs")
    architecture = models.ForeignKey(
        Architecture, null=True, blank=True, on_delete=models.SET_NULL, related_name="training_jobs"
    )
    name = models.CharField(max_length=200)
    genotype = models.JSONField()
    dataset = models.JSONField(help_text="as in a search spec: name, subset_per_class, val_size, image_size")
    recipe = models.JSONField(help_text="nas_engine.trainer.Recipe, full form")
    status = models.CharField(max_length=20, choices=RUN_STATUSES, default=RUN_QUEUED, db_index=True)
    attempt = models.PositiveIntegerField(default=0)
    worker = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    epochs = models.JSONField(default=list, blank=True)
    reward = models.FloatField(null=True, blank=True)
    params = models.BigIntegerField(null=True, blank=True)
    mult_adds = models.BigIntegerField(null=True, blank=True)
    wall_time = models.FloatField(null=True, blank=True)
    bundle_path = models.CharField(max_length=500, blank=True, help_text="relative to NAS_ARTIFACTS_ROOT")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = TeamScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.team})"

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "team": self.team_id,
            "owner": self.owner.username if self.owner_id else None,
            "name": self.name,
            "architecture": self.architecture_id,
            "genotype": self.genotype,
            "dataset": self.dataset,
            "recipe": self.recipe,
            "status": self.status,
            "attempt": self.attempt,
            "epochs": self.epochs,
            "reward": self.reward,
            "params": self.params,
            "mult_adds": self.mult_adds,
            "wall_time": self.wall_time,
            "has_bundle": bool(self.bundle_path),
            "error": self.error,
            "created_at": _iso(self.created_at),
            "finished_at": _iso(self.finished_at),
        }
