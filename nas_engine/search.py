"""The search loop: ask the strategy, evaluate children, tell rewards, checkpoint.

    summary = run_search(make_strategy("ppo", space, {}, seed=0), SyntheticObjective(space),
                         children=500, parallel=4, checkpoint_path="search.pt")

- Up to `parallel` proposals are outstanding: the loop asks for new ones before earlier
  ones are told, as parallel workers would. With parallel > 1, `evaluate` runs in a pool of
  `parallel` threads (it must be thread-safe); results are told in FIFO order (ask order)
  whatever order they finish in, so a run is reproducible.
- `evaluate(genotype)` returns the reward, or None (or a non-finite number) for a failed
  child, which the strategy gets as `tell_failure`. An exception propagates: the last
  checkpoint is intact and the search can be resumed.
- Duplicates (same `canonical_hash()`) reuse the reward already measured (status
  "reused"): told to the strategy, counted as a child, not trained again. A duplicate of a
  child still being evaluated waits for it. Failures are not reused: a duplicate of a
  failed child is evaluated again (the failure may have been transient).
- Every child (ok, reused, failed or stopped) counts towards `children`; `history` holds
  the final rewards of the children that have one, in order.
- Early stopping (`nas_engine.early_stopping`): given `epochs` (the children's full
  training), `evaluate(genotype, report)` must call `report(epoch, value)` after every
  epoch with the validation value and stop training when it returns False. `early_stop`
  chooses the rule (default none: every child trains in full). A child's decision waits
  until every child asked before it has reached that epoch or ended below it (in its
  pool thread; the earliest child never waits), so the same search stops the same
  children whatever the thread timing. A stopped child is told its value at the rung
  with a `Fidelity` (status "stopped"); `history`, `best_reward` and
  `mean_reward_last_100` hold final-epoch rewards only: a rung value is never "best".
  `epochs_trained` counts the epochs children actually trained (reused ones: none).
  A duplicate of a stopped child is reused as stopped at the same rung.
- With `checkpoint_path`, a checkpoint is written after every tell (atomically): the
  strategy's state and, next to it, the loop's own (counters, history, best, the rewards
  by hash, elapsed time, and with early stopping its settings and the told children's
  values up to their last decision epoch, which later decisions rest on). `resume=True`
  continues from it: proposals that were outstanding are evaluated again, then the loop
  goes on, and it ends exactly where an uninterrupted run would have. Without `resume`,
  an existing checkpoint is an error (never silently overwritten). The strategy passed
  in must be built from the same spec (name, settings, space) as the checkpointed one,
  and the early stopping and epochs must be the checkpoint's. Checkpoints of loop state
  version 1 (before early stopping) load as searches without it; their `epochs_trained`
  is unknown (None).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nas_engine.early_stopping import Board, EarlyStop, check_epochs, decision_epochs, fidelity
from nas_engine.genotype import Genotype
from nas_engine.strategies.base import (
    Fidelity,
    Proposal,
    Strategy,
    StrategyError,
    UpdateStats,
    read_checkpoint,
    restore_into,
    save_checkpoint,
)

LOOP_STATE_VERSION = 2  # 2: early stopping; version 1 still loads


@dataclass
class ChildResult:
    proposal_id: int
    genotype: Genotype
    reward: float | None  # a stopped child's: its value at the rung it reached
    status: str  # "ok" | "failed" | "reused" | "stopped"
    epochs: int | None = None  # epochs trained (0: reused); None: the loop was not given `epochs`
    fidelity: Fidelity | None = None  # as told to the strategy, with early stopping on

    @property
    def stopped(self) -> bool:
        return self.fidelity is not None and self.fidelity.stopped


@dataclass
class SearchSummary:
    best_reward: float | None  # the best final-epoch reward; never a stopped child's rung value
    best_genotype: Genotype | None
    mean_reward_last_100: float | None
    children: int
    history: list[float]  # final-epoch rewards, in the order told
    duration: float  # seconds, summed over resumed sessions
    failed: int = 0
    reused: int = 0
    stopped: int = 0  # told at a rung (trained or reused)
    epochs_trained: int | None = None  # None: unknown (no `epochs`, or a version 1 checkpoint)

    @property
    def completed(self) -> int:
        """Children told a final-epoch reward (trained in full or reused)."""
        return self.children - self.failed - self.stopped


@dataclass
class _LoopState:
    children: int = 0
    failed: int = 0
    reused: int = 0
    history: list[float] = field(default_factory=list)
    best_reward: float | None = None
    best_genotype: dict | None = None
    rewards_by_hash: dict[str, float] = field(default_factory=dict)
    elapsed: float = 0.0
    # Version 2: early stopping.
    stopped: int = 0
    epochs_trained: int | None = 0
    epochs: int | None = None
    early_stop: dict | None = None
    rungs_by_hash: dict[str, list] = field(default_factory=dict)  # [[epoch, value], ...]; stopped if no reward
    told_rows: list[int] = field(default_factory=list)  # the board of told children: index,
    told_lengths: list[int] = field(default_factory=list)  # its number of values kept,
    told_values: list[float] = field(default_factory=list)  # and the values, concatenated

    def to_dict(self) -> dict:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        # Tensors: pickling a long list of floats after every tell costs far more.
        data["told_rows"] = torch.tensor(self.told_rows, dtype=torch.int64)
        data["told_lengths"] = torch.tensor(self.told_lengths, dtype=torch.int64)
        data["told_values"] = torch.tensor(self.told_values, dtype=torch.float64)
        return {"version": LOOP_STATE_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict) -> _LoopState:
        if not isinstance(data, dict) or data.get("version") not in (1, LOOP_STATE_VERSION):
            raise StrategyError("checkpoint.loop", "missing or of an unknown version")
        version1 = ("children", "failed", "reused", "history", "best_reward", "best_genotype", "rewards_by_hash")
        try:
            state = cls(**{k: data[k] for k in (*version1, "elapsed")})
            if data["version"] == 1:
                state.epochs_trained = None  # nobody counted them
                return state
            for key in ("stopped", "epochs_trained", "epochs", "early_stop", "rungs_by_hash"):
                setattr(state, key, data[key])
            for key in ("told_rows", "told_lengths", "told_values"):
                setattr(state, key, data[key].tolist())
        except KeyError as exc:
            raise StrategyError("checkpoint.loop", f"missing {exc}") from None
        return state

    def record(self, genotype: Genotype, result: ChildResult) -> None:
        self.children += 1
        self.failed += result.status == "failed"
        self.reused += result.status == "reused"
        self.stopped += result.stopped
        if self.epochs_trained is not None:
            self.epochs_trained = None if result.epochs is None else self.epochs_trained + result.epochs
        if result.reward is not None and not result.stopped:
            self.history.append(result.reward)
            if self.best_reward is None or result.reward > self.best_reward:
                self.best_reward, self.best_genotype = result.reward, genotype.to_dict()

    def remember(self, h: str, result: ChildResult) -> None:
        """A trained child's result, for its duplicates (failures are not reused)."""
        if result.status == "ok":
            self.rewards_by_hash[h] = result.reward
        if result.fidelity is not None and result.status in ("ok", "stopped"):
            self.rungs_by_hash[h] = [list(pair) for pair in result.fidelity.rungs]

    def known(self, h: str) -> bool:
        return h in self.rewards_by_hash or h in self.rungs_by_hash

    def board_rows(self) -> list[tuple[int, list[float], bool]]:
        rows, start = [], 0
        for index, length in zip(self.told_rows, self.told_lengths):
            rows.append((index, self.told_values[start : start + length], True))
            start += length
        return rows

    def summary(self) -> SearchSummary:
        last = self.history[-100:]
        return SearchSummary(
            best_reward=self.best_reward,
            best_genotype=None if self.best_genotype is None else Genotype.from_dict(self.best_genotype),
            mean_reward_last_100=sum(last) / len(last) if last else None,
            children=self.children,
            history=list(self.history),
            duration=self.elapsed,
            failed=self.failed,
            reused=self.reused,
            stopped=self.stopped,
            epochs_trained=self.epochs_trained,
        )


