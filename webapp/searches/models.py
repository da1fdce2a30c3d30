"""Searches, the architectures they sample, the child runs that train them, and
training jobs (the transfer step). The database is the single source of truth: a
killed worker, a restarted web process or an emptied Redis loses nothing, because
these rows say what is left to do (ARCHITECTURE.md, "The search loop across processes").
"""

from __future__ import annotations

import functools
import json
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import models
from django.db.models import Count, F, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Length
from django.utils import timezone

from nas_engine.early_stopping import EarlyStopError, decision_epochs, parse_early_stop
from nas_engine.spec import SearchSpec, validate_spec
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
SEARCH_STOPPING = (CANCELLING, *SEARCH_DONE)  # a worker training one of its children stops

# -- ChildRun --------------------------------------------------------------------------------
RUN_QUEUED, RUN_RUNNING, RUN_SUCCEEDED, RUN_FAILED, RUN_REUSED, RUN_CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "reused",
    "cancelled",
)
# Early stopping (workers/rungs.py): a child run that reached a rung and must wait for its
# decision gives its worker back and is `waiting` (no worker, no task message) until the
# decision is taken; one the rule ended is `stopped`, its reward its value at that rung.
RUN_WAITING, RUN_STOPPED = "waiting", "stopped"
RUN_STATUSES = [
    (s, s.capitalize())
    for s in (RUN_QUEUED, RUN_RUNNING, RUN_WAITING, RUN_SUCCEEDED, RUN_STOPPED, RUN_FAILED, RUN_REUSED, RUN_CANCELLED)
]
RUN_ACTIVE = (RUN_QUEUED, RUN_RUNNING, RUN_WAITING)
RUN_DONE = (RUN_SUCCEEDED, RUN_STOPPED, RUN_FAILED, RUN_REUSED, RUN_CANCELLED)


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


