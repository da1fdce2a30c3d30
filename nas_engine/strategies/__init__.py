"""Search strategies behind one interface (see `base.py`), and their registry
(`registry.py`), re-exported here.

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

from nas_engine.strategies.base import (
    Proposal,
    Setting,
    Strategy,
    StrategyError,
    UpdateStats,
    read_checkpoint,
    restore_into,
    save_checkpoint,
)
from nas_engine.strategies.evolution import RegularizedEvolution
from nas_engine.strategies.policy_gradient import PPO, Reinforce
from nas_engine.strategies.random_search import RandomSearch
from nas_engine.strategies.registry import (
    STRATEGIES,
    checked_settings,
    default_settings,
    load_checkpoint,
    make_strategy,
)

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
    "checked_settings",
    "default_settings",
    "load_checkpoint",
    "make_strategy",
    "read_checkpoint",
    "restore_into",
    "save_checkpoint",
]