class SearchAborted(RuntimeError):
    """Raised in a child's thread waiting for a decision when the search ends without it."""


class _Reporter:
    """`report(epoch, value) -> go on?` for one child, deciding through the shared board."""

    def __init__(self, stopping: _Stopping, index: int):
        self.stopping, self.index = stopping, index
        self.stopped_at: int | None = None

    def __call__(self, epoch: int, value: float) -> bool:
        st = self.stopping
        with st.cond:
            if st.aborted:
                raise SearchAborted("the search ended")
            if self.stopped_at is not None:
                raise ValueError(f"child {self.index} was stopped after epoch {self.stopped_at}; it must not go on")
            reached = st.board.report(self.index, value)
            if epoch != reached:
                raise ValueError(f"child {self.index} reported epoch {epoch}, expected epoch {reached}")
            st.cond.notify_all()
            while (decision := st.board.decision(self.index, epoch)) is None:
                st.cond.wait()
                if st.aborted:
                    raise SearchAborted("the search ended")
            if decision.stop:
                self.stopped_at = epoch
                st.board.end(self.index)
                st.cond.notify_all()
            return not decision.stop


class _Stopping:
    """The board of child values behind a lock that pool threads wait on."""

    def __init__(self, settings: EarlyStop, epochs: int, rows: list):
        self.settings, self.epochs = settings, epochs
        self.board = Board.from_rows(settings, epochs, rows)
        self.cond = threading.Condition()
        self.aborted = False
        self._next = 0  # every index below it is on the board

    def open(self, index: int, ended: bool) -> None:
        with self.cond:
            # Ids the loop never saw (a strategy asked before this search) are nobody's peers.
            for gap in range(self._next, index):
                if not self.board.has(gap):
                    self.board.end(gap)
            self._next = max(self._next, index + 1)
            self.board.open(index)
            if ended:
                self.board.end(index)
                self.cond.notify_all()

    def end(self, index: int) -> None:
        with self.cond:
            self.board.end(index)
            self.cond.notify_all()

    def values(self, index: int) -> list[float]:
        with self.cond:
            return self.board.values(index)

    def abort(self) -> None:
        with self.cond:
            self.aborted = True
            self.cond.notify_all()


