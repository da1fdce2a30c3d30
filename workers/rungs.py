"""Early stopping in the service: the decision for a child run after a decision epoch (a
rung), taken from the rows, once, in ask order (nas_engine.early_stopping).

A worker that finished a decision epoch writes the epoch's value (ChildRun.epochs) and asks
`decide`. Under the Search row lock, the one every writer of a search takes first, it
decides in sample_index order every child at that epoch that can be decided (its value is
written, and every child before it has been decided there or ended below it), storing a
RungDecision row for each, until it reaches the asking child or a child in the way. So:

- the peers of child i at epoch t are exactly the children asked before it that reached t,
  whatever order results arrive in and whichever worker asks, and the decisions equal the
  engine's Board on the same values (tests/test_rungs.py);
- a decision is taken once: a worker that asks again (after a crash, a resume from its
  checkpoint, or a restart from scratch that trained the epoch again) reads the stored row,
  so a killed worker, a restarted controller or an emptied Redis changes no decision;
- a child that cannot be decided yet waits on its worker while the child in its way is
  training (polling, heartbeating) for up to NAS_RUNG_WAIT_SECONDS; when the child in its
  way is not training (queued behind it on a full gpu queue, or itself waiting) or the wait
  runs out, it gives its worker back (`ChildRun.park`: status `waiting`, its checkpoint
  kept). Waiting on the worker without that limit could deadlock: every worker holding a
  child that waits for one still in the queue. The advance (`settle_waiting`) takes the
  decision of a waiting child once it can: a stop ends it as `stopped`, a go-on queues it
  again and it resumes from its checkpoint (or retrains from scratch, getting the stored
  decisions). The reaper kicks searches with waiting children, so nothing waits forever.

A child that was skipped as ended below an epoch and trains again later (a failed run
requeued by its owner) is decided alone when it gets there, against the children before it.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from nas_engine.early_stopping import EarlyStop, decision_epochs, peer_statistic
from nas_engine.early_stopping import decide as rule_decision
from webapp import dispatch
from webapp.searches import models as m

log = logging.getLogger("nasnet.worker")

CONTINUE, STOP, PARK, LOST = "continue", "stop", "park", "lost"
POLL_SECONDS = 1.0


def values_of(epochs: object) -> list[float]:
    """The validation values of a run's per-epoch rows, from epoch 1."""
    if not isinstance(epochs, list):
        return []
    return [float(e["val_acc"]) for e in epochs if isinstance(e, dict) and e.get("val_acc") is not None]


@dataclass(frozen=True)
class Verdict:
    """A decision (None: not yet decidable) and, then, the first child in its way as
    (sample index, run status)."""

    decision: m.RungDecision | None
    blocker: tuple[int, str] | None = None


def decide(search_id: int, early_stop: EarlyStop, index: int, epoch: int) -> Verdict:
    """The decision for child `index` after `epoch` (its value there must be written), taking
    every decision in index order that the rows allow on the way. See the module doc."""
    with transaction.atomic():
        list(m.Search.objects.select_for_update(of=("self",)).filter(pk=search_id).values_list("id"))
        decided = m.RungDecision.objects.filter(search_id=search_id, epoch=epoch)
        found = decided.filter(sample_index=index).first()
        if found is not None:
            return Verdict(found)
        last = decided.aggregate(last=Max("sample_index"))["last"]
        start = 0 if last is None else last + 1
        if index < start:  # passed over as ended, and trained again since
            return Verdict(_decide_late(search_id, early_stop, index, epoch))
        peers = sorted(decided.values_list("statistic", flat=True))
        runs = (
            m.ChildRun.objects.filter(
                architecture__search_id=search_id,
                architecture__sample_index__gte=start,
                architecture__sample_index__lte=index,
                # A duplicate stopped again without training carries its original's rows
                # but is no peer (the local loop's Board leaves reused children out too).
                architecture__reused_from__isnull=True,
            )
            .order_by("architecture__sample_index")
            .values_list("architecture__sample_index", "status", "epochs")
        )
        new: list[m.RungDecision] = []
        blocker = None
        for sample_index, status, epochs in runs:
            values = values_of(epochs)
            if len(values) >= epoch:
                new.append(_row(search_id, early_stop, sample_index, values, epoch, peers))
                bisect.insort(peers, new[-1].statistic)
            elif status not in m.RUN_DONE:
                blocker = (sample_index, status)
                break
        m.RungDecision.objects.bulk_create(new)
        mine = new[-1] if new and new[-1].sample_index == index else None
        return Verdict(mine, None if mine is not None else blocker)


