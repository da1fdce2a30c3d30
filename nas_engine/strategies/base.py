"""The interface every search strategy implements, its settings, and its checkpoints.

ARCHITECTURE.md, "Strategies behind one interface": the orchestration (the loop in
`nas_engine.search`, the worker's `advance_search`) only ever calls the methods below, so
PPO, REINFORCE, random search and regularized evolution are interchangeable.

Protocol
- `ask(n)` returns n proposals with fresh, increasing ids. It may be called again before
  earlier proposals are told (parallel children). A proposal stays *pending* until it is
  told exactly once; `pending()` lists those.
- `tell(id, reward)` reports a finite reward and returns `UpdateStats` when that reward
  completed a controller minibatch (None otherwise, and always None for strategies
  without a controller).
- `tell(id, reward, fidelity=...)` reports a child that early stopping (`nas_engine.
  early_stopping`) may have ended before its full training: `Fidelity` says how many
  epochs it trained, its values at the decision epochs it reached, and how a stopped
  child's reward should teach. Without `fidelity` (or with one that is not stopped) a
  reward is a full training's, exactly as before. What each strategy makes of a stopped
  child is its own (`_observe_fidelity`; docs/early-stopping.md): random search ignores
  it, evolution ranks children by how far they were trained, then by reward, PPO and REINFORCE
  learn from the rung value against a per-rung baseline. A strategy that does not
  override `_observe_fidelity` is told the rung value as if it were a reward.
- `tell_failure(id)` reports that the child failed (crashed, diverged, ran out of memory).
  By default the proposal is dropped: no reward, no update, no population slot, because a
  failure is weak evidence about the architecture (a lost worker is not a bad cell). With
  the setting `failure_reward` (a number, e.g. 0.0) the failure is told as that reward
  instead, which lets a search steer away from architectures that diverge.
- `state_dict()` / `load_state_dict()` capture everything needed to continue *exactly*:
  the id counter, pending proposals with what the strategy keeps per proposal (PPO's
  sampling-time log-prob, evolution's parent), RNG states, weights, optimizer state,
  baseline, minibatch buffer, population. A restored strategy makes the same proposals
  and the same updates, bit for bit, as the one that was never interrupted.

Checkpoints wrap a state dict with the strategy's name, resolved settings, seed, search
space and a format version. They are written atomically (temporary file, fsync,
os.replace) and read with `torch.load(weights_only=True)`, so they hold only tensors and
plain Python data; a foreign, truncated or corrupted file raises `StrategyError`.
Rebuilding a strategy *by name* from a checkpoint file (`load_checkpoint`) needs the
registry of strategies, so it lives in `registry.py`, which imports this module.
"""

from __future__ import annotations

import copy
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from nas_engine.errors import FieldError
from nas_engine.genotype import Genotype
from nas_engine.space import SearchSpace

CHECKPOINT_FORMAT = "nas_engine.strategy_checkpoint"
CHECKPOINT_VERSION = 1
# What a policy-gradient strategy learns from a stopped child (Fidelity.stopped_reward):
# "rung": its value at the rung against a baseline kept per rung; "normalised": that
# advantage rescaled by the spread of final rewards over the spread at the rung; "drop":
# nothing (as a dropped failure). docs/early-stopping.md says why "rung" is the default.
STOPPED_REWARDS = ("rung", "normalised", "drop")


class StrategyError(FieldError):
    """A strategy name, setting, state or checkpoint is invalid; `field` says which."""


@dataclass
class Proposal:
    """One sampled architecture. `id` increases per strategy and survives checkpoints."""

    id: int
    genotype: Genotype
    decisions: list[int]


