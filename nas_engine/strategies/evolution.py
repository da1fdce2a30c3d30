"""Regularized (aging) evolution: Real, Aggarwal, Huang, Le, "Regularized Evolution for
Image Classifier Architecture Search" (arXiv 1802.01548, AAAI 2019), algorithm 1.

- The population is a queue of the `population_size` most recently *told* children: a new
  child joins on the right, the oldest leaves on the left (aging, not worst-removal).
- Until the population is full, proposals are uniformly random.
- Then every proposal is a tournament: `tournament_size` members sampled without
  replacement, the fittest is the parent, the child is a mutation of it. Each `ask` runs
  its own tournament over the population as it is, so parallel asks work.
- Mutation: with probability `identity_prob` the child is a copy (the paper's identity
  mutation). Otherwise one cell type, one block and one decision of that block are picked
  uniformly and the decision gets a different value, uniformly. The decisions of a block
  are its two inputs and two ops (the paper's "hidden state" and "op" mutations, each with
  probability 1/2 and each half with 1/2) and, in a space that offers more than one combine
  method (the paper's space has add only), its combine, making it one of five.
- A failed child is dropped (never joins the population) unless `failure_reward` is set.

Defaults are the paper's: population 100, tournament 25, identity probability 0.05.

Early stopping (`Fidelity`, docs/early-stopping.md): a child stopped at a rung joins the
population (it was sampled, so it ages like any other) with the epoch it reached, and a
tournament ranks members by how far they were trained, then by reward: a child stopped
at a lower rung never beats one that went further, and values are only compared at the
same rung, where they mean the same thing. A child trained in full outranks every stopped
one. Without early stopping every member is "trained in full", so nothing changes.

State: the history of every told child (id, decisions, reward, the epoch it stopped at or
0) is kept compactly (one byte per decision); the population is its last
`population_size` entries, so a checkpoint stores the history and the population is
rebuilt from it.
"""

from __future__ import annotations

import math
import random
from collections import deque

import torch

from nas_engine.strategies.base import Fidelity, Setting, Strategy, StrategyError, UpdateStats

DECISIONS_PER_BLOCK = 5
FULL = 0  # the stopped-at epoch recorded for a child trained in full


