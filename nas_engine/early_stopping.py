"""Early stopping across children: the rules that end a poor child before its full training.

Child training is the whole cost of a search, and every child reports its validation
accuracy after each epoch. Two rules from trial-based tuning decide, at given epochs,
whether a child goes on:

- ASHA, asynchronous successive halving (Li et al., "A System for Massively Parallel
  Hyperparameter Tuning", MLSys 2020, arXiv 1810.05934), as Ray Tune's
  `AsyncHyperBandScheduler` implements it (python/ray/tune/schedulers/async_hyperband.py,
  `_Bracket.on_result` and `cutoff`), one bracket: rungs at `min_epochs * eta**k`
  below the full training. At a rung, the cutoff is the (1 - 1/eta) quantile (linear
  interpolation, numpy's default) of the values already recorded there, computed before
  this child's value is added; the first child at a rung always continues; a child stops
  if its value is strictly below the cutoff. Every child's value is recorded, stopped or
  not. (Optuna's `SuccessiveHalvingPruner` keeps the top `len // eta` of all values
  including the child's own; the two agree in spirit and differ by one at small counts.)
- The median stopping rule (Golovin et al., "Google Vizier", KDD 2017), as Ray Tune's
  `MedianStoppingRule` implements it: at every epoch t from `min_epochs` (the grace
  period) on, once at least `min_peers` peers reached t, a child stops if its best value
  so far is strictly below the median of the peers' running means (the mean of their
  values from `min_epochs` to t). (Optuna's `MedianPruner` takes the median of the peers'
  values at t instead of their running means.)

No decision is ever taken at the last epoch: the child is done by then.

Determinism. In Ray the peers of a trial are whoever reported a rung first, so the same
search can stop different children from one run to the next. Here the peers of child i
(its ask order, the strategy's proposal id) at epoch t are exactly the children asked
before i that reached t, whatever order results arrive in. A decision for (i, t) can be
taken once every child before i has either reported epoch t or ended below it; until then
it waits. The earliest child still training never waits, so nothing deadlocks, and a
search (local threads or distributed workers) stops the same children every time.
`Board` keeps the children's values and answers "can child i be decided at epoch t yet?"
and "what is the decision?"; the decision functions themselves (`asha_decision`,
`median_decision`) are pure.

    settings = parse_early_stop({"rule": "asha", "min_epochs": 1, "reduction_factor": 3})
    board = Board(settings, max_epochs=20)
    board.open(0); board.report(0, 0.31)
    board.decision(0, 1)        # Decision(stop=False, ...): the first child at a rung goes on
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

from nas_engine.errors import FieldError
from nas_engine.strategies.base import STOPPED_REWARDS, Fidelity

RULES = ("none", "asha", "median")


class EarlyStopError(FieldError):
    """Invalid early-stopping settings; `field` is the dotted path (`early_stop.reduction_factor`)."""


@dataclass(frozen=True)
class EarlyStop:
    """The settings. `min_epochs`: ASHA's first rung and the median rule's grace period;
    `reduction_factor` (eta): ASHA keeps the top 1/eta at each rung, and rungs are eta
    apart; `min_peers`: the median rule decides only with at least this many peers;
    `stopped_reward`: what a policy-gradient strategy learns from a stopped child
    (strategies.base.STOPPED_REWARDS)."""

    rule: str = "none"
    min_epochs: int = 1
    reduction_factor: int = 3
    min_peers: int = 3
    stopped_reward: str = "rung"

    def __post_init__(self) -> None:
        _check(self.to_dict(), "early_stop")

    @property
    def active(self) -> bool:
        return self.rule != "none"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object, path: str = "early_stop") -> EarlyStop:
        return parse_early_stop(data, path)


def parse_early_stop(data: object, path: str = "early_stop") -> EarlyStop:
    """Settings from None, a rule name, or an object of fields (missing ones default)."""
    if data is None:
        return EarlyStop()
    if isinstance(data, str):
        data = {"rule": data}
    if not isinstance(data, dict):
        raise EarlyStopError(path, "must be an object or a rule name")
    known = EarlyStop.__dataclass_fields__
    for key in data:
        if key not in known:
            raise EarlyStopError(f"{path}.{key}", f"unknown field; allowed: {', '.join(known)}")
    out = {**EarlyStop().to_dict(), **data}
    _check(out, path)
    return EarlyStop(**out)


def _check(values: dict, path: str) -> None:
    for key, choices in (("rule", RULES), ("stopped_reward", STOPPED_REWARDS)):
        if values[key] not in choices:
            raise EarlyStopError(f"{path}.{key}", f"must be one of {', '.join(choices)}, got {values[key]!r}")
    for key, low in (("min_epochs", 1), ("reduction_factor", 2), ("min_peers", 1)):
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise EarlyStopError(f"{path}.{key}", f"must be an integer >= {low}, got {value!r}")


def rungs(settings: EarlyStop, max_epochs: int) -> tuple[int, ...]:
    """ASHA's rungs: min_epochs * eta**k for k = 0, 1, ... below max_epochs."""
    out, epoch = [], settings.min_epochs
    while epoch < max_epochs:
        out.append(epoch)
        epoch *= settings.reduction_factor
    return tuple(out)


