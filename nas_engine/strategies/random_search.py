"""Random search: every decision uniform, the paper's baseline (Zoph et al. 2017, sec. 4.4)."""

from __future__ import annotations

import random

from nas_engine.strategies.base import Strategy, UpdateStats


class RandomSearch(Strategy):
    name = "random"

    def __init__(self, space, settings=None, seed=0):
        super().__init__(space, settings, seed)
        self._rng = random.Random(self.seed)

    def _propose(self, n: int) -> list[tuple[list[int], dict]]:
        return [([self._rng.randrange(size) for size in self.sizes], {}) for _ in range(n)]

    def _observe(self, proposal_id: int, entry: dict, reward: float) -> UpdateStats | None:
        return None

    def _state(self) -> dict:
        return {"rng": self._rng.getstate()}

    def _load_state(self, state: dict) -> None:
        self._rng.setstate(state["rng"])