def epochs_trained(status: str, epochs: object, planned: int, reused: bool = False, discarded: int = 0) -> int:
    """The epochs a child run trained: its rows, plus the `discarded` epochs of earlier
    attempts that a restart trained again (ChildRun.epochs_discarded). A run without
    per-epoch rows (a synthetic child without early stopping) trained its `planned` epochs
    if it succeeded; a reused one (status reused, or `reused`: a duplicate of a stopped
    child, which carries its original's rows) trained none. Search.epochs_trained sums
    this over told children."""
    if reused or status == RUN_REUSED:
        return 0
    if isinstance(epochs, list) and epochs:
        return len(epochs) + discarded
    return (planned if status == RUN_SUCCEEDED else 0) + discarded


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
    # When the strategy's state (StrategyCheckpointPart rows) was last written.
    checkpoint_at = models.DateTimeField(null=True, blank=True)
    children_total = models.PositiveIntegerField()
    children_sampled = models.PositiveIntegerField(default=0)
    children_done = models.PositiveIntegerField(default=0)
    children_failed = models.PositiveIntegerField(default=0)
    children_reused = models.PositiveIntegerField(default=0)
    children_stopped = models.PositiveIntegerField(default=0, help_text="ended early at a rung (early stopping)")
    epochs_trained = models.PositiveBigIntegerField(default=0, help_text="child epochs actually trained, told children")
    epochs_saved = models.PositiveBigIntegerField(
        default=0, help_text="epochs the stopped children did not train (their full training minus the rung)"
    )
    # SearchSpec.measurement_key: the team reward cache reuses rewards of searches with the same key.
    measure_key = models.CharField(max_length=64, blank=True, db_index=True)
    best_reward = models.FloatField(null=True, blank=True)
    best_architecture = models.ForeignKey(
        "Architecture", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    noise_floor = models.FloatField(
        null=True, blank=True, help_text="std of one cell's reward over seeds, from the search's noise-floor selection"
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
    def parsed_spec(self) -> SearchSpec:
        """The stored spec as nas_engine's SearchSpec: every reader (pages, presets, the
        advance, child runs) uses this one parse. Quotas do not apply: the spec was validated
        against them when it was submitted, and lowering a quota must not break it."""
        return _parse_stored_spec(json.dumps(self.spec, sort_keys=True), str(settings.NAS_DATA_ROOT))

    @property
    def child_epochs(self) -> int | None:
        """The children's full training, read from the stored spec without validating it
        again (no data set lookup: a search whose folder went away still reads it); None
        for a spec not in full form."""
        child = self.spec.get("child") if isinstance(self.spec, dict) else None
        epochs = child.get("epochs") if isinstance(child, dict) else None
        return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None

    def rung_counts(self) -> list[dict]:
        """Early stopping per decision epoch: the children judged there (`reached`), those
        that went on and those stopped ([] without early stopping). One aggregate query over
        the RungDecision rows; every epoch where the rule may decide is listed, judged or not.
        The search page's table, and the search.status event's `rungs` (webapp.live).
        Read from the stored spec without validating it again (no data set lookup), so a
        search whose data set folder went away can still be failed or cancelled."""
        epochs = self.child_epochs
        try:
            early_stop = parse_early_stop(self.spec.get("early_stop"))
        except (EarlyStopError, AttributeError):
            return []
        if not early_stop.active or epochs is None:
            return []
        rows = {
            row["epoch"]: row
            for row in self.rung_decisions.values("epoch")
            .annotate(reached=Count("id"), stopped=Count("id", filter=Q(stop=True)))
            .order_by("epoch")
        }
        out = []
        for epoch in sorted(set(decision_epochs(early_stop, epochs)) | set(rows)):
            reached = rows.get(epoch, {}).get("reached", 0)
            stopped = rows.get(epoch, {}).get("stopped", 0)
            out.append({"epoch": epoch, "reached": reached, "continued": reached - stopped, "stopped": stopped})
        return out

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
            "children_stopped": self.children_stopped,
            "epochs_trained": self.epochs_trained,
            "epochs_saved": self.epochs_saved,
            "best_reward": self.best_reward,
            "best_architecture": self.best_architecture_id,
            "noise_floor": self.noise_floor,
            "error": self.error,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
        }


@functools.lru_cache(maxsize=256)
def _parse_stored_spec(spec_json: str, data_root: str) -> SearchSpec:
    """Parse once per process and spec text (a worker advances the same search thousands of
    times; SearchSpec is frozen, so sharing it is safe)."""
    # A stored spec passed the limits at submission (limits=None): none may refuse it later.
    return validate_spec(json.loads(spec_json), data_root=Path(data_root), limits=None)


class StrategyCheckpointPart(models.Model):
    """One piece of a search's strategy checkpoint (workers/strategy_store.py): the envelope
    with the small entries of the strategy's state_dict(), or one large tensor entry, as
    torch.save bytes with their digest.

    A table of its own, in pieces, because an advance changes little of the state: PPO's
    controller weights and optimizer (2.2 MB) change once per update, its RNG and pending
    proposals (a few kB) every advance. Writing only the pieces whose digest changed keeps
    that 2.2 MB out of most advances, out of the WAL and out of the searches table (which a
    whole-checkpoint column rewritten every advance grew to 543 MB of dead versions)."""

    search = models.ForeignKey(Search, on_delete=models.CASCADE, related_name="checkpoint_parts")
    key = models.CharField(max_length=100)
    digest = models.CharField(max_length=64)
    data = models.BinaryField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["search", "key"], name="one_checkpoint_part_per_key")]

    def __str__(self) -> str:
        return f"{self.key} of search {self.search_id}"

    @classmethod
    def stored_bytes(cls) -> Subquery:
        """Annotation of Search rows: the bytes their checkpoint takes, without loading it."""
        pieces = cls.objects.filter(search=OuterRef("pk")).values("search").annotate(n=Sum(Length("data")))
        return Subquery(pieces.values("n"))


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
    reward = models.FloatField(
        null=True,
        blank=True,
        db_index=True,
        help_text="validation accuracy after the full training, once known (a stopped child has none)",
    )
    # A reused child: the architecture (of this search, or of another search of the team
    # measured the same way) whose reward it took.
    reused_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
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
            "reused_from": self.reused_from_id,
            "created_at": _iso(self.created_at),
        }


