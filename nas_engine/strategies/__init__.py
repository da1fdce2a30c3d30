"""Search strategies behind one interface (see `base.py`), and their registry.

    strategy = make_strategy("ppo", space, {"lr": 0.00035}, seed=0)
    proposals = strategy.ask(4)
    stats = strategy.tell(proposals[0].id, 0.91)        # UpdateStats | None
    save_checkpoint(strategy, "search.pt")
    strategy = load_checkpoint("search.pt", space, expect="ppo")

| name       | what                                                       | module            |
|------------|------------------------------------------------------------|-------------------|
| random     | every decision uniform (the paper's baseline)               | random_search.py  |
| evolution  | regularized (aging) evolution, Real et al. 2018             | evolution.py      |
| reinforce  | the NASNet controller, plain policy gradient                | policy_gradient.py|
| ppo        | the NASNet controller trained with PPO (the paper's method) | policy_gradient.py|
"""

from __future__ import annotations

from nas_engine.space import SearchSpace
from nas_engine.strategies.base import (
    Proposal,
    Setting,
    Strategy,
    StrategyError,
    UpdateStats,
    load_checkpoint,
    read_checkpoint,
    restore_into,
    save_checkpoint,
)
from nas_engine.strategies.evolution import RegularizedEvolution
from nas_engine.strategies.policy_gradient import PPO, Reinforce
from nas_engine.strategies.random_search import RandomSearch

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (RandomSearch, RegularizedEvolution, Reinforce, PPO)}


def make_strategy(name: str, space: SearchSpace, settings: dict | None = None, seed: int = 0) -> Strategy:
    """Build a strategy by name. Unknown names and invalid settings raise StrategyError."""
    if not isinstance(name, str) or name not in STRATEGIES:
        raise StrategyError("strategy.name", f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    return STRATEGIES[name](space, settings, seed)


def default_settings(name: str) -> dict:
    """Every setting of a strategy with its default (for forms and docs)."""
    if name not in STRATEGIES:
        raise StrategyError("strategy.name", f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    return {key: s.default for key, s in STRATEGIES[name].settings_spec().items()}


__all__ = [
    "STRATEGIES",
    "PPO",
    "Proposal",
    "RandomSearch",
    "RegularizedEvolution",
    "Reinforce",
    "Setting",
    "Strategy",
    "StrategyError",
    "UpdateStats",
    "default_settings",
    "load_checkpoint",
    "make_strategy",
    "read_checkpoint",
    "restore_into",
    "save_checkpoint",
]
