"""The periodic reaper (beat, every NAS_REAPER_INTERVAL_SECONDS): what makes the service
durable. The rows say what should be happening; the reaper makes it so.

- leases that ran out (a worker died or stalled): queued again, or failed after
  NAS_MAX_ATTEMPTS (LeasedWork.expire_leases), for child runs, training jobs and
  selection runs alike;
- queued child runs, selection runs and training jobs whose message was lost (a flushed Redis, a publish
  that failed): dispatched again, once the gpu queue has drained so that a run merely
  waiting its turn is not sent twice;
- searches that stall (queued, cancelling, or running with nothing active) and searches
  with children waiting for an early-stopping decision (workers/rungs.py): advanced;
- workers silent for too long: marked lost on the staff workers page.
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from webapp import dispatch
from webapp.searches import models as m
from workers import child_runs, fleet, selection_runs

log = logging.getLogger("nasnet.worker")


def reap() -> dict:
    """Requeue expired leases, re-dispatch lost messages, re-kick stalled searches."""
    dispatch.ensure_queues()
    now = timezone.now()
    kicked: set[int] = set()
    with transaction.atomic():
        requeued_runs, failed_runs = m.ChildRun.expire_leases(now)
        for run in requeued_runs:
            log.warning(
                "child run %s: lease expired (worker %s, attempt %d), requeued", run.id, run.worker, run.attempt
            )
        archs = m.Architecture.objects.filter(id__in=[run.architecture_id for run in failed_runs])
        where = {a: (s, i) for a, s, i in archs.values_list("id", "search_id", "sample_index")}
        # (run, search id, sample index) of each run given up, for its child.finished event
        given_up = [(run, *where[run.architecture_id]) for run in failed_runs if run.architecture_id in where]
        for run in failed_runs:
            log.warning("child run %s failed: %s", run.id, run.error)
        kicked.update(search_id for _, search_id, _ in given_up)

        requeued_selection_runs, failed_selection_runs = m.SelectionRun.expire_leases(now)
        for run in requeued_selection_runs:
            log.warning("selection run %s: lease expired (attempt %d), requeued", run.id, run.attempt)

        # While the gpu queue still holds messages, a row may just be waiting its turn:
        # re-dispatch once it has drained (an emptied Redis has an empty queue).
        drained = dispatch.queue_length(dispatch.QUEUE_GPU) == 0
        redispatched = m.ChildRun.lost_messages(now) if drained else []
        selection_redispatched = m.SelectionRun.lost_messages(now) if drained else []
        jobs_redispatched = m.TrainingJob.lost_messages(now) if drained else []

        requeued_jobs, failed_jobs = m.TrainingJob.expire_leases(now)
        for job in requeued_jobs:
            log.warning("training job %s: lease expired (attempt %d), requeued", job.id, job.attempt)
        for job in failed_jobs:
            log.warning("training job %s failed: %s", job.id, job.error)

        runs = m.ChildRun.objects.filter(architecture__search=OuterRef("pk"))
        stalled = (
            m.Search.objects.annotate(
                has_active=Exists(runs.filter(status__in=m.RUN_ACTIVE)),
                has_waiting=Exists(runs.filter(status=m.RUN_WAITING)),
            )
            .filter(
                Q(status__in=(m.QUEUED, m.CANCELLING))
                | Q(status=m.RUNNING, has_active=False)
                | Q(status=m.RUNNING, has_waiting=True)
            )
            .values_list("id", flat=True)
        )
        kicked.update(stalled)
        requeued = [run.id for run in requeued_runs]
        for run_id in requeued + redispatched:
            dispatch.send_on_commit(dispatch.TASK_TRAIN_CHILD, run_id)
        for search_id in sorted(kicked):
            dispatch.send_on_commit(dispatch.TASK_ADVANCE, search_id)
        for job_id in [job.id for job in requeued_jobs] + jobs_redispatched:
            dispatch.send_on_commit(dispatch.TASK_TRAIN_JOB, job_id)
        for run_id in [run.id for run in requeued_selection_runs] + selection_redispatched:
            dispatch.send_on_commit(dispatch.TASK_TRAIN_SELECTION, run_id)
    # After the transaction: publishing locks the Search row, which an advance may hold
    # while it waits for the child runs locked above. Stopped in between, the advance that
    # tells these runs publishes their events instead (ChildRun.announced).
    for run, search_id, sample_index in given_up:
        child_runs.announce_finished(run, search_id, sample_index)
    for selection_id in sorted({run.selection_id for run in failed_selection_runs}):
        selection_runs.settle(selection_id)  # a run given up may have been the last one
    if redispatched or selection_redispatched or jobs_redispatched:
        log.warning(
            "child runs %s, selection runs %s, training jobs %s: queued with no message for a lease "
            "(a lost message), dispatched again",
            redispatched,
            selection_redispatched,
            jobs_redispatched,
        )
    return {
        "requeued": requeued,
        "failed": [run.id for run in failed_runs],
        "redispatched": redispatched,
        "kicked": sorted(kicked),
        "jobs_requeued": [job.id for job in requeued_jobs],
        "jobs_redispatched": jobs_redispatched,
        "selection_runs_requeued": [run.id for run in requeued_selection_runs],
        "selection_runs_redispatched": selection_redispatched,
        "workers_lost": fleet.mark_lost_workers(),
    }