class LeasedWork(models.Model):
    """Work a gpu-queue worker claims with a lease: child runs, training jobs, and every job
    type to come. One implementation of the protocol (ARCHITECTURE.md, "Leases"):

    - claim: one conditional UPDATE (queued -> running, or running with an expired lease)
      that counts the attempt and names the worker, so two workers never hold one row;
    - `ours()`: the row while it is still this claim's (running, this attempt, this
      worker); every later write goes through it, and an update that touches nothing
      means the work was taken away (lease expired and reclaimed, or cancelled);
    - heartbeat: extends the lease; finish / requeue: end the claim;
    - expire_leases (the reaper): running rows whose lease ran out are queued again, or
      failed once they used up their attempts;
    - lost_messages (the reaper): waiting rows whose task message went out a lease ago (or
      never: `dispatched_at` empty) are sent again, as a flushed Redis loses messages.
    """

    status = models.CharField(max_length=20, choices=RUN_STATUSES, default=RUN_QUEUED, db_index=True)
    attempt = models.PositiveIntegerField(default=0, help_text="claims so far (1 = first try)")
    worker = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)  # its task message last went out

    class Meta:
        abstract = True

    # -- what a subclass may refine ---------------------------------------------------------
    @classmethod
    def claimable(cls, pk: int) -> models.QuerySet:
        """The row `pk` if it may be claimed at all (a child run of a cancelled search may not)."""
        return cls.objects.filter(pk=pk)

    @classmethod
    def requeue_fields(cls, now) -> dict:
        """Fields written whenever a row goes back to the queue (and so is dispatched again)."""
        return {"dispatched_at": now}

    @classmethod
    def waiting(cls) -> models.QuerySet:
        """Queued rows whose work may still start (a child run of a cancelled search may not)."""
        return cls.objects.filter(status=RUN_QUEUED)

    @classmethod
    def claimed(cls, pk: int):
        """The row just claimed, with what the worker reads next."""
        return cls.objects.get(pk=pk)

    # -- the protocol ---------------------------------------------------------------------------
    @staticmethod
    def lease_end(now=None):
        return (now or timezone.now()) + timedelta(seconds=settings.NAS_LEASE_SECONDS)

    @classmethod
    def claim(cls, pk: int, worker: str):
        """The claimed row, or None when it is taken, finished or not claimable."""
        now = timezone.now()
        rows = cls.claimable(pk)
        updated = (rows.filter(status=RUN_QUEUED) | rows.filter(status=RUN_RUNNING, lease_expires_at__lt=now)).update(
            status=RUN_RUNNING,
            attempt=F("attempt") + 1,
            worker=worker,
            lease_expires_at=cls.lease_end(now),
            heartbeat_at=now,
            started_at=now,
        )
        return cls.claimed(pk) if updated else None

    def ours(self) -> models.QuerySet:
        return type(self).objects.filter(pk=self.pk, status=RUN_RUNNING, attempt=self.attempt, worker=self.worker)

    def heartbeat(self, **fields) -> bool:
        """Extend the lease (and write `fields`, which this instance then holds too); False:
        no longer ours."""
        now = timezone.now()
        fields = dict(heartbeat_at=now, lease_expires_at=self.lease_end(now), **fields)
        if not self.ours().update(**fields):
            return False
        for key, value in fields.items():
            setattr(self, key, value)
        return True

    def finish(self, status: str, **fields) -> bool:
        """End the claim with a final status; False (nothing written): no longer ours. When
        written, this instance holds what was written (no re-read needed for its event)."""
        fields = dict(status=status, finished_at=timezone.now(), lease_expires_at=None, **fields)
        if not self.ours().update(**fields):
            return False
        for key, value in fields.items():
            setattr(self, key, value)
        return True

    def requeue(self, **fields) -> bool:
        """Give the work back to the queue (a retry); False: no longer ours."""
        now = timezone.now()
        fields = {**self.requeue_fields(now), **fields}
        return bool(self.ours().update(status=RUN_QUEUED, lease_expires_at=None, **fields))

    @classmethod
    def lost_messages(cls, now) -> list[int]:
        """Ids of waiting rows whose message went out a lease ago or never, marked as sent
        now (the caller sends them). Call inside a transaction, and only once the queue has
        drained: while it holds messages a row may just be waiting its turn."""
        lease = timedelta(seconds=settings.NAS_LEASE_SECONDS)
        rows = cls.waiting().select_for_update(skip_locked=True)
        lost = list(
            rows.filter(Q(dispatched_at__lt=now - lease) | Q(dispatched_at__isnull=True)).values_list("id", flat=True)
        )
        cls.objects.filter(id__in=lost).update(dispatched_at=now)
        return lost

    @classmethod
    def expire_leases(cls, now=None) -> tuple[list, list]:
        """Running rows whose lease ran out: queued again while attempts remain, else failed.
        Returns (requeued rows, failed rows). Call inside a transaction: the rows are locked
        (SKIP LOCKED, so two reapers split them instead of waiting)."""
        now = now or timezone.now()
        requeued, failed = [], []
        for row in cls.objects.select_for_update(skip_locked=True).filter(status=RUN_RUNNING, lease_expires_at__lt=now):
            if row.attempt < settings.NAS_MAX_ATTEMPTS:
                fields = {"status": RUN_QUEUED, "lease_expires_at": None, **cls.requeue_fields(now)}
                requeued.append(row)
            else:
                fields = {"status": RUN_FAILED, "lease_expires_at": None, "finished_at": now}
                fields["error"] = f"lease expired after {row.attempt} attempts"
                failed.append(row)
            for key, value in fields.items():
                setattr(row, key, value)
            row.save(update_fields=list(fields))
        return requeued, failed

    @property
    def lease_expired(self) -> bool:
        return self.lease_expires_at is not None and self.lease_expires_at < timezone.now()

    def result_dict(self) -> dict:
        """The claim and its result, as a run's to_dict() shows them (child and selection
        runs: every row with `epochs`, `reward` and `wall_time`)."""
        return {
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


class ChildRun(LeasedWork):
    """A training attempt of an architecture. Claimed with a lease, kept by heartbeats."""

    architecture = models.ForeignKey(Architecture, on_delete=models.CASCADE, related_name="runs")
    epochs = models.JSONField(default=list, blank=True, help_text="per-epoch metrics")
    reward = models.FloatField(null=True, blank=True)
    wall_time = models.FloatField(null=True, blank=True)
    # Epochs that attempts of this run trained and a later attempt trained again (a restart
    # from scratch, or from an older checkpoint, after a lost worker): spent, but in no row.
    epochs_discarded = models.PositiveIntegerField(default=0)
    # Its child.finished live event is stored (the outbox flag): set in the transaction that
    # writes that event, so the advance can publish the event of a run whose worker died
    # between writing the result and publishing it (workers/child_runs.announce_finished).
    announced = models.BooleanField(default=False)

    class Meta:
        ordering = ["architecture", "id"]
        # One run per architecture: attempts are counted, not separate rows, so a reward
        # is written exactly once per architecture (conditional update on status).
        constraints = [models.UniqueConstraint(fields=["architecture"], name="one_run_per_architecture")]

    def __str__(self) -> str:
        return f"run of {self.architecture} ({self.status})"

    @classmethod
    def claimable(cls, pk: int) -> models.QuerySet:
        return cls.objects.filter(pk=pk).exclude(architecture__search__status__in=SEARCH_STOPPING)

    @classmethod
    def waiting(cls) -> models.QuerySet:
        return super().waiting().filter(architecture__search__status__in=(QUEUED, RUNNING, PAUSED))

    @classmethod
    def claimed(cls, pk: int):
        return cls.objects.select_related("architecture__search").get(pk=pk)

    def park(self, epochs: list, wall_time: float | None = None, epochs_discarded: int | None = None) -> bool:
        """End this claim at a rung whose decision must wait (early stopping): the run gives
        its worker back and waits as a row, with the epochs it trained and the time it took
        so far (the claim that resumes it adds its own); the advance queues it again, or
        stops it, once its decision is taken. False: no longer ours."""
        fields = {"epochs": epochs, "wall_time": wall_time}
        if epochs_discarded is not None:
            fields["epochs_discarded"] = epochs_discarded
        return bool(self.ours().update(status=RUN_WAITING, lease_expires_at=None, **fields))

    def to_dict(self) -> dict:
        return {"id": self.id, "architecture": self.architecture_id, **self.result_dict()}


class RungDecision(models.Model):
    """Early stopping's decision for one child after one epoch (workers/rungs.py): taken once,
    from the rows, in ask order, and kept, so a worker that asks again (after a crash, a
    restart from scratch, or a wait) gets the same answer.

    `statistic` is what the child contributes as a peer to later decisions at this epoch
    (ASHA: its value; the median rule: its running mean); `value` is what the rule judged,
    `threshold` what it was compared with (None: too few peers), `peers` how many."""

    search = models.ForeignKey(Search, on_delete=models.CASCADE, related_name="rung_decisions")
    sample_index = models.PositiveIntegerField()
    epoch = models.PositiveIntegerField()
    statistic = models.FloatField()
    value = models.FloatField()
    threshold = models.FloatField(null=True, blank=True)
    peers = models.PositiveIntegerField(default=0)
    stop = models.BooleanField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["search", "epoch", "sample_index"]
        constraints = [
            models.UniqueConstraint(fields=["search", "epoch", "sample_index"], name="one_decision_per_rung")
        ]

    def __str__(self) -> str:
        return f"#{self.sample_index} after epoch {self.epoch}: {'stop' if self.stop else 'continue'}"

    def to_dict(self) -> dict:
        return {
            "sample_index": self.sample_index,
            "epoch": self.epoch,
            "stop": self.stop,
            "value": self.value,
            "threshold": self.threshold,
            "peers": self.peers,
        }


class TrainingJob(LeasedWork):
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
    preset = models.CharField(
        max_length=50, blank=True, help_text="the named recipe it started from (nas_engine.transfer.TRANSFER_PRESETS)"
    )
    budget = models.JSONField(
        default=dict,
        blank=True,
        help_text="{max_params, max_mult_adds, repeats}: the worker fits N and F to it and records "
        "{fitted: {repeats, filters, n_at_p, params, mult_adds}}; {} without a budget",
    )
    epochs = models.JSONField(default=list, blank=True)
    reward = models.FloatField(null=True, blank=True, help_text="validation accuracy after the last epoch")
    test_acc = models.FloatField(
        null=True, blank=True, help_text="accuracy on the data set's test split, scored once after the last epoch"
    )
    test_source = models.CharField(max_length=200, blank=True, help_text="where the test split came from")
    resumed_from_epoch = models.PositiveIntegerField(
        default=0, help_text="the last attempt continued from its checkpoint after this epoch (0: from scratch)"
    )
    params = models.BigIntegerField(null=True, blank=True)
    mult_adds = models.BigIntegerField(null=True, blank=True)
    wall_time = models.FloatField(null=True, blank=True)
    bundle_path = models.CharField(max_length=500, blank=True, help_text="relative to NAS_ARTIFACTS_ROOT")

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
            "preset": self.preset or None,
            "budget": self.budget or None,
            "status": self.status,
            "attempt": self.attempt,
            "epochs": self.epochs,
            "reward": self.reward,
            "val_acc": self.reward,
            "test_acc": self.test_acc,
            "test_source": self.test_source,
            "resumed_from_epoch": self.resumed_from_epoch,
            "params": self.params,
            "mult_adds": self.mult_adds,
            "wall_time": self.wall_time,
            "has_bundle": bool(self.bundle_path),
            "error": self.error,
            "created_at": _iso(self.created_at),
            "finished_at": _iso(self.finished_at),
        }


