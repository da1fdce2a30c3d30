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
- Every child (ok, reused or failed) counts towards `children`; `history` holds the rewards
  of the children that have one, in order.
- With `checkpoint_path`, a checkpoint is written after every tell (atomically): the
  strategy's state and, next to it, the loop's own (counters, history, best, the rewards
  by hash, elapsed time). `resume=True` continues from it: proposals that were
  outstanding are evaluated again, then the loop goes on, and it ends exactly where an
  uninterrupted run would have. Without `resume`, an existing checkpoint is an error
  (never silently overwritten). The strategy passed in must be built from the same spec
  (name, settings, space) as the checkpointed one.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from nas_engine.genotype import Genotype
from nas_engine.strategies.base import (
    Proposal,
    Strategy,
    StrategyError,
    UpdateStats,
    read_checkpoint,
    restore_into,
    save_checkpoint,
)

LOOP_STATE_VERSION = 1


@dataclass
class ChildResult:
    proposal_id: int
    genotype: Genotype
    reward: float | None
    status: str  # "ok" | "failed" | "reused"


@dataclass
class SearchSummary:
    best_reward: float | None
    best_genotype: Genotype | None
    mean_reward_last_100: float | None
    children: int
    history: list[float]
    duration: float  # seconds, summed over resumed sessions
    failed: int = 0
    reused: int = 0


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

    def to_dict(self) -> dict:
        return {"version": LOOP_STATE_VERSION, **{k: getattr(self, k) for k in self.__dataclass_fields__}}

    @classmethod
    def from_dict(cls, data: dict) -> _LoopState:
        if not isinstance(data, dict) or data.get("version") != LOOP_STATE_VERSION:
            raise StrategyError("checkpoint.loop", "missing or of an unknown version")
        try:
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except KeyError as exc:
            raise StrategyError("checkpoint.loop", f"missing {exc}") from None

    def record(self, genotype: Genotype, reward: float | None, status: str) -> None:
        self.children += 1
        self.failed += status == "failed"
        self.reused += status == "reused"
        if reward is not None:
            self.history.append(reward)
            if self.best_reward is None or reward > self.best_reward:
                self.best_reward, self.best_genotype = reward, genotype.to_dict()

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
        )


@dataclass
class _Slot:
    """An outstanding proposal: being evaluated (future), or waiting to reuse a reward."""

    proposal: Proposal
    hash: str
    future: Future | None = None
    reuse: bool = False  # a reward for its hash is known, or will be when an earlier slot is told


def run_search(
    strategy: Strategy,
    evaluate: Callable[[Genotype], float | None],
    *,
    children: int,
    parallel: int = 1,
    reuse_duplicates: bool = True,
    on_result: Callable[[ChildResult], None] | None = None,
    on_update: Callable[[UpdateStats], None] | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = False,
) -> SearchSummary:
    """Run (or resume) a search until `children` children have been told. See the module doc."""
    for name, value, low in (("children", children, 0), ("parallel", parallel, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise StrategyError(f"search.{name}", f"must be an integer >= {low}, got {value!r}")
    state = _start(strategy, checkpoint_path, resume)
    started = time.monotonic()
    queue: deque[_Slot] = deque()
    pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="child") if parallel > 1 else None

    def schedule(proposal: Proposal) -> None:
        h = proposal.genotype.canonical_hash()
        in_flight = any(s.hash == h and not s.reuse for s in queue)
        slot = _Slot(proposal, h, reuse=reuse_duplicates and (h in state.rewards_by_hash or in_flight))
        if not slot.reuse and pool is not None:
            slot.future = pool.submit(evaluate, proposal.genotype)
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
            reward, status = _resolve(slot, evaluate, state)
            p = slot.proposal
            stats = strategy.tell(p.id, reward) if reward is not None else strategy.tell_failure(p.id)
            state.record(p.genotype, reward, status)
            if status == "ok" and reuse_duplicates:
                state.rewards_by_hash[slot.hash] = reward
            if checkpoint_path is not None:
                state.elapsed += time.monotonic() - started
                started = time.monotonic()
                save_checkpoint(strategy, checkpoint_path, loop=state.to_dict())
            if stats is not None and on_update is not None:
                on_update(stats)
            if on_result is not None:
                on_result(ChildResult(p.id, p.genotype, reward, status))
        clean = True
    finally:
        if pool is not None:
            pool.shutdown(wait=clean, cancel_futures=True)
    state.elapsed += time.monotonic() - started
    return state.summary()


def _start(strategy: Strategy, checkpoint_path, resume: bool) -> _LoopState:
    if checkpoint_path is None:
        if resume:
            raise StrategyError("search.resume", "needs a checkpoint_path")
        return _LoopState()
    path = Path(checkpoint_path)
    if not path.exists():
        return _LoopState()  # resume of a search that never wrote a checkpoint: start it
    if not resume:
        raise StrategyError("search.checkpoint_path", f"{path} exists: pass resume=True to continue it, or remove it")
    payload = read_checkpoint(path)
    if payload.get("loop") is None:
        raise StrategyError("checkpoint.loop", f"{path} holds a strategy but no search-loop state")
    loop = _LoopState.from_dict(payload["loop"])
    restore_into(strategy, payload)
    return loop


def _resolve(slot: _Slot, evaluate, state: _LoopState) -> tuple[float | None, str]:
    if slot.reuse and slot.hash in state.rewards_by_hash:
        return state.rewards_by_hash[slot.hash], "reused"
    # Evaluate now: parallel == 1, or the child it waited for failed.
    raw = slot.future.result() if slot.future is not None else evaluate(slot.proposal.genotype)
    if raw is None:
        return None, "failed"
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise TypeError(f"evaluate must return a number or None, got {type(raw).__name__}")
    return (float(raw), "ok") if math.isfinite(raw) else (None, "failed")