def _decide_late(search_id: int, early_stop: EarlyStop, index: int, epoch: int) -> m.RungDecision:
    peers = sorted(
        m.RungDecision.objects.filter(search_id=search_id, epoch=epoch, sample_index__lt=index).values_list(
            "statistic", flat=True
        )
    )
    epochs = m.ChildRun.objects.filter(architecture__search_id=search_id, architecture__sample_index=index).values_list(
        "epochs", flat=True
    )
    row = _row(search_id, early_stop, index, values_of(epochs.first()), epoch, peers)
    row.save()
    return row


def _row(search_id: int, early_stop: EarlyStop, index: int, values: list[float], epoch: int, peers) -> m.RungDecision:
    decision = rule_decision(early_stop, values, epoch, peers)
    return m.RungDecision(
        search_id=search_id,
        sample_index=index,
        epoch=epoch,
        statistic=peer_statistic(early_stop, values, epoch),
        value=decision.value,
        threshold=decision.threshold,
        peers=decision.peers,
        stop=decision.stop,
    )


class Gate:
    """A worker's side for one child run: after each decision epoch, `ask` whether it goes
    on (CONTINUE), ends here (STOP), gives its worker back to wait as a row (PARK), or was
    taken away meanwhile (LOST)."""

    def __init__(self, run: m.ChildRun, early_stop: EarlyStop, max_epochs: int):
        self.run, self.early_stop = run, early_stop
        self.epochs = frozenset(decision_epochs(early_stop, max_epochs))
        self.search_id = run.architecture.search_id
        self.index = run.architecture.sample_index

    def ask(self, epoch: int, keep_alive: Callable[[], bool] | None = None) -> str:
        """Wait for the decision after `epoch` (written already) while the child in the way
        trains, for at most NAS_RUNG_WAIT_SECONDS; `keep_alive()` heartbeats (False: lost)."""
        keep_alive = keep_alive or self.run.heartbeat
        deadline = time.monotonic() + settings.NAS_RUNG_WAIT_SECONDS
        while True:
            verdict = decide(self.search_id, self.early_stop, self.index, epoch)
            if verdict.decision is not None:
                # Deciding may have decided children after it that wait as rows: the advance
                # settles them now rather than at the next result or reaper tick.
                if m.ChildRun.objects.filter(architecture__search_id=self.search_id, status=m.RUN_WAITING).exists():
                    dispatch.request_advance(self.search_id)
                return STOP if verdict.decision.stop else CONTINUE
            training = verdict.blocker is not None and verdict.blocker[1] == m.RUN_RUNNING
            if not training or time.monotonic() >= deadline:
                log.info(
                    "child run %s (#%d) at epoch %d: its decision waits for #%s (%s); giving the worker back",
                    self.run.pk,
                    self.index,
                    epoch,
                    *(verdict.blocker or ("?", "?")),
                )
                return PARK
            time.sleep(POLL_SECONDS)
            if not keep_alive():
                return LOST


def settle_waiting(search: m.Search, early_stop: EarlyStop) -> tuple[list[m.ChildRun], list[int]]:
    """In the advance (Search row locked): decide the search's waiting runs where their rows
    allow. Returns (runs now stopped, ids of runs queued again to be dispatched)."""
    waiting = list(
        m.ChildRun.objects.filter(architecture__search=search, status=m.RUN_WAITING)
        .select_related("architecture")
        .order_by("architecture__sample_index")
    )
    stopped, queued = [], []
    started = time.monotonic()
    for run in waiting:
        values = values_of(run.epochs)
        verdict = decide(search.id, early_stop, run.architecture.sample_index, len(values))
        if verdict.decision is None:
            continue
        if verdict.decision.stop:
            run.status, run.reward, run.error = m.RUN_STOPPED, values[-1], ""
            run.finished_at = timezone.now()
            run.save(update_fields=["status", "reward", "error", "finished_at"])
            stopped.append(run)
        else:
            # Not a new attempt: parking is not a failure, so the resumed claim is counted
            # as the same one (NAS_MAX_ATTEMPTS bounds failures, not rungs).
            m.ChildRun.objects.filter(pk=run.pk, status=m.RUN_WAITING).update(
                status=m.RUN_QUEUED, attempt=max(run.attempt - 1, 0), dispatched_at=timezone.now()
            )
            queued.append(run.pk)
    if waiting:
        log.info(
            "search %s: %d waiting children, %d stopped, %d queued again (%.0f ms)",
            search.id,
            len(waiting),
            len(stopped),
            len(queued),
            1000 * (time.monotonic() - started),
        )
    return stopped, queued
