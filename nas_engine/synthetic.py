"""A seeded, training-free reward over genotypes, standing in for validation accuracy.

It exists to test search strategies (does a strategy learn? does a checkpoint resume
exactly?) and to smoke- and load-test a deployment without GPUs or data sets: plug a
`SyntheticObjective` in wherever a child would be trained. It is not a model of how real
cells perform; it only has the kind of structure a search must discover.

The score of a genotype is a sum over its blocks (normal and reduction cells have their
own tables, all drawn from `seed`). For a block reading states (s_a, s_b) with ops
(o_a, o_b) and combine m, with kind(s) in {h0, h1, block} saying which kind of state s is:

    op(kind(s_a), o_a) + op(kind(s_b), o_b)     per-decision effects: some ops are good,
                                                  some especially on some kind of input
    + pair(o_a, o_b)                              op-pair interactions: a few synergies and
                                                  clashes (symmetric)
    + wiring(kind(s_a), kind(s_b))                input-wiring interaction (symmetric)
    + same_input * [s_a == s_b]                   reading one state twice
    + combine(m)

Every term is invariant under renumbering blocks and swapping the halves of a block, so
genotypes with the same `canonical_hash()` get the same reward (the search loop's
duplicate reuse relies on that). The score is standardised with its exact mean and
standard deviation under uniform random decisions in the given space, z, and mapped to
a bounded, accuracy-like reward: reward = sigmoid(REWARD_SCALE * z - REWARD_SHIFT), so a
random architecture scores about 0.38 and the optimum near 1.

`optimum()` is exact: the score is a sum of per-block terms, each depending only on that
block's own decisions, so the best genotype takes the best (inputs, ops, combine) of every
block by enumeration.

Optional: `noise` (std of Gaussian noise added to the reward, seeded by the seed and the
genotype's canonical hash, so deterministic per architecture), `failure_rate` (share of
architectures, likewise chosen by hash, whose evaluation fails: returns None) and
`duration_s` (each call sleeps that long, to load-test workers).

Learning curves, for early stopping (`curve`, `train`): the validation value after each of
E epochs. The last one is exactly the reward above (`self(genotype)`: noise and failure
included), so a search that trains every child in full sees nothing new. Before it,
with R the noiseless reward and x = e / E,

    value(e) = FLOOR + (R - FLOOR) * (1 - exp(-k x)) / (1 - exp(-k)) + curve_noise * N(0, 1)

clipped to [0, 1]: a saturating curve from chance level (FLOOR, 10 classes) to R. The
learning speed k is per architecture, log-normal (median SPEED_MEDIAN, log-std
SPEED_SPREAD) and seeded by (seed, canonical hash), independent of R: a fast learner
with a mediocre R leads a slow one with a better R early on, so curves cross and an
early ranking is an imperfect guess of the final one, as with real children. The
per-epoch noise is seeded by (seed, canonical hash, epoch): the same architecture has
the same curve every time, in any thread.
"""

from __future__ import annotations

import math
import random
import time
from itertools import combinations_with_replacement, product

from nas_engine.genotype import Block, Cell, Genotype
from nas_engine.space import CELL_TYPES, COMBINES, NUM_CELL_INPUTS, OPS, SearchSpace

KINDS = ("h0", "h1", "block")
REWARD_SCALE = 0.5
REWARD_SHIFT = 0.5
# Per cell type: std of an op's overall quality, of its input-kind specific part, of the
# wiring and combine effects; share and size of op-pair synergies and clashes.
OP_STD, OP_KIND_STD, WIRING_STD, COMBINE_STD = 1.0, 0.6, 0.5, 0.5
PAIR_RATE, PAIR_SIZE = 0.1, 1.5
SAME_INPUT_MEAN, SAME_INPUT_STD = -0.5, 0.3
# Learning curves: chance level, the median learning speed and the log-std of speeds.
# With these, the rank correlation (Spearman) between an epoch's value and the final reward
# of random architectures is 0.55 after 1 of 20 epochs, 0.68 after 3 and 0.9 after 10.
FLOOR = 0.1
SPEED_MEDIAN, SPEED_SPREAD = 3.0, 0.8


def _kind(state: int) -> str:
    return KINDS[min(state, NUM_CELL_INPUTS)]