def decision_epochs(settings: EarlyStop, max_epochs: int) -> tuple[int, ...]:
    """The epochs after which the rule may stop a child (never the last)."""
    if settings.rule == "asha":
        return rungs(settings, max_epochs)
    if settings.rule == "median":
        return tuple(range(settings.min_epochs, max_epochs))
    return ()


def check_epochs(settings: EarlyStop, max_epochs: int, path: str = "early_stop") -> None:
    """A rule that could never stop a child (min_epochs at or past the full training) is
    a mistake, not a no-op: say so."""
    if settings.active and not decision_epochs(settings, max_epochs):
        raise EarlyStopError(
            f"{path}.min_epochs",
            f"must be below the children's {max_epochs} epochs, got {settings.min_epochs}: no child would be stopped",
        )


def fidelity(settings: EarlyStop, values: Sequence[float], max_epochs: int) -> Fidelity:
    """What to tell the strategy about a trained child: `values` are its validation values
    per epoch, as far as it was trained (the last is the reward told)."""
    reached = [(e, float(values[e - 1])) for e in decision_epochs(settings, max_epochs) if e <= len(values)]
    return Fidelity(len(values), max_epochs, tuple(reached), settings.stopped_reward)


# -- the decisions (pure) ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a child stops after `epoch`. `value` is what the rule judged (ASHA: the
    value at the rung; median: the best so far), `threshold` what it was compared with
    (None: too few peers to judge), `peers` how many children it was compared against."""

    stop: bool
    epoch: int
    rule: str
    value: float | None = None
    threshold: float | None = None
    peers: int = 0

    @property
    def reason(self) -> str:
        if self.rule == "none":
            return f"epoch {self.epoch}: no decision here"
        what = "value" if self.rule == "asha" else "best value so far"
        if self.threshold is None:
            needed = "is the first at this rung" if self.rule == "asha" else f"has only {self.peers} peers here"
            return f"epoch {self.epoch}: continue, {self.rule}: it {needed}"
        against = f"the {'cutoff' if self.rule == 'asha' else 'median of running means'} {self.threshold:.4f}"
        verdict = "stop" if self.stop else "continue"
        relation = "below" if self.stop else "at or above"
        judged = f"{what} {self.value:.4f} is {relation} {against} of {self.peers} peers"
        return f"epoch {self.epoch}: {verdict}, {self.rule}: {judged}"


def quantile(ordered: Sequence[float], numerator: int, denominator: int) -> float:
    """The numerator/denominator quantile of sorted values, interpolated linearly
    (numpy.percentile's default); the position is exact integer arithmetic."""
    low, rest = divmod((len(ordered) - 1) * numerator, denominator)
    if rest == 0:
        return ordered[low]
    return ordered[low] + (ordered[low + 1] - ordered[low]) * (rest / denominator)


def asha_decision(value: float, peers: Sequence[float], reduction_factor: int, epoch: int = 0) -> Decision:
    """ASHA at a rung: `peers` are the values recorded at this rung before this child."""
    return _asha(value, sorted(peers), reduction_factor, epoch)


def _asha(value: float, ordered: Sequence[float], reduction_factor: int, epoch: int) -> Decision:
    if not ordered:
        return Decision(False, epoch, "asha", value, None, 0)
    cutoff = quantile(ordered, reduction_factor - 1, reduction_factor)
    return Decision(value < cutoff, epoch, "asha", value, cutoff, len(ordered))


def running_mean(values: Sequence[float], min_epochs: int, epoch: int) -> float:
    """The mean of values from epoch `min_epochs` to `epoch` (1-based, both included)."""
    window = values[min_epochs - 1 : epoch]
    return math.fsum(window) / len(window)


def median_decision(
    values: Sequence[float], peer_means: Sequence[float], min_peers: int, epoch: int | None = None
) -> Decision:
    """The median stopping rule after `epoch` (default: the last of `values`): `values` are
    the child's values from epoch 1, `peer_means` the peers' running means at that epoch."""
    epoch = len(values) if epoch is None else epoch
    return _median(values, sorted(peer_means), min_peers, epoch)


def _median(values: Sequence[float], ordered: Sequence[float], min_peers: int, epoch: int) -> Decision:
    best = max(values[:epoch])
    if len(ordered) < max(min_peers, 1):
        return Decision(False, epoch, "median", best, None, len(ordered))
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return Decision(best < median, epoch, "median", best, median, len(ordered))


def peer_statistic(settings: EarlyStop, values: Sequence[float], epoch: int) -> float:
    """What a child contributes to its successors' decisions at `epoch`: its value there
    (ASHA) or its running mean up to there (median rule). `values` start at epoch 1."""
    if settings.rule == "asha":
        return float(values[epoch - 1])
    return running_mean(values, settings.min_epochs, epoch)


def decide(settings: EarlyStop, values: Sequence[float], epoch: int, ordered_peers: Sequence[float]) -> Decision:
    """The rule's decision for a child with `values` (from epoch 1) after `epoch`, given
    its peers' statistics there (peer_statistic), sorted. The one decision function of
    both the local loop (Board) and the service (workers/rungs.py)."""
    if settings.rule == "asha":
        return _asha(values[epoch - 1], ordered_peers, settings.reduction_factor, epoch)
    if settings.rule == "median":
        return _median(values, ordered_peers, settings.min_peers, epoch)
    return Decision(False, epoch, "none")


# -- deciding in ask order -------------------------------------------------------------------
@dataclass
class _Row:
    values: list[float] = field(default_factory=list)
    ended: bool = False  # no more values will come (completed, stopped, failed, reused)


class Board:
    """The per-epoch values of a search's children by ask index, and the decisions.

    A child is `open`ed when it is asked, `report`s a value after each epoch, and is
    `end`ed when it finishes, is stopped, fails, or is reused without training (a reused
    child has no values and is nobody's peer). `decision(i, t)` is None while some child
    before i may still report epoch t, else the rule's decision; the same rows give the
    same decisions in any arrival order. The service can rebuild a board from its rows
    at any time (`from_rows`). Not thread-safe: callers lock.

    Decisions are computed for every child in index order as the rows allow, each
    child's value then inserted into a sorted list per decision epoch, rather than
    comparing every child with all earlier ones.
    """

    def __init__(self, settings: EarlyStop, max_epochs: int):
        if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
            raise EarlyStopError("epochs", f"must be an integer >= 1, got {max_epochs!r}")
        self.settings, self.max_epochs = settings, max_epochs
        self.epochs = decision_epochs(settings, max_epochs)
        self._rows: dict[int, _Row] = {}
        self._front = dict.fromkeys(self.epochs, 0)  # per epoch: every index below it is folded in
        self._peers: dict[int, list[float]] = {t: [] for t in self.epochs}  # sorted, of folded rows
        self._decisions: dict[tuple[int, int], Decision] = {}

    @classmethod
    def from_rows(
        cls, settings: EarlyStop, max_epochs: int, rows: Iterable[tuple[int, Sequence[float], bool]]
    ) -> Board:
        """A board from (index, values so far, ended) rows, e.g. a search's child runs."""
        board = cls(settings, max_epochs)
        for index, values, ended in rows:
            board.set_row(index, values, ended)
        return board

    # -- rows ------------------------------------------------------------------------------
    def open(self, index: int) -> None:
        if index in self._rows:
            raise ValueError(f"child {index} is already on the board")
        self._rows[index] = _Row()

    def report(self, index: int, value: float) -> int:
        """Child `index` finished its next epoch with `value`; returns that epoch."""
        row = self._rows[index]
        if row.ended:
            raise ValueError(f"child {index} has ended; it reports nothing more")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"child {index}: an epoch's value must be a finite number, got {value!r}")
        if len(row.values) >= self.max_epochs:
            raise ValueError(f"child {index} already reported all {self.max_epochs} epochs")
        row.values.append(float(value))
        return len(row.values)

    def end(self, index: int) -> None:
        self._rows.setdefault(index, _Row()).ended = True

    def set_row(self, index: int, values: Sequence[float], ended: bool) -> None:
        """Replace a row with what is known now. Rows only grow: values already reported
        stay as they were, and an ended row stays ended (decisions may rest on them)."""
        old = self._rows.get(index)
        values = [float(v) for v in values]
        if old is not None and (values[: len(old.values)] != old.values or (old.ended and not ended)):
            raise ValueError(f"child {index}: rows only grow; {old.values} cannot become {values}")
        if old is not None and old.ended and len(values) != len(old.values):
            raise ValueError(f"child {index} has ended; it reports nothing more")
        if len(values) > self.max_epochs or not all(math.isfinite(v) for v in values):
            raise ValueError(f"child {index}: at most {self.max_epochs} finite values, got {values}")
        self._rows[index] = _Row(values, ended)

    def has(self, index: int) -> bool:
        return index in self._rows

    def values(self, index: int) -> list[float]:
        return list(self._rows[index].values)

    def rows(self) -> list[tuple[int, list[float], bool]]:
        """(index, values, ended) of every row, by index."""
        return [(i, list(r.values), r.ended) for i, r in sorted(self._rows.items())]

    # -- decisions -----------------------------------------------------------------------------
    def decidable(self, index: int, epoch: int) -> bool:
        """True when every child before `index` has reported `epoch` or ended below it."""
        return self.decision(index, epoch) is not None

    def decision(self, index: int, epoch: int) -> Decision | None:
        """The decision for child `index` after `epoch` (which it must have reported), or
        None while an earlier child may still report that epoch."""
        row = self._rows.get(index)
        if row is None or len(row.values) < epoch or epoch < 1:
            raise ValueError(f"child {index} has not reported epoch {epoch}")
        if epoch not in self._front:
            return Decision(False, epoch, "none")
        cached = self._decisions.get((index, epoch))
        if cached is None and self._fold(epoch, index):
            cached = self._decisions[index, epoch]
        return cached

    def _fold(self, epoch: int, upto: int) -> bool:
        """Decide, in index order, every child up to `upto` at `epoch`; False where a child
        that may still report the epoch is in the way."""
        peers = self._peers[epoch]
        while self._front[epoch] <= upto:
            j = self._front[epoch]
            row = self._rows.get(j)
            if row is None or (len(row.values) < epoch and not row.ended):
                return False
            if len(row.values) >= epoch:
                self._decisions[j, epoch] = self._decide(row.values, epoch, peers)
                bisect.insort(peers, self._statistic(row.values, epoch))
            self._front[epoch] = j + 1
        return True

    def _statistic(self, values: list[float], epoch: int) -> float:
        return peer_statistic(self.settings, values, epoch)

    def _decide(self, values: list[float], epoch: int, peers: list[float]) -> Decision:
        return decide(self.settings, values, epoch, peers)