# -- Selection -------------------------------------------------------------------------------
SELECTION_TOP_K, SELECTION_NOISE_FLOOR = "top_k", "noise_floor"
SELECTION_KINDS = [
    (SELECTION_TOP_K, "Top-K selection"),
    (SELECTION_NOISE_FLOOR, "Noise floor"),
]
SELECTION_STATUSES = [(s, s.capitalize()) for s in (RUN_QUEUED, RUN_RUNNING, RUN_SUCCEEDED, RUN_FAILED, RUN_CANCELLED)]


class SelectionQuerySet(TeamScopedQuerySet):
    team_path = "search__team"


class Selection(models.Model):
    """Architectures of a search trained again, each with several seeds, and ranked by the
    mean of their validation accuracy (never the test split).

    Two kinds:
    - top_k: the paper's second stage (Zoph et al. 2017, sec. 4: the best 250 of 20,000
      children trained fully to pick the winner), scaled: the search's top K distinct
      architectures with a longer recipe; the winner goes on to transfer;
    - noise_floor: a few of the search's children trained again with the child recipe and
      other seeds, so the search knows how far one cell's reward moves by chance alone
      (`noise_std`: the pooled standard deviation over seeds, the search's reward included).
    """

    search = models.ForeignKey(Search, on_delete=models.CASCADE, related_name="selections")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="selections",
        help_text="who asked; empty when the search's spec started it",
    )
    kind = models.CharField(max_length=20, choices=SELECTION_KINDS, default=SELECTION_TOP_K)
    top_k = models.PositiveIntegerField(help_text="architectures trained again")
    seeds = models.PositiveIntegerField(help_text="training seeds per architecture")
    recipe = models.JSONField(help_text="nas_engine.trainer.Recipe, full form (its seed is each run's)")
    status = models.CharField(max_length=20, choices=SELECTION_STATUSES, default=RUN_QUEUED, db_index=True)
    winner = models.ForeignKey("Architecture", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    noise_std = models.FloatField(null=True, blank=True, help_text="pooled std of one cell's reward over seeds")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = SelectionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} of {self.search}"

    @property
    def is_done(self) -> bool:
        return self.status in RUN_DONE

    def ranking(self) -> list[dict]:
        """Per architecture: the rewards of its seeds, their mean and std, best mean first
        (ties: smaller std, then earlier sample). Architectures still without a result come
        last, in the search's order. A noise-floor row counts the search's own reward as one more seed."""
        rows: dict[int, dict] = {}
        for run in self.runs.select_related("architecture").order_by("architecture__sample_index", "seed"):
            arch = run.architecture
            row = rows.setdefault(
                arch.id,
                {
                    "architecture": arch.id,
                    "sample_index": arch.sample_index,
                    "search_reward": arch.reward,
                    "seeds": [],
                    "rewards": [],
                    "done": 0,
                    "failed": 0,
                },
            )
            row["seeds"].append(run.seed)
            row["rewards"].append(run.reward)
            row["done"] += run.status in RUN_DONE
            row["failed"] += run.status in (RUN_FAILED, RUN_CANCELLED)
        for row in rows.values():
            row.update(seed_summary(self.kind, row["rewards"], row["search_reward"]))
        return sorted(rows.values(), key=_rank_key)

    def pooled_std(self, ranking: list[dict] | None = None) -> float | None:
        """sqrt of the mean within-architecture variance: the spread one cell's reward has
        over seeds (architectures with 2+ samples)."""
        variances = [r["std"] ** 2 for r in (ranking or self.ranking()) if r["std"] is not None]
        return (sum(variances) / len(variances)) ** 0.5 if variances else None

    def to_dict(self) -> dict:
        counts = dict(self.runs.values_list("status").annotate(n=models.Count("id")))
        ranking = self.ranking()
        return {
            "id": self.id,
            "search": self.search_id,
            "kind": self.kind,
            "owner": self.owner.username if self.owner_id else None,
            "status": self.status,
            "top_k": self.top_k,
            "seeds": self.seeds,
            "recipe": self.recipe,
            "runs_total": sum(counts.values()),
            "runs_done": sum(n for s, n in counts.items() if s in RUN_DONE),
            "runs_failed": counts.get(RUN_FAILED, 0) + counts.get(RUN_CANCELLED, 0),
            "runs_running": counts.get(RUN_RUNNING, 0),
            "ranking": ranking,
            "winner": self.winner_id,
            "noise_std": self.noise_std if self.noise_std is not None else self.pooled_std(ranking),
            "error": self.error,
            "created_at": _iso(self.created_at),
            "finished_at": _iso(self.finished_at),
        }