class SyntheticObjective:
    """`objective(genotype) -> reward in [0, 1]` (or None for a simulated failure)."""

    def __init__(
        self,
        space: SearchSpace | None = None,
        seed: int = 0,
        *,
        noise: float = 0.0,
        failure_rate: float = 0.0,
        duration_s: float = 0.0,
        curve_noise: float = 0.01,
    ):
        if noise < 0 or not 0 <= failure_rate <= 1 or duration_s < 0 or curve_noise < 0:
            raise ValueError("noise, curve_noise and duration_s must be >= 0 and failure_rate in [0, 1]")
        self.space = space or SearchSpace()
        self.seed, self.noise, self.failure_rate, self.duration_s = seed, noise, failure_rate, duration_s
        self.curve_noise = curve_noise
        self._tables = {cell: _draw_tables(random.Random(f"{seed}:{cell}")) for cell in CELL_TYPES}
        self._mean, variance = 0.0, 0.0
        self._best_blocks: dict[str, list[Block]] = {}
        self._best_score = 0.0
        for cell in CELL_TYPES:
            self._best_blocks[cell] = []
            for block in range(self.space.num_blocks):
                mean, var, best_score, best = self._block_stats(cell, block)
                self._mean += mean
                variance += var
                self._best_score += best_score
                self._best_blocks[cell].append(best)
        self._std = math.sqrt(variance)

    # -- scoring -----------------------------------------------------------------------------
    def block_score(self, cell: str, block: Block) -> float:
        t = self._tables[cell]
        (s_a, s_b), (o_a, o_b) = block.inputs, block.ops
        k_a, k_b = _kind(s_a), _kind(s_b)
        terms = (
            t["op"][k_a, o_a],
            t["op"][k_b, o_b],
            t["pair"][_pair(o_a, o_b)],
            t["wiring"][_pair(k_a, k_b)],
            t["same_input"] * (s_a == s_b),
            t["combine"][block.combine],
        )
        return math.fsum(terms)

    def score(self, genotype: Genotype) -> float:
        """The raw score: a sum of per-block terms, exactly rounded (fsum), so the same
        blocks in another order give the same float."""
        return math.fsum(self.block_score(name, b) for name, cell in genotype.cells().items() for b in cell.blocks)

    def z(self, genotype: Genotype) -> float:
        """The score standardised under uniform random decisions in this space."""
        return (self.score(genotype) - self._mean) / self._std

    def reward(self, genotype: Genotype) -> float:
        """The noiseless reward in (0, 1)."""
        return 1.0 / (1.0 + math.exp(-(REWARD_SCALE * self.z(genotype) - REWARD_SHIFT)))

    def __call__(self, genotype: Genotype) -> float | None:
        return self.draw(genotype, 0)

    def draw(self, genotype: Genotype, draw: int) -> float | None:
        """The reward of another training of the same architecture (another seed): draw 0
        is `self(genotype)`; other draws have their own noise, seeded the same way, and the
        same failure (a failing architecture fails on every draw)."""
        if self.duration_s:
            time.sleep(self.duration_s)
        return self._final(genotype, draw)

    def _final(self, genotype: Genotype, draw: int = 0) -> float | None:
        if not (self.noise or self.failure_rate):
            return self.reward(genotype)
        rng = random.Random(f"{self.seed}:{genotype.canonical_hash()}")
        if rng.random() < self.failure_rate:
            return None
        if draw:
            rng = random.Random(f"{self.seed}:{genotype.canonical_hash()}:{draw}")
        return min(1.0, max(0.0, self.reward(genotype) + self.noise * rng.gauss(0.0, 1.0)))

    def speed(self, genotype: Genotype) -> float:
        """The architecture's learning speed k (see the module doc)."""
        rng = random.Random(f"{self.seed}:{genotype.canonical_hash()}:speed")
        return SPEED_MEDIAN * math.exp(SPEED_SPREAD * rng.gauss(0.0, 1.0))

    def curve(self, genotype: Genotype, epochs: int) -> list[float] | None:
        """The validation value after each of `epochs` epochs (the last is `self(genotype)`),
        or None for an architecture whose evaluation fails. No sleeping: see `train`."""
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
        final = self._final(genotype)
        if final is None:
            return None
        h, r = genotype.canonical_hash(), self.reward(genotype)
        k = self.speed(genotype)
        scale = (r - FLOOR) / -math.expm1(-k)
        values = []
        for epoch in range(1, epochs):
            noise = random.Random(f"{self.seed}:{h}:epoch:{epoch}").gauss(0.0, 1.0)
            mean = FLOOR + scale * -math.expm1(-k * epoch / epochs)
            values.append(min(1.0, max(0.0, mean + self.curve_noise * noise)))
        return values + [final]

    def train(self, genotype: Genotype, epochs: int, on_epoch=None, start: int = 0) -> float | None:
        """Stand in for training a child: report each epoch's value to `on_epoch(epoch,
        value)`, which returns False to stop it there; `duration_s` is spread over the
        epochs. Returns the final reward, or None when it failed or was stopped. `start`:
        epochs already played (a training resumed after them), neither slept nor reported
        again: the curve is a function of the cell."""
        values = self.curve(genotype, epochs)
        if values is None:
            if self.duration_s:
                time.sleep(self.duration_s / epochs)  # a failure shows up after an epoch or so
            return None
        for epoch, value in enumerate(values[start:], start=start + 1):
            if self.duration_s:
                time.sleep(self.duration_s / epochs)
            if on_epoch is not None and on_epoch(epoch, value) is False:
                return None
        return values[-1]

    def optimum(self) -> tuple[Genotype, float]:
        """The best genotype of the space and its (noiseless) reward, exactly."""
        genotype = Genotype(**{cell: Cell(tuple(blocks)) for cell, blocks in self._best_blocks.items()})
        return genotype, self.reward(genotype)

    # -- exact statistics of one block -------------------------------------------------------
    def _block_stats(self, cell: str, index: int) -> tuple[float, float, float, Block]:
        """Mean and variance of a block's score under uniform decisions, its max and argmax.

        The inputs enter the score only through (kind, kind, same state?), so the input
        pairs are enumerated by class, weighted by how many pairs fall in each class.
        """
        t, ops, combines = self._tables[cell], self.space.ops, self.space.combines
        classes: dict[tuple, list] = {}  # (kind_a, kind_b, same) -> [count, representative inputs]
        for s_a, s_b in product(range(self.space.num_inputs(index)), repeat=2):
            entry = classes.setdefault((_kind(s_a), _kind(s_b), s_a == s_b), [0, (s_a, s_b)])
            entry[0] += 1
        count = total = sum_sq = 0.0
        best = (-math.inf, None, None)
        for (k_a, k_b, same), (n, inputs) in classes.items():
            base = t["wiring"][_pair(k_a, k_b)] + t["same_input"] * same
            for o_a, o_b in product(ops, repeat=2):
                v = base + t["op"][k_a, o_a] + t["op"][k_b, o_b] + t["pair"][_pair(o_a, o_b)]
                count, total, sum_sq = count + n, total + n * v, sum_sq + n * v * v
                if v > best[0]:
                    best = (v, inputs, (o_a, o_b))
        # The combine is chosen independently of inputs and ops: its moments add.
        comb = [t["combine"][m] for m in combines]
        comb_mean = sum(comb) / len(comb)
        mean = total / count + comb_mean
        var = sum_sq / count - (total / count) ** 2 + sum(c * c for c in comb) / len(comb) - comb_mean**2
        best_combine = max(combines, key=lambda m: t["combine"][m])
        best_score = best[0] + t["combine"][best_combine]
        return mean, max(var, 0.0), best_score, Block(best[1], best[2], best_combine)


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def _draw_tables(rng: random.Random) -> dict:
    """One cell type's effects, drawn over the full op menu (a restricted space sees a subset)."""
    quality = {op: rng.gauss(0.0, OP_STD) for op in OPS}
    op = {(kind, o): quality[o] + rng.gauss(0.0, OP_KIND_STD) for kind in KINDS for o in OPS}
    pair = {}
    for a, b in combinations_with_replacement(sorted(OPS), 2):
        u = rng.random()
        sign = 1.0 if u < PAIR_RATE / 2 else -1.0 if u < PAIR_RATE else 0.0
        pair[a, b] = sign * PAIR_SIZE * (1.0 + 0.2 * rng.gauss(0.0, 1.0))
    wiring = {(a, b): rng.gauss(0.0, WIRING_STD) for a, b in combinations_with_replacement(sorted(KINDS), 2)}
    combine = {m: rng.gauss(0.0, COMBINE_STD) for m in COMBINES}
    same_input = rng.gauss(SAME_INPUT_MEAN, SAME_INPUT_STD)
    return {"op": op, "pair": pair, "wiring": wiring, "combine": combine, "same_input": same_input}
