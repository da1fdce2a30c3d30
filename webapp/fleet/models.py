"""The workers fleet: one row per Celery worker node and one per process of it that runs
tasks, kept fresh by the worker itself (workers/fleet.py).

- Worker, per node (e.g. gpu0@host): registers when ready, then its main process writes
  `last_seen` every HEARTBEAT_SECONDS from a heartbeat thread and marks it offline on a
  clean shutdown.
- WorkerProcess, per process that runs tasks (a prefork pool process; with the solo pool
  the worker's own process): named like the leases name their owner ("host:pid",
  LeasedWork.worker), so each process's work is told apart from its siblings'. It records
  the training task it runs (task_prerun / task_postrun, in that process).

A worker is heard from by its own heartbeat or by the lease heartbeats of the work one of
its processes holds (every few seconds through every phase of a run, from that process):
a worker busy training is alive even while its main process is quiet. Only a worker
silent on both counts for LOST_AFTER_SECONDS is lost; the reaper then stores that and
logs it once.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import models
from django.db.models import Max
from django.utils import timezone

ONLINE, OFFLINE, LOST = "online", "offline", "lost"
STATUSES = [(s, s.capitalize()) for s in (ONLINE, OFFLINE, LOST)]
HEARTBEAT_SECONDS = 10.0
LOST_AFTER_SECONDS = 3 * HEARTBEAT_SECONDS

# task_name values: the short names of workers.tasks
TASK_TRAIN_CHILD, TASK_TRAINING_JOB, TASK_TRAIN_SELECTION, TASK_ADVANCE, TASK_REAP = (
    "train_child",
    "run_training_job",
    "train_selection_run",
    "advance_search",
    "reap",
)


def lease_beats(identities) -> dict[str, datetime]:
    """The latest lease heartbeat of each process among `identities` that holds running
    work (child runs, training jobs, selection runs): one query per kind of leased work."""
    from webapp.searches import models as m

    identities = [i for i in set(identities) if i]
    beats: dict[str, datetime] = {}
    if not identities:
        return beats
    for model in m.LEASED_WORK:
        rows = (
            model.objects.filter(worker__in=identities, status=m.RUN_RUNNING, heartbeat_at__isnull=False)
            .values("worker")
            .annotate(last=Max("heartbeat_at"))
        )
        for row in rows:
            if row["worker"] not in beats or row["last"] > beats[row["worker"]]:
                beats[row["worker"]] = row["last"]
    return beats


def lost_cutoff(now=None) -> datetime:
    """Not heard from since this: lost."""
    return (now or timezone.now()) - timedelta(seconds=LOST_AFTER_SECONDS)


class Worker(models.Model):
    hostname = models.CharField(max_length=255, unique=True, help_text="Celery node name, e.g. gpu0@host")
    queues = models.CharField(max_length=255, blank=True, help_text="comma-separated queues it consumes")
    pid = models.PositiveIntegerField(null=True, blank=True, help_text="its main process")
    device = models.CharField(max_length=255, blank=True, help_text='e.g. "NVIDIA H100 80GB HBM3" or "CPU"')
    status = models.CharField(max_length=20, choices=STATUSES, default=ONLINE, db_index=True)
    started_at = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now, db_index=True, help_text="its main process's heartbeat")
    tasks_done = models.PositiveIntegerField(
        default=0, help_text="training tasks finished by its processes that have since exited"
    )

    class Meta:
        ordering = ["hostname"]

    def __str__(self) -> str:
        return self.hostname

    def last_heard(self, beats: dict[str, datetime] | None = None) -> datetime:
        """Its own heartbeat or the latest lease heartbeat of one of its processes, whichever
        is later. `beats`: lease_beats() of its processes, when the caller has them (else
        one query for its processes and up to three for their leases)."""
        processes = self.processes.all()
        if beats is None:
            beats = lease_beats(p.identity for p in processes)
        mine = [beats[p.identity] for p in processes if p.identity in beats]
        return max([self.last_seen, *mine])

    def shown_status(self, heard: datetime | None = None, now=None) -> str:
        """offline, or else online while heard from within LOST_AFTER_SECONDS and lost
        otherwise (even before the reaper stores it)."""
        if self.status == OFFLINE:
            return OFFLINE
        heard = heard if heard is not None else self.last_heard()
        return ONLINE if heard >= lost_cutoff(now) else LOST

    @property
    def queue_list(self) -> list[str]:
        return [q for q in self.queues.split(",") if q]


class WorkerProcess(models.Model):
    """A process of a worker that runs its tasks; removed when it exits (by itself on a clean
    exit, by its worker's main process when it notices the pool changed, at a restart or a
    clean shutdown)."""

    worker = models.ForeignKey(Worker, on_delete=models.CASCADE, related_name="processes")
    identity = models.CharField(
        max_length=200, unique=True, help_text='"host:pid", as the leases it holds name their owner'
    )
    pid = models.PositiveIntegerField()
    index = models.PositiveIntegerField(null=True, blank=True, help_text="its place in a prefork pool (0, 1, ...)")
    started_at = models.DateTimeField(default=timezone.now)
    # The task in flight: its short name and its first argument (child run, job or selection run id).
    task_name = models.CharField(max_length=100, blank=True)
    task_object_id = models.BigIntegerField(null=True, blank=True)
    task_started_at = models.DateTimeField(null=True, blank=True)
    tasks_done = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["worker_id", "index", "pid"]

    def __str__(self) -> str:
        return self.identity