@dataclass(frozen=True)
class Fidelity:
    """How much training a told reward stands for.

    `epochs` of `max_epochs` were trained; `rungs` holds the child's (epoch, value) at
    every decision epoch of early stopping that it reached, in order (for a stopped child
    the last one is where it stopped, and its value is the reward told). A child trained
    in full is not `stopped`, whatever its rungs."""

    epochs: int
    max_epochs: int
    rungs: tuple[tuple[int, float], ...] = ()
    stopped_reward: str = "rung"

    @property
    def stopped(self) -> bool:
        return self.epochs < self.max_epochs

    def check(self) -> Fidelity:
        for name in ("epochs", "max_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise StrategyError(f"fidelity.{name}", f"must be an integer >= 1, got {value!r}")
        if self.epochs > self.max_epochs:
            raise StrategyError("fidelity.epochs", f"{self.epochs} exceeds max_epochs {self.max_epochs}")
        if self.stopped_reward not in STOPPED_REWARDS:
            raise StrategyError(
                "fidelity.stopped_reward", f"must be one of {', '.join(STOPPED_REWARDS)}, got {self.stopped_reward!r}"
            )
        last = 0
        for epoch, value in self.rungs:
            if not last < epoch <= self.epochs or not math.isfinite(value):
                raise StrategyError("fidelity.rungs", f"must be (epoch, finite value) pairs in order, got {self.rungs}")
            last = epoch
        return self


@dataclass
class UpdateStats:
    """What one controller update did, for the dashboard.

    `policy[k][j]` is the current probability of option j at decision k (ragged, sized by
    `SearchSpace.decision_sizes()`), averaged over the minibatch the update used.
    """

    step: int
    loss: float
    entropy: float
    mean_reward: float
    baseline: float
    approx_kl: float
    clip_fraction: float
    policy: list[list[float]]


# -- settings -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """One hyper-parameter: its default, type and allowed range."""

    default: Any
    kind: type  # int or float
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: value must be > low (else >= low)
    high_open: bool = False  # True: value must be < high (else <= high)
    optional: bool = False  # None allowed (and means "off")

    def check(self, field: str, value: Any) -> Any:
        if value is None:
            if self.optional:
                return None
            raise StrategyError(field, "must not be null")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise StrategyError(field, f"must be a number, got {type(value).__name__}")
        if self.kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise StrategyError(field, f"must be an integer, got {value}")
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise StrategyError(field, f"must be finite, got {value}")
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            raise StrategyError(field, f"must be {'>' if self.low_open else '>='} {self.low}, got {value}")
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            raise StrategyError(field, f"must be {'<' if self.high_open else '<='} {self.high}, got {value}")
        return value


COMMON_SETTINGS: dict[str, Setting] = {
    # None: a failed child is dropped. A number: it is told as that reward.
    "failure_reward": Setting(None, float, optional=True),
}


def resolve_settings(spec: dict[str, Setting], given: dict | None) -> dict:
    """Defaults filled in, every value checked; errors name `strategy.settings.<key>`."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise StrategyError("strategy.settings", "must be an object of hyper-parameters")
    for key in given:
        if key not in spec:
            raise StrategyError(f"strategy.settings.{key}", f"unknown setting; known: {', '.join(sorted(spec))}")
    return {key: s.check(f"strategy.settings.{key}", given.get(key, s.default)) for key, s in spec.items()}


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise StrategyError("strategy.seed", f"must be a non-negative integer, got {seed!r}")
    return seed


# -- the interface ------------------------------------------------------------------------
class Strategy:
    """Base class: ids, pending proposals, reward checks, the state-dict envelope.

    A subclass sets `name` and `SETTINGS` and implements `_propose`, `_observe` and
    `_state` / `_load_state` (and may override `check_settings`).
    """

    name: ClassVar[str] = ""
    SETTINGS: ClassVar[dict[str, Setting]] = {}

    def __init__(self, space: SearchSpace, settings: dict | None = None, seed: int = 0):
        if not isinstance(space, SearchSpace):
            raise StrategyError("space", f"must be a SearchSpace, got {type(space).__name__}")
        self.space = space
        self.sizes = space.decision_sizes()
        self.settings = self.checked_settings(settings)
        self.seed = check_seed(seed)
        self._next_id = 0
        self._pending: dict[int, dict] = {}

    @classmethod
    def settings_spec(cls) -> dict[str, Setting]:
        return {**COMMON_SETTINGS, **cls.SETTINGS}

    @classmethod
    def checked_settings(cls, settings: dict | None) -> dict:
        """Every setting resolved (defaults filled in) and checked, without building anything:
        a web request validates a spec with this, never with a controller and its optimizer."""
        resolved = resolve_settings(cls.settings_spec(), settings)
        cls.check_settings(resolved)
        return resolved

    # -- public protocol -------------------------------------------------------------
    def ask(self, n: int) -> list[Proposal]:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise StrategyError("n", f"must be a non-negative integer, got {n!r}")
        proposals = []
        for decisions, extra in self._propose(n):
            pid = self._next_id
            self._next_id += 1
            self._pending[pid] = {"decisions": list(decisions), **extra}
            proposals.append(self._proposal(pid))
        return proposals

    def pending(self) -> list[Proposal]:
        """Proposals asked and not yet told, oldest first."""
        return [self._proposal(pid) for pid in sorted(self._pending)]

    def tell(self, proposal_id: int, reward: float, fidelity: Fidelity | None = None) -> UpdateStats | None:
        """A finite reward; with `fidelity`, how far the child was trained (None: in full)."""
        if isinstance(reward, bool) or not isinstance(reward, (int, float)) or not math.isfinite(reward):
            raise StrategyError("reward", f"must be a finite number, got {reward!r}; use tell_failure for a failure")
        if fidelity is None:
            return self._observe(proposal_id, self._take(proposal_id), float(reward))
        if not isinstance(fidelity, Fidelity):
            raise StrategyError("fidelity", f"must be a Fidelity, got {type(fidelity).__name__}")
        fidelity.check()
        return self._observe_fidelity(proposal_id, self._take(proposal_id), float(reward), fidelity)

    def tell_failure(self, proposal_id: int) -> UpdateStats | None:
        entry = self._take(proposal_id)
        if self.settings["failure_reward"] is not None:
            return self._observe(proposal_id, entry, self.settings["failure_reward"])
        return None  # dropped: see the module docstring

    def state_dict(self) -> dict:
        return {
            "strategy": self.name,
            "next_id": self._next_id,
            "pending": copy.deepcopy(self._pending),
            **self._state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`. On error the strategy may be half-restored: discard it."""
        if not isinstance(state, dict):
            raise StrategyError("state", "must be a dict made by state_dict()")
        if state.get("strategy") != self.name:
            raise StrategyError("state.strategy", f"holds a {state.get('strategy')!r} strategy, not {self.name!r}")
        try:
            self._next_id = int(state["next_id"])
            self._pending = {int(pid): copy.deepcopy(entry) for pid, entry in state["pending"].items()}
            for entry in self._pending.values():
                Genotype.from_decisions(self.space, entry["decisions"])
            self._load_state(state)
        except StrategyError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as exc:
            raise StrategyError("state", f"incomplete or malformed {self.name} state ({exc})") from exc

    # -- for subclasses ----------------------------------------------------------------
    @classmethod
    def check_settings(cls, settings: dict) -> None:
        """Cross-field checks of resolved settings; raise StrategyError naming the field."""

    def _propose(self, n: int) -> list[tuple[list[int], dict]]:
        """n (decisions, extra data kept with the pending proposal) pairs."""
        raise NotImplementedError

    def _observe(self, proposal_id: int, entry: dict, reward: float) -> UpdateStats | None:
        """A pending proposal (its `entry`) got `reward`."""
        raise NotImplementedError

    def _observe_fidelity(self, proposal_id: int, entry: dict, reward: float, fidelity: Fidelity) -> UpdateStats | None:
        """A reward told with its fidelity; by default the fidelity is ignored."""
        return self._observe(proposal_id, entry, reward)

    def _state(self) -> dict:
        return {}

    def _load_state(self, state: dict) -> None:
        pass

    # -- helpers ---------------------------------------------------------------------------
    def _take(self, proposal_id: int) -> dict:
        try:
            return self._pending.pop(proposal_id)
        except (KeyError, TypeError):
            raise StrategyError(
                "proposal_id", f"{proposal_id!r} is not pending (never asked, or already told)"
            ) from None

    def _proposal(self, pid: int) -> Proposal:
        decisions = list(self._pending[pid]["decisions"])
        return Proposal(pid, Genotype.from_decisions(self.space, decisions), decisions)


# -- checkpoints ----------------------------------------------------------------------------
def checkpoint_bytes(strategy: Strategy, *, loop: dict | None = None) -> bytes:
    """The strategy's complete checkpoint (and optionally the search loop's state) as bytes.

    Files (`save_checkpoint`) hold exactly these bytes; the service keeps the same payload
    in pieces (`checkpoint_payload`).
    """
    return to_bytes(checkpoint_payload(strategy, strategy.state_dict(), loop=loop))


def checkpoint_payload(strategy: Strategy, state: dict, *, loop: dict | None = None) -> dict:
    """The checkpoint as a dict: the envelope (format, version, what the strategy is) and
    `state` (its state_dict(); the service stores the envelope with an empty state and each
    entry of the state apart, workers/strategy_store.py)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "strategy": strategy.name,
        "settings": dict(strategy.settings),
        "seed": strategy.seed,
        "space": strategy.space.to_dict(),
        "state": state,
        "loop": loop,
    }


def to_bytes(value: object) -> bytes:
    """torch.save bytes, loadable with weights_only=True (tensors, containers, numbers)."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def from_bytes(data: bytes, where: str) -> object:
    """What to_bytes wrote; StrategyError naming `where` if it is unreadable."""
    try:
        return torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign data
        raise StrategyError("checkpoint", f"{where}: unreadable, truncated or not a checkpoint ({exc})") from exc


def parse_checkpoint(data: bytes, where: str = "checkpoint") -> dict:
    """The payload of checkpoint bytes, its envelope checked (`where` names the source)."""
    return check_envelope(from_bytes(data, where), where)


def check_envelope(payload: object, where: str = "checkpoint") -> dict:
    """`payload` if it is a checkpoint this code reads; StrategyError naming the field if not."""
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise StrategyError("checkpoint", f"{where}: not a strategy checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise StrategyError(
            "checkpoint.version",
            f"{where}: format version {payload.get('version')!r}, this code reads {CHECKPOINT_VERSION}",
        )
    for key in ("strategy", "settings", "seed", "space", "state"):
        if key not in payload:
            raise StrategyError(f"checkpoint.{key}", f"{where}: missing")
    return payload


def save_checkpoint(strategy: Strategy, path: str | os.PathLike, *, loop: dict | None = None) -> None:
    """Write the strategy (and optionally the search loop's own state) atomically to `path`."""
    data = checkpoint_bytes(strategy, loop=loop)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint's payload, its envelope checked. Never writes anything."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StrategyError("checkpoint", f"{path}: no such file") from None
    except OSError as exc:
        raise StrategyError("checkpoint", f"{path}: cannot read ({exc.strerror})") from None
    return parse_checkpoint(data, str(path))


def check_space(payload: dict, space: SearchSpace) -> None:
    """The checkpoint was made for `space`; StrategyError (`checkpoint.space`) if not."""
    try:
        saved = SearchSpace.from_dict(payload["space"])
    except ValueError as exc:
        raise StrategyError("checkpoint.space", f"invalid ({exc})") from exc
    if saved != space:
        raise StrategyError("checkpoint.space", f"checkpoint was made for {saved.to_dict()}, not {space.to_dict()}")


def restore_into(strategy: Strategy, payload: dict) -> None:
    """Load a checkpoint payload into an existing strategy built from the same spec."""
    if payload["strategy"] != strategy.name:
        raise StrategyError("checkpoint.strategy", f"holds a {payload['strategy']!r} strategy, not {strategy.name!r}")
    check_space(payload, strategy.space)
    if payload["settings"] != strategy.settings:
        raise StrategyError(
            "checkpoint.settings", f"checkpoint settings {payload['settings']} differ from {strategy.settings}"
        )
    strategy.load_state_dict(payload["state"])