@dataclass
class _Outcome:
    raw: object  # what evaluate returned
    values: list[float] | None = None  # per epoch, with `epochs`
    stopped_at: int | None = None


@dataclass
class _Slot:
    """An outstanding proposal: being evaluated (future), or waiting to reuse a reward."""

    proposal: Proposal
    hash: str
    future: Future | None = None
    reuse: bool = False  # a result for its hash is known, or will be when an earlier slot is told


def run_search(
    strategy: Strategy,
    evaluate: Callable[..., float | None],
    *,
    children: int,
    parallel: int = 1,
    reuse_duplicates: bool = True,
    on_result: Callable[[ChildResult], None] | None = None,
    on_update: Callable[[UpdateStats], None] | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = False,
    epochs: int | None = None,
    early_stop: EarlyStop | None = None,
) -> SearchSummary:
    """Run (or resume) a search until `children` children have been told. See the module doc."""
    for name, value, low in (("children", children, 0), ("parallel", parallel, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise StrategyError(f"search.{name}", f"must be an integer >= {low}, got {value!r}")
    settings = early_stop or EarlyStop()
    if epochs is not None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise StrategyError("search.epochs", f"must be an integer >= 1, got {epochs!r}")
        check_epochs(settings, epochs)
    elif settings.active:
        raise StrategyError("search.epochs", "early stopping needs the children's epochs (and a per-epoch evaluate)")
    state = _start(strategy, checkpoint_path, resume, epochs, settings)
    started = time.monotonic()
    queue: deque[_Slot] = deque()
    stopping = _Stopping(settings, epochs, state.board_rows()) if epochs is not None else None
    pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="child") if parallel > 1 else None

    def train(slot: _Slot) -> _Outcome:
        if stopping is None:
            return _Outcome(evaluate(slot.proposal.genotype))
        report = _Reporter(stopping, slot.proposal.id)
        try:
            raw = evaluate(slot.proposal.genotype, report)
        finally:
            stopping.end(slot.proposal.id)
        return _Outcome(raw, stopping.values(slot.proposal.id), report.stopped_at)

    def schedule(proposal: Proposal) -> None:
        h = proposal.genotype.canonical_hash()
        in_flight = any(s.hash == h and not s.reuse for s in queue)
        known = state.known(h)
        slot = _Slot(proposal, h, reuse=reuse_duplicates and (known or in_flight))
        if stopping is not None:
            stopping.open(proposal.id, ended=slot.reuse and known)
        if not slot.reuse and pool is not None:
            slot.future = pool.submit(train, slot)
        queue.append(slot)

    clean = False
    try:
        for proposal in strategy.pending():  # outstanding when the checkpoint was written
            schedule(proposal)
        while state.children < children:
            free = min(parallel - len(queue), children - state.children - len(queue))
            for proposal in strategy.ask(free) if free > 0 else []:
                schedule(proposal)
            slot = queue.popleft()
            result = _resolve(slot, train, state, stopping)
            p = slot.proposal
            if result.reward is None:
                stats = strategy.tell_failure(p.id)
            else:
                stats = strategy.tell(p.id, result.reward, result.fidelity)
            state.record(p.genotype, result)
            if reuse_duplicates:
                state.remember(slot.hash, result)
            if stopping is not None and settings.active:
                _keep_row(state, stopping, p.id)
            if checkpoint_path is not None:
                state.elapsed += time.monotonic() - started
                started = time.monotonic()
                save_checkpoint(strategy, checkpoint_path, loop=state.to_dict())
            if stats is not None and on_update is not None:
                on_update(stats)
            if on_result is not None:
                on_result(result)
        clean = True
    finally:
        if stopping is not None and not clean:
            stopping.abort()  # threads waiting for a decision end instead of waiting forever
        if pool is not None:
            pool.shutdown(wait=clean, cancel_futures=True)
    state.elapsed += time.monotonic() - started
    return state.summary()


def _keep_row(state: _LoopState, stopping: _Stopping, index: int) -> None:
    """Keep a told child's values for the checkpoint, up to its last decision epoch:
    later values never enter a decision."""
    last = max(decision_epochs(stopping.settings, stopping.epochs))
    values = stopping.values(index)[:last]
    state.told_rows.append(index)
    state.told_lengths.append(len(values))
    state.told_values.extend(values)


def _start(strategy: Strategy, checkpoint_path, resume: bool, epochs: int | None, settings: EarlyStop) -> _LoopState:
    fresh = _LoopState(epochs=epochs, early_stop=settings.to_dict() if epochs is not None else None)
    if epochs is None:
        fresh.epochs_trained = None
    if checkpoint_path is None:
        if resume:
            raise StrategyError("search.resume", "needs a checkpoint_path")
        return fresh
    path = Path(checkpoint_path)
    if not path.exists():
        return fresh  # resume of a search that never wrote a checkpoint: start it
    if not resume:
        raise StrategyError("search.checkpoint_path", f"{path} exists: pass resume=True to continue it, or remove it")
    payload = read_checkpoint(path)
    if payload.get("loop") is None:
        raise StrategyError("checkpoint.loop", f"{path} holds a strategy but no search-loop state")
    loop = _LoopState.from_dict(payload["loop"])
    saved = EarlyStop(**loop.early_stop) if loop.early_stop else EarlyStop()
    if saved != settings:
        raise StrategyError("checkpoint.early_stop", f"the search stops children with {saved}, not {settings}")
    if None not in (loop.epochs, epochs) and loop.epochs != epochs:
        raise StrategyError("checkpoint.epochs", f"the search's children train {loop.epochs} epochs, not {epochs}")
    restore_into(strategy, payload)
    if epochs is not None:
        loop.epochs, loop.early_stop = epochs, settings.to_dict()
    elif loop.epochs_trained is not None:
        loop.epochs_trained = None  # this session cannot count them
    return loop


def _resolve(slot: _Slot, train, state: _LoopState, stopping: _Stopping | None) -> ChildResult:
    p = slot.proposal
    if slot.reuse and state.known(slot.hash):
        if stopping is not None:
            stopping.end(p.id)
        return _reused(p, slot.hash, state, stopping)
    # Evaluate now: parallel == 1, or the child it waited for failed.
    outcome = slot.future.result() if slot.future is not None else train(slot)
    epochs = None if outcome.values is None else len(outcome.values)
    if outcome.stopped_at is not None:
        told = fidelity(stopping.settings, outcome.values, stopping.epochs)
        return ChildResult(p.id, p.genotype, outcome.values[-1], "stopped", epochs, told)
    raw = outcome.raw
    if raw is None:
        return ChildResult(p.id, p.genotype, None, "failed", epochs)
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise TypeError(f"evaluate must return a number or None, got {type(raw).__name__}")
    if not math.isfinite(raw):
        return ChildResult(p.id, p.genotype, None, "failed", epochs)
    told = None
    if stopping is not None:
        if epochs != stopping.epochs:
            raise ValueError(f"evaluate returned a reward after reporting {epochs} of {stopping.epochs} epochs")
        if stopping.settings.active:
            told = fidelity(stopping.settings, outcome.values, stopping.epochs)
    return ChildResult(p.id, p.genotype, float(raw), "ok", epochs, told)


def _reused(p: Proposal, h: str, state: _LoopState, stopping: _Stopping | None) -> ChildResult:
    """A duplicate told what its trained original was told: a final reward, or stopped at
    the same rung with the same values."""
    epochs = None if stopping is None else 0
    rungs = tuple((int(e), float(v)) for e, v in state.rungs_by_hash.get(h, ()))
    settings = stopping.settings if stopping is not None else EarlyStop()
    if h in state.rewards_by_hash:
        told = None
        if stopping is not None and settings.active:
            told = Fidelity(stopping.epochs, stopping.epochs, rungs, settings.stopped_reward)
        return ChildResult(p.id, p.genotype, state.rewards_by_hash[h], "reused", epochs, told)
    told = Fidelity(rungs[-1][0], stopping.epochs, rungs, settings.stopped_reward)
    return ChildResult(p.id, p.genotype, rungs[-1][1], "reused", epochs, told)
