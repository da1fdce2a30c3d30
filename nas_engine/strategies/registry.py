"""The strategies by name: building one from a spec, its default settings, and rebuilding
one from a checkpoint file.

This module imports every strategy module and none of them imports it, so a strategy
(and `base.py`) never depends on the registry; the package `nas_engine.strategies`
re-exports what is here.
"""

from __future__ import annotations

import os

from nas_engine.space import SearchSpace
from nas_engine.strategies.base import Strategy, StrategyError, check_space, read_checkpoint
from nas_engine.strategies.evolution import RegularizedEvolution
from nas_engine.strategies.policy_gradient import PPO, Reinforce
from nas_engine.strategies.random_search import RandomSearch

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (RandomSearch, RegularizedEvolution, Reinforce, PPO)}


def make_strategy(name: str, space: SearchSpace, settings: dict | None = None, seed: int = 0) -> Strategy:
    """Build a strategy by name. Unknown names and invalid settings raise StrategyError."""
    if not isinstance(name, str) or name not in STRATEGIES:
        raise StrategyError("strategy.name", f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    return STRATEGIES[name](space, settings, seed)


def checked_settings(name: str, settings: dict | None) -> dict:
    """A strategy's settings resolved and checked, without building it (no controller)."""
    if not isinstance(name, str) or name not in STRATEGIES:
        raise StrategyError("strategy.name", f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    return STRATEGIES[name].checked_settings(settings)


def default_settings(name: str) -> dict:
    """Every setting of a strategy with its default (for forms and docs)."""
    if name not in STRATEGIES:
        raise StrategyError("strategy.name", f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    return {key: s.default for key, s in STRATEGIES[name].settings_spec().items()}


def load_checkpoint(path: str | os.PathLike, space: SearchSpace, *, expect: str | None = None) -> Strategy:
    """Rebuild the strategy saved at `path`. `expect`: the strategy name it must hold."""
    payload = read_checkpoint(path)
    if expect is not None and payload["strategy"] != expect:
        raise StrategyError("checkpoint.strategy", f"{path}: holds a {payload['strategy']!r} strategy, not {expect!r}")
    check_space(payload, space)
    strategy = make_strategy(payload["strategy"], space, payload["settings"], payload["seed"])
    strategy.load_state_dict(payload["state"])
    return strategy
