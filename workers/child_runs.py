"""Training a child run on a gpu-queue worker: claim, train (or evaluate the synthetic
objective), write the reward once, ask for an advance.

The claim and every later write follow the lease protocol (webapp.searches.models.LeasedWork):
a result is written only while the run is still this claim's, so a run taken away from a
slow worker is never counted twice. Training stops when the search is cancelled or the run
was taken away. An exception is retried (requeued) until NAS_MAX_ATTEMPTS, then failed.

With early stopping (the spec's `early_stop`), the run asks after each decision epoch
whether to go on (workers/rungs.py): it ends as `stopped` with its value at that rung, goes
on, or gives its worker back to wait for its decision as a row (`waiting`); a real child
then writes a checkpoint after every epoch (NAS_ARTIFACTS_ROOT/checkpoints/child-<id>.pt,
removed when the run ends) so that it resumes where it stopped waiting.
"""

from __future__ import annotations

import logging
import time
import traceback

from django.db import transaction

from nas_engine.genotype import Genotype
from nas_engine.spec import SearchSpec
from nas_engine.trainer import EpochMetrics, train_child
from webapp import dispatch
from webapp.live import events as live
from webapp.searches import models as m
from workers import leases, rungs
from workers.leases import LeaseReporter, lease_kept, worker_id
from workers.resources import checkpoint_path, dataset_for, device, objective_for

log = logging.getLogger("nasnet.worker")


def claim(run_id: int) -> m.ChildRun | None:
    return m.ChildRun.claim(run_id, worker_id())


def finish(
    run: m.ChildRun, status: str, *, reward=None, error: str = "", wall_time=None, epochs=None, discarded: int = 0
) -> bool:
    """Write the run's one result, publish it and ask for an advance; False: not ours.
    `wall_time`: this claim's; `discarded`: epochs of earlier attempts this one trained again."""
    wall_time = _wall_so_far(run, wall_time)
    fields = dict(reward=reward, error=error, wall_time=wall_time)
    if epochs is not None:
        fields["epochs"] = epochs
    if discarded:
        fields["epochs_discarded"] = run.epochs_discarded + discarded
    if not run.finish(status, **fields):
        log.warning("child run %s: no longer ours (attempt %d), result dropped", run.pk, run.attempt)
        return False
    checkpoint_path("child", run.pk).unlink(missing_ok=True)  # early stopping's, if any
    arch = run.architecture
    search_id = arch.search_id
    announce_finished(run, search_id, arch.sample_index)
    took = f" after {wall_time:.1f} s" if wall_time is not None else ""
    if status == m.RUN_SUCCEEDED:
        log.info("child run %s of search %s finished: reward %.4f%s", run.pk, search_id, reward, took)
    elif status == m.RUN_FAILED:
        log.warning("child run %s of search %s failed%s: %s", run.pk, search_id, took, error)
    elif status == m.RUN_STOPPED:
        rung = len(run.epochs)
        log.info("child run %s of search %s stopped after epoch %d: %.4f%s", run.pk, search_id, rung, reward, took)
    else:
        log.info("child run %s of search %s %s%s: %s", run.pk, search_id, status, took, error)
    dispatch.request_advance(search_id)
    wake_held_back(arch.search.team_id, search_id)
    return True


def _wall_so_far(run: m.ChildRun, wall_time: float | None) -> float | None:
    """This claim's wall time plus that of the claims before it that parked at a rung (a
    running row has a wall_time only from a park: a result is written once)."""
    if wall_time is None or run.wall_time is None:
        return wall_time
    return run.wall_time + wall_time


def _discarded(run_epochs: int, reporter: LeaseReporter) -> int:
    """Epochs an earlier attempt wrote that this one trained again: all of them after a
    restart from scratch, those after the checkpoint it resumed from otherwise."""
    return max(run_epochs - reporter.resumed_at, 0)


def wake_held_back(team_id: int, search_id: int) -> None:
    """A run of the team ended, so a slot of its share of the gpu queue is free: the searches
    the advance held back for it get no result to wake them (advance._team_free)."""
    for held in _held_back(team_id, search_id):
        dispatch.request_advance(held)


def drop_checkpoint_if_ended(run_id: int) -> None:
    """Remove a child run's early-stopping checkpoint once the run has a final status (nobody
    resumes it); a run queued or held by another worker keeps it."""
    if m.ChildRun.objects.filter(pk=run_id, status__in=m.RUN_DONE).exists():
        checkpoint_path("child", run_id).unlink(missing_ok=True)


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
    gate = rungs.Gate(run, spec.early_stop, spec.child.epochs) if spec.early_stop.active else None
    try:
        if spec.objective["name"] == "synthetic":
            if gate is not None:
                _play_curve(run, spec, genotype, gate, label)
                return
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
        on_epochs = lambda epochs: _publish_progress(run, epochs)  # noqa: E731
        if gate is None:
            reporter = LeaseReporter(run, label, arch.search_id, on_epochs=on_epochs)
        else:
            reporter = RungReporter(run, label, arch.search_id, gate, on_epochs=on_epochs)
        checkpoint = checkpoint_path("child", run.pk) if gate is not None else None
        earlier = len(run.epochs) if isinstance(run.epochs, list) else 0  # an earlier attempt's rows
        # Heartbeats from a thread through every phase, not only per batch: decoding the data
        # set, building the network, and scoring the validation split report no progress.
        with lease_kept(run, label):
            data = dataset_for(spec.dataset, spec.seed)
            result = train_child(genotype, spec.child, data, device=device(), reporter=reporter, checkpoint=checkpoint)
    except Exception as exc:
        log.exception("child run %s: training raised", run.pk)
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        retry_or_fail(run, last)
        return
    epochs = [e.to_dict() for e in result.epochs]
    spent = {"wall_time": result.wall_time, "epochs": epochs, "discarded": _discarded(earlier, reporter)}
    if gate is not None and reporter.verdict is not None:
        _conclude_at_rung(run, *reporter.verdict, **spent)
    elif result.status == "ok":
        finish(run, m.RUN_SUCCEEDED, reward=result.reward, **spent)
    elif result.status == "diverged":
        finish(run, m.RUN_FAILED, error=f"diverged: {result.error}", **spent)
    elif not reporter.lost:  # stopped because the search is cancelling: the advance cancels it
        finish(run, m.RUN_CANCELLED, error="search cancelled", **spent)
        checkpoint_path("child", run.pk).unlink(missing_ok=True)
    elif checkpoint is not None:  # taken away: ended (search cancelled or failed), or reclaimed
        drop_checkpoint_if_ended(run.pk)


