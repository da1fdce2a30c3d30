"""The workers fleet: one row per Celery worker node, kept fresh by the worker itself.

A worker registers when it is ready, writes `last_seen` every HEARTBEAT_SECONDS from a
heartbeat thread, records the task it is running (task_prerun / task_postrun) and marks
itself offline on a clean shutdown (workers/fleet.py). A worker that stops heartbeating
(killed, machine gone) is shown as lost once it has been silent for LOST_AFTER_SECONDS;
the reaper then stores that and logs it once.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import models
from django.utils import timezone

ONLINE, OFFLINE, LOST = "online", "offline", "lost"
STATUSES = [(s, s.capitalize()) for s in (ONLINE, OFFLINE, LOST)]
HEARTBEAT_SECONDS = 10.0
LOST_AFTER_SECONDS = 3 * HEARTBEAT_SECONDS

# task_name values: the short names of workers.tasks
TASK_TRAIN_CHILD, TASK_TRAINING_JOB, TASK_ADVANCE, TASK_REAP = (
    "train_child",
    "run_training_job",
    "advance_search",
    "reap",
)


class Worker(models.Model):
    hostname = models.CharField(max_length=255, unique=True, help_text="Celery node name, e.g. gpu0@host")
    queues = models.CharField(max_length=255, blank=True, help_text="comma-separated queues it consumes")
    pid = models.PositiveIntegerField(null=True, blank=True)
    device = models.CharField(max_length=255, blank=True, help_text='e.g. "NVIDIA H100 80GB HBM3" or "CPU"')
    status = models.CharField(max_length=20, choices=STATUSES, default=ONLINE, db_index=True)
    started_at = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now, db_index=True)
    # The task in flight: its short name and its first argument (child run, job or search id).
    task_name = models.CharField(max_length=100, blank=True)
    task_object_id = models.BigIntegerField(null=True, blank=True)
    task_started_at = models.DateTimeField(null=True, blank=True)
    tasks_done = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["hostname"]

    def __str__(self) -> str:
        return self.hostname

    @property
    def is_stale(self) -> bool:
        return self.last_seen < timezone.now() - timedelta(seconds=LOST_AFTER_SECONDS)

    @property
    def shown_status(self) -> str:
        """online, offline or lost; an online row that stopped heartbeating is lost even
        before the reaper stores it."""
        if self.status == ONLINE and self.is_stale:
            return LOST
        return self.status

    @property
    def queue_list(self) -> list[str]:
        return [q for q in self.queues.split(",") if q]