class RegularizedEvolution(Strategy):
    name = "evolution"
    SETTINGS = {
        "population_size": Setting(100, int, low=2),
        "tournament_size": Setting(25, int, low=1),
        "identity_prob": Setting(0.05, float, low=0.0, high=1.0),
    }

    def __init__(self, space, settings=None, seed=0):
        super().__init__(space, settings, seed)
        self._rng = random.Random(self.seed)
        self._population: deque[tuple[int, list[int], float, int]] = deque()
        self._history_ids: list[int] = []
        self._history_rewards: list[float] = []
        self._history_stopped: list[int] = []  # the epoch a child was stopped at, or FULL
        self._history_decisions = bytearray()  # len(sizes) bytes per child; every size < 256

    @classmethod
    def check_settings(cls, settings: dict) -> None:
        if settings["tournament_size"] > settings["population_size"]:
            raise StrategyError(
                "strategy.settings.tournament_size",
                f"{settings['tournament_size']} exceeds population_size {settings['population_size']}",
            )

    # -- proposals ---------------------------------------------------------------------------
    def _propose(self, n: int) -> list[tuple[list[int], dict]]:
        out = []
        for _ in range(n):
            if len(self._population) < self.settings["population_size"]:
                out.append(([self._rng.randrange(s) for s in self.sizes], {"parent": -1, "mutation": "random"}))
                continue
            sample = self._rng.sample(range(len(self._population)), self.settings["tournament_size"])
            parent_id, parent, _, _ = self._population[max(sample, key=lambda i: _rank(self._population[i]))]
            child, mutation = self._mutate(parent)
            out.append((child, {"parent": parent_id, "mutation": mutation}))
        return out

    def _mutate(self, parent: list[int]) -> tuple[list[int], str]:
        child = list(parent)
        if self._rng.random() < self.settings["identity_prob"]:
            return child, "identity"
        cell = self._rng.randrange(len(self.space.cell_types))
        block = self._rng.randrange(self.space.num_blocks)
        first = (cell * self.space.num_blocks + block) * DECISIONS_PER_BLOCK
        mutable = [first + j for j in range(DECISIONS_PER_BLOCK) if self.sizes[first + j] > 1]
        k = self._rng.choice(mutable)  # never empty: a block always has >= 2 inputs to choose from
        new = self._rng.randrange(self.sizes[k] - 1)
        child[k] = new + (new >= child[k])  # uniform over the other values
        what = ("input", "input", "op", "op", "combine")[(k - first)]
        return child, what

    def _observe(self, proposal_id: int, entry: dict, reward: float, stopped_at: int = FULL) -> UpdateStats | None:
        decisions = list(entry["decisions"])
        self._population.append((proposal_id, decisions, reward, stopped_at))
        if len(self._population) > self.settings["population_size"]:
            self._population.popleft()
        self._history_ids.append(proposal_id)
        self._history_rewards.append(reward)
        self._history_stopped.append(stopped_at)
        self._history_decisions += bytes(decisions)
        return None

    def _observe_fidelity(self, proposal_id: int, entry: dict, reward: float, fidelity: Fidelity):
        return self._observe(proposal_id, entry, reward, fidelity.epochs if fidelity.stopped else FULL)

    # -- read access ----------------------------------------------------------------------------
    def population(self) -> list[tuple[int, list[int], float]]:
        """(proposal id, decisions, reward) of the current members, oldest first."""
        return [(pid, list(d), r) for pid, d, r, _ in self._population]

    def stopped_at(self) -> list[int]:
        """The epoch each current member was stopped at (0: trained in full), oldest first."""
        return [stopped for *_, stopped in self._population]

    def history(self) -> list[tuple[int, list[int], float]]:
        """(proposal id, decisions, reward) of every told child, in the order told."""
        n, d = len(self.sizes), self._history_decisions
        rows = zip(self._history_ids, self._history_rewards)
        return [(pid, list(d[i * n : (i + 1) * n]), r) for i, (pid, r) in enumerate(rows)]

    # -- state ------------------------------------------------------------------------------------
    def _state(self) -> dict:
        decisions = _bytes_tensor(self._history_decisions)
        return {
            "rng": self._rng.getstate(),
            "history_ids": torch.tensor(self._history_ids, dtype=torch.int64),
            "history_rewards": torch.tensor(self._history_rewards, dtype=torch.float64),
            "history_stopped": torch.tensor(self._history_stopped, dtype=torch.int64),
            "history_decisions": decisions.reshape(len(self._history_ids), len(self.sizes)),
        }

    def _load_state(self, state: dict) -> None:
        ids = state["history_ids"].tolist()
        rewards = state["history_rewards"].tolist()
        decisions = state["history_decisions"]
        if decisions.dtype != torch.uint8 or tuple(decisions.shape) != (len(ids), len(self.sizes)):
            raise ValueError(
                f"history_decisions has shape {tuple(decisions.shape)}, expected ({len(ids)}, {len(self.sizes)})"
            )
        # A checkpoint written before early stopping has no history_stopped: all trained in full.
        stopped = state["history_stopped"].tolist() if "history_stopped" in state else [FULL] * len(ids)
        if not len(rewards) == len(stopped) == len(ids):
            raise ValueError("history_ids, history_rewards and history_stopped differ in length")
        self._rng.setstate(state["rng"])
        self._history_ids = [int(i) for i in ids]
        self._history_rewards = [float(r) for r in rewards]
        self._history_stopped = [int(e) for e in stopped]
        self._history_decisions = bytearray(decisions.contiguous().numpy().tobytes())
        keep = self.settings["population_size"]  # aging: the population is the last `keep` told
        members = zip(
            self._history_ids[-keep:], decisions[-keep:].tolist(), self._history_rewards[-keep:], stopped[-keep:]
        )
        self._population = deque((pid, row, r, int(e)) for pid, row, r, e in members)


def _rank(member: tuple[int, list[int], float, int]) -> tuple[float, float]:
    """How far a member was trained (in full ranks above any rung), then its reward."""
    _, _, reward, stopped_at = member
    return (math.inf if stopped_at == FULL else stopped_at, reward)


def _bytes_tensor(data: bytearray) -> torch.Tensor:
    """A uint8 tensor holding a copy of `data` (frombuffer refuses an empty buffer)."""
    if not data:
        return torch.zeros(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)
