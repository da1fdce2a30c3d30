"""After the search: which architectures are trained again, how, and how they are ranked.

Zoph et al. 2017, sec. 4: of about 20,000 sampled children, "the top 250 architectures"
were trained until convergence and the best of them chosen: one short training per child
is too noisy to pick a winner from (the winner's curse). A selection here does the same,
scaled to the search: its top K distinct architectures (by the search's reward), each with
a longer recipe and several seeds, ranked by the mean of their validation accuracy. The
test split is never read: it scores the winner once, after transfer.

A noise floor is the same machinery pointed the other way: a few children trained again
with the very recipe of the search and other seeds, to measure how far one cell's reward
moves by chance. A difference between two children smaller than that is not a difference.

Defaults, scaled from the paper's:
- top_k: 250 of 20,000 is 1.25% of the children; at least 3, at most 250;
- seeds: 2 (the least that gives a spread);
- epochs: twice the search child's (the paper went from 20 epochs to convergence, about
  30x; twice is what a CPU demo affords, and the recipe is the user's to change);
- noise floor: 2 children x 2 more seeds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from nas_engine.errors import FieldError
from nas_engine.trainer import Recipe

PAPER_CHILDREN, PAPER_TOP_K = 20_000, 250
MIN_TOP_K = 3
DEFAULT_SEEDS = 2
EPOCHS_FACTOR = 2
NOISE_FLOOR_CHILDREN, NOISE_FLOOR_SEEDS = 2, 2
MAX_SEEDS = 100  # a sanity bound; deployments set a lower one (NAS_MAX_SELECTION_SEEDS)


class SelectionError(FieldError):
    """A selection option is invalid; `field` names it."""


@dataclass(frozen=True)
class Candidate:
    """A trained child of a search, as a selection sees it."""

    architecture: int
    canonical_hash: str
    reward: float
    sample_index: int


def default_top_k(children: int) -> int:
    """The paper's share of the children (250 of 20,000), within [3, 250]."""
    return max(MIN_TOP_K, min(PAPER_TOP_K, round(children * PAPER_TOP_K / PAPER_CHILDREN)))


def distinct(candidates: list[Candidate]) -> list[Candidate]:
    """One candidate per genotype (canonical hash), its first sample, in sample order: a
    duplicate the search reused is the same cell, not another one to train."""
    first: dict[str, Candidate] = {}
    for c in sorted(candidates, key=lambda c: c.sample_index):
        first.setdefault(c.canonical_hash, c)
    return list(first.values())


def top_k(candidates: list[Candidate], k: int) -> list[Candidate]:
    """The k best distinct architectures: highest reward first, ties to the earlier sample."""
    ranked = sorted(distinct(candidates), key=lambda c: (-c.reward, c.sample_index))
    if k > len(ranked):
        raise SelectionError(
            "top_k", f"{k} is more than the {len(ranked)} distinct architectures with a reward in this search"
        )
    return ranked[:k]


def noise_floor_sample(candidates: list[Candidate], k: int, seed: int) -> list[Candidate]:
    """k distinct children drawn at random (seeded): the noise of a typical child, not of
    the best ones only."""
    cells = distinct(candidates)
    return random.Random(f"noise-floor:{seed}").sample(cells, min(k, len(cells)))


def selection_recipe(child: Recipe, overrides: dict | None = None) -> Recipe:
    """The search child's recipe trained longer (EPOCHS_FACTOR), with `overrides` on top."""
    base = {**child.to_dict(), "epochs": child.epochs * EPOCHS_FACTOR}
    return Recipe.from_dict({**base, **(overrides or {})})


def seeds_for(kind_is_noise_floor: bool, child_seed: int, seeds: int) -> list[int]:
    """Training seeds of the runs. A noise floor must not repeat the search's own seed (its
    reward is already one sample), a top-K selection starts from 0."""
    start = child_seed + 1 if kind_is_noise_floor else 0
    return list(range(start, start + seeds))


def check_count(value: object, field: str, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SelectionError(field, f"must be an integer, got {value!r}")
    if not 1 <= value <= high:
        raise SelectionError(field, f"must be between 1 and {high}, got {value}")
    return value


def validate_auto_selection(data: object) -> dict | None:
    """The spec's `selection` field: null (none when the search finishes), or
    {"top_k": int|null, "seeds": int, "epochs": int|null} to run one automatically."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise SelectionError("selection", "must be an object or null")
    unknown = set(data) - {"top_k", "seeds", "epochs"}
    if unknown:
        raise SelectionError(f"selection.{sorted(unknown)[0]}", "unknown field; allowed: epochs, seeds, top_k")
    out = {"top_k": None, "seeds": DEFAULT_SEEDS, "epochs": None}
    if data.get("top_k") is not None:
        out["top_k"] = check_count(data["top_k"], "selection.top_k", PAPER_TOP_K * 4)
    if data.get("seeds") is not None:
        out["seeds"] = check_count(data["seeds"], "selection.seeds", MAX_SEEDS)
    if data.get("epochs") is not None:
        out["epochs"] = check_count(data["epochs"], "selection.epochs", 10_000)
    return out


def validate_noise_floor(data: object) -> dict | None:
    """The spec's `noise_floor` field: null (not measured), or {"children": int, "seeds": int}."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise SelectionError("noise_floor", "must be an object or null")
    unknown = set(data) - {"children", "seeds"}
    if unknown:
        raise SelectionError(f"noise_floor.{sorted(unknown)[0]}", "unknown field; allowed: children, seeds")
    return {
        "children": check_count(data.get("children", NOISE_FLOOR_CHILDREN), "noise_floor.children", 50),
        "seeds": check_count(data.get("seeds", NOISE_FLOOR_SEEDS), "noise_floor.seeds", MAX_SEEDS),
    }