def _rank_key(row: dict) -> tuple:
    if row["mean"] is None:
        return (True, -(row["search_reward"] or 0.0), 0.0, row["sample_index"])
    return (False, -row["mean"], row["std"] or 0.0, row["sample_index"])


def seed_summary(kind: str, rewards: list[float | None], search_reward: float | None) -> dict:
    """{n, mean, std} of one architecture's rewards in a selection (None: not yet). A noise
    floor trains with the search's own recipe, so the search's reward is one more seed."""
    samples = [r for r in rewards if r is not None]
    if kind == SELECTION_NOISE_FLOOR and search_reward is not None:
        samples.append(search_reward)
    mean = sum(samples) / len(samples) if samples else None
    return {"n": len(samples), "mean": mean, "std": _sample_std(samples)}


def _sample_std(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


class SelectionRun(LeasedWork):
    """One architecture trained with one seed for a selection: claimed with a lease and
    written once, like a child run (exactly one result per architecture and seed)."""

    selection = models.ForeignKey(Selection, on_delete=models.CASCADE, related_name="runs")
    architecture = models.ForeignKey(Architecture, on_delete=models.CASCADE, related_name="selection_runs")
    seed = models.IntegerField()
    epochs = models.JSONField(default=list, blank=True, help_text="per-epoch metrics")
    reward = models.FloatField(null=True, blank=True, help_text="validation accuracy after the last epoch")
    wall_time = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["selection", "architecture", "seed"]
        constraints = [
            models.UniqueConstraint(fields=["selection", "architecture", "seed"], name="one_run_per_selection_seed")
        ]

    def __str__(self) -> str:
        return f"seed {self.seed} of {self.architecture} for selection {self.selection_id} ({self.status})"

    @classmethod
    def claimable(cls, pk: int) -> models.QuerySet:
        return cls.objects.filter(pk=pk).exclude(selection__status=RUN_CANCELLED)

    @classmethod
    def waiting(cls) -> models.QuerySet:
        return super().waiting().filter(selection__status__in=RUN_ACTIVE)

    @classmethod
    def claimed(cls, pk: int):
        return cls.objects.select_related("selection__search", "architecture").get(pk=pk)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "selection": self.selection_id,
            "architecture": self.architecture_id,
            "seed": self.seed,
            **self.result_dict(),
        }


# Every kind of leased work, for what treats them alike (the reaper, local mode's recovery).
LEASED_WORK = (ChildRun, TrainingJob, SelectionRun)
