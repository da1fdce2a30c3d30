"""Training a child run on a gpu-queue worker: claim, train (or evaluate the synthetic
objective), write the reward once, ask for an advance.

The claim and every later write follow the lease protocol (webapp.searches.models.LeasedWork):
a result is written only while the run is still this claim's, so a run taken away from a
slow worker is never counted twice. Training stops when the search is cancelled or the run
was taken away. An exception is retried (requeued) until NAS_MAX_ATTEMPTS, then failed.
"""

from __future__ import annotations

import logging
import time
import traceback

from django.db import transaction

from nas_engine.genotype import Genotype
from nas_engine.trainer import train_child
from webapp import dispatch
from webapp.live import events as live
from webapp.searches import models as m
from workers import leases
from workers.leases import LeaseReporter, lease_kept, worker_id
from workers.resources import dataset_for, device, objective_for

log = logging.getLogger("nasnet.worker")


def claim(run_id: int) -> m.ChildRun | None:
    return m.ChildRun.claim(run_id, worker_id())


def finish(run: m.ChildRun, status: str, *, reward=None, error: str = "", wall_time=None, epochs=None) -> bool:
    """Write the run's one result, publish it and ask for an advance; False: not ours."""
    fields = dict(reward=reward, error=error, wall_time=wall_time)
    if epochs is not None:
        fields["epochs"] = epochs
    if not run.finish(status, **fields):
        log.warning("child run %s: no longer ours (attempt %d), result dropped", run.pk, run.attempt)
        return False
    arch = run.architecture
    search_id = arch.search_id
    announce_finished(run, search_id, arch.sample_index)
    took = f" after {wall_time:.1f} s" if wall_time is not None else ""
    if status == m.RUN_SUCCEEDED:
        log.info("child run %s of search %s finished: reward %.4f%s", run.pk, search_id, reward, took)
    elif status == m.RUN_FAILED:
        log.warning("child run %s of search %s failed%s: %s", run.pk, search_id, took, error)
    else:
        log.info("child run %s of search %s %s%s: %s", run.pk, search_id, status, took, error)
    dispatch.request_advance(search_id)
    # A run of the team ended, so a slot of its share of the gpu queue is free: the searches
    # the advance held back for it get no result to wake them (advance._team_free).
    for held in _held_back(arch.search.team_id, search_id):
        dispatch.request_advance(held)
    return True


def _held_back(team_id: int, search_id: int) -> list[int]:
    """The team's other searches waiting for a slot of its share (dispatch.hold_back), or,
    without Redis to say, its running searches with nothing queued or running."""
    held = dispatch.take_held_back(team_id)
    if held is None:
        held = (
            m.Search.objects.filter(team_id=team_id, status__in=m.SEARCH_ADVANCING)
            .exclude(architectures__runs__status__in=m.RUN_ACTIVE)
            .values_list("id", flat=True)
        )
    return [other for other in held if other != search_id]


def announce_finished(run: m.ChildRun, search_id: int, sample_index: int) -> None:
    """Store (and send after commit) the run's child.finished event, exactly once.

    The event and ChildRun.announced are written in one transaction, after the result's own:
    a worker killed in between leaves announced false, and the advance that tells the result
    publishes the event instead (advance._announce_missing). The Search row is locked first,
    as every publisher does, so this waits for such an advance rather than deadlocking."""
    with transaction.atomic():
        live.hold_search(search_id)
        if m.ChildRun.objects.filter(pk=run.pk, announced=False).update(announced=True):
            run.announced = True
            live.publish(search_id, *live.finished(run, sample_index), search_held=True)


def retry_or_fail(run: m.ChildRun, error: str) -> None:
    leases.retry_or_fail(
        run, f"child run {run.pk}", error, dispatch.TASK_TRAIN_CHILD, lambda why: finish(run, m.RUN_FAILED, error=why)
    )


def _publish_progress(run: m.ChildRun, epochs: list[dict]) -> None:
    """A child.progress event: the run as its heartbeat just wrote it (LeaseReporter)."""
    run.epochs = list(epochs)
    live.publish(run.architecture.search_id, *live.progress(run, run.architecture.sample_index))


def run_child(run_id: int) -> None:
    run = claim(run_id)
    if run is None:
        log.debug("child run %s: not claimable (taken, finished or cancelled)", run_id)
        return
    arch = run.architecture
    spec = arch.search.parsed_spec
    genotype = Genotype.from_dict(arch.genotype)
    log.info(
        "child run %s (#%d of search %s) started on %s, attempt %d",
        run.pk,
        arch.sample_index,
        arch.search_id,
        run.worker,
        run.attempt,
    )
    start = time.perf_counter()
    label = f"child run {run.pk}"
    try:
        if spec.objective["name"] == "synthetic":
            # Heartbeats while it "trains": a duration_s longer than the lease would
            # otherwise be taken away and retried until it failed, every time.
            with lease_kept(run, label):
                reward = objective_for(spec)(genotype)
            elapsed = time.perf_counter() - start
            if reward is None:
                finish(run, m.RUN_FAILED, error="synthetic failure", wall_time=elapsed)
            else:
                finish(run, m.RUN_SUCCEEDED, reward=reward, wall_time=elapsed)
            return
        reporter = LeaseReporter(run, label, arch.search_id, on_epochs=lambda epochs: _publish_progress(run, epochs))
        # Heartbeats from a thread through every phase, not only per batch: decoding the data
        # set, building the network, and scoring the validation split report no progress.
        with lease_kept(run, label):
            data = dataset_for(spec.dataset, spec.seed)
            result = train_child(genotype, spec.child, data, device=device(), reporter=reporter)
    except Exception as exc:
        log.exception("child run %s: training raised", run.pk)
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        retry_or_fail(run, last)
        return
    epochs = [e.to_dict() for e in result.epochs]
    if result.status == "ok":
        finish(run, m.RUN_SUCCEEDED, reward=result.reward, wall_time=result.wall_time, epochs=epochs)
    elif result.status == "diverged":
        finish(run, m.RUN_FAILED, error=f"diverged: {result.error}", wall_time=result.wall_time, epochs=epochs)
    elif not reporter.lost:  # stopped because the search is cancelling: the advance cancels it
        finish(run, m.RUN_CANCELLED, error="search cancelled", wall_time=result.wall_time, epochs=epochs)