class RungReporter(LeaseReporter):
    """LeaseReporter that asks the gate after each decision epoch (its value written first,
    as the decision reads it from the row) and stops training on stop, park or loss.
    `verdict`: (STOP or PARK, epoch), once there is one."""

    def __init__(self, run: m.ChildRun, label: str, search_id: int, gate: rungs.Gate, on_epochs=None):
        super().__init__(run, label, search_id, on_epochs=on_epochs)
        self.gate = gate
        self.verdict: tuple[str, int] | None = None

    def on_epoch(self, metrics: EpochMetrics) -> None:
        super().on_epoch(metrics)
        if metrics.epoch in self.gate.epochs:
            if self.dirty:  # the decision reads the value from the row: written first
                self._maybe_beat(force=True)
            self._ask(metrics.epoch)

    def on_resume(self, epoch: int, history: list[EpochMetrics]) -> None:
        """Resumed from the checkpoint after `epoch`: the decisions up to there come first (a
        waiting run's own, or those of a run whose worker died at a rung)."""
        super().on_resume(epoch, history)
        for rung in sorted(e for e in self.gate.epochs if e <= epoch):
            self._ask(rung)
            if self.verdict is not None or self.lost:
                return

    def _ask(self, epoch: int) -> None:
        if self.lost or self.verdict is not None:
            return
        outcome = self.gate.ask(epoch)
        if outcome == rungs.LOST:
            self.lost = True
        elif outcome != rungs.CONTINUE:
            self.verdict = (outcome, epoch)

    def should_stop(self) -> bool:
        return super().should_stop() or self.verdict is not None


def _play_curve(run: m.ChildRun, spec: SearchSpec, genotype: Genotype, gate: rungs.Gate, label: str) -> None:
    """The synthetic objective's learning curve (SyntheticObjective.train), with the rung
    decisions. The curve is a function of the cell, so a run that waited continues after the
    epochs it wrote instead of playing them again."""
    start = time.perf_counter()
    objective, total = objective_for(spec), spec.child.epochs
    done = min(len(rungs.values_of(run.epochs)), total)
    epochs = list(run.epochs[:done])
    outcome, at = rungs.CONTINUE, 0

    def on_epoch(epoch: int, value: float) -> bool:
        nonlocal outcome, at
        epochs.append({"epoch": epoch, "epochs": total, "val_acc": value})
        if epoch not in gate.epochs:
            return True
        if not run.heartbeat(epochs=list(epochs)):
            outcome = rungs.LOST
            return False
        _publish_progress(run, epochs)
        outcome, at = gate.ask(epoch), epoch
        return outcome == rungs.CONTINUE

    reward = None
    with lease_kept(run, label):
        for rung in sorted(e for e in gate.epochs if e <= done):  # decisions it already asked for
            outcome, at = gate.ask(rung), rung
            if outcome != rungs.CONTINUE:
                break
        if outcome == rungs.CONTINUE:
            reward = objective.train(genotype, total, on_epoch, start=done)
    elapsed = time.perf_counter() - start
    if outcome != rungs.CONTINUE:
        _conclude_at_rung(run, outcome, at, epochs=epochs, wall_time=elapsed)
    elif reward is None:
        finish(run, m.RUN_FAILED, error="synthetic failure", wall_time=elapsed)
    else:
        finish(run, m.RUN_SUCCEEDED, reward=reward, wall_time=elapsed, epochs=epochs)


def _conclude_at_rung(
    run: m.ChildRun, outcome: str, at: int, *, epochs: list[dict], wall_time: float, discarded: int = 0
) -> None:
    """A run that asked at a rung and does not go on: stopped there, waiting as a row, or
    taken away meanwhile (whoever has it now goes on)."""
    if outcome == rungs.STOP:
        kept = epochs[:at]
        value = rungs.values_of(kept)[-1]
        if not finish(run, m.RUN_STOPPED, reward=value, wall_time=wall_time, epochs=kept, discarded=discarded):
            drop_checkpoint_if_ended(run.pk)
    elif outcome == rungs.PARK:
        if run.park(epochs[:at], _wall_so_far(run, wall_time), run.epochs_discarded + discarded):
            # Its decision may have been taken between asking and parking: the advance looks.
            dispatch.request_advance(run.architecture.search_id)
        else:
            log.warning("child run %s: no longer ours at epoch %d, not parked", run.pk, at)
            drop_checkpoint_if_ended(run.pk)
    else:
        log.warning("child run %s: taken away at epoch %d while waiting for its decision", run.pk, at)
        drop_checkpoint_if_ended(run.pk)
