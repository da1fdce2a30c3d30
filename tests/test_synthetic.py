"""The synthetic objective: seeded, bounded, invariant, with an exact optimum."""

from __future__ import annotations

import itertools
import random
import statistics
import threading
import time

import pytest

from nas_engine.cells import KNOWN_CELLS
from nas_engine.genotype import Block, Cell, Genotype
from nas_engine.space import SearchSpace
from nas_engine.synthetic import SyntheticObjective

SPACE = SearchSpace()
SMALL_SPACE = SearchSpace(ops=("identity", "sep_conv_3x3", "max_pool_3x3"), num_blocks=3, combines=("add",))


def random_genotypes(space, n, seed=0):
    rng = random.Random(seed)
    return [Genotype.from_decisions(space, [rng.randrange(s) for s in space.decision_sizes()]) for _ in range(n)]


def swap_halves(genotype: Genotype) -> Genotype:
    def swap(cell):
        return Cell(tuple(Block(b.inputs[::-1], b.ops[::-1], b.combine) for b in cell.blocks), cell.output)

    return Genotype(normal=swap(genotype.normal), reduce=swap(genotype.reduce))


def test_it_is_seeded_and_deterministic():
    genotypes = random_genotypes(SPACE, 20)
    a, b, c = SyntheticObjective(SPACE, 0), SyntheticObjective(SPACE, 0), SyntheticObjective(SPACE, 1)
    assert [a(g) for g in genotypes] == [b(g) for g in genotypes]
    assert [a(g) for g in genotypes] != [c(g) for g in genotypes]


@pytest.mark.parametrize("space", [SPACE, SMALL_SPACE, SearchSpace(num_blocks=8)], ids=["paper", "small", "b8"])
def test_rewards_are_bounded_and_standardised_against_random_search(space):
    objective = SyntheticObjective(space, 3)
    genotypes = random_genotypes(space, 3000)
    zs = [objective.z(g) for g in genotypes]
    assert statistics.mean(zs) == pytest.approx(0.0, abs=0.06)  # exact moments, checked by sampling
    assert statistics.stdev(zs) == pytest.approx(1.0, abs=0.06)
    assert all(0.0 < objective(g) < 1.0 for g in genotypes)
    noisy = SyntheticObjective(space, 3, noise=0.5)
    assert all(0.0 <= noisy(g) <= 1.0 for g in genotypes[:300])


def test_the_same_cell_written_two_ways_gets_the_same_reward():
    objective = SyntheticObjective(SPACE, 0, noise=0.05)
    for g in random_genotypes(SPACE, 200) + list(KNOWN_CELLS.values()):
        assert objective(g.canonical()) == objective(g)
        assert objective(swap_halves(g)) == objective(g)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_optimum_is_the_best_of_every_single_change_and_of_random_search(seed):
    objective = SyntheticObjective(SPACE, seed)
    best, reward = objective.optimum()
    assert best.validate(SPACE) == best and objective(best) == reward
    decisions = best.to_decisions(SPACE)
    for k, size in enumerate(SPACE.decision_sizes()):
        for value in range(size):
            neighbour = Genotype.from_decisions(SPACE, decisions[:k] + [value] + decisions[k + 1 :])
            assert objective(neighbour) <= reward
    best_of_500 = max(objective(g) for g in random_genotypes(SPACE, 500, seed))
    assert best_of_500 < reward - 0.15  # random search's best is clearly below the optimum
    assert 0.95 < reward < 1.0


def test_the_optimum_is_exact_by_brute_force_in_a_tiny_space():
    """The score adds over cells, so checking every normal cell (reduction fixed at the
    optimum's) and every reduction cell (normal fixed) covers the whole space."""
    space = SearchSpace(ops=("identity", "sep_conv_3x3"), num_blocks=2, combines=("add", "concat"))
    objective = SyntheticObjective(space, 4)
    best, reward = objective.optimum()
    per_cell = space.decision_sizes()[: space.decisions_per_cell]
    cell_choices = list(itertools.product(*(range(s) for s in per_cell)))  # 1,152 cells
    assert len(cell_choices) == 2 * 2 * 2 * 2 * 2 * 3 * 3 * 2 * 2 * 2
    d = best.to_decisions(space)
    n = space.decisions_per_cell
    top_normal = max(objective.reward(Genotype.from_decisions(space, list(c) + d[n:])) for c in cell_choices)
    top_reduce = max(objective.reward(Genotype.from_decisions(space, d[:n] + list(c))) for c in cell_choices)
    assert top_normal == pytest.approx(reward, abs=1e-12) and top_reduce == pytest.approx(reward, abs=1e-12)


def test_a_restricted_space_gets_its_own_optimum():
    objective = SyntheticObjective(SMALL_SPACE, 0)
    best, reward = objective.optimum()
    assert best.validate(SMALL_SPACE) == best
    assert reward > max(objective(g) for g in random_genotypes(SMALL_SPACE, 200))


def test_failures_are_seeded_per_architecture():
    genotypes = random_genotypes(SPACE, 400)
    assert all(SyntheticObjective(SPACE, 0, failure_rate=1.0)(g) is None for g in genotypes[:10])
    flaky = SyntheticObjective(SPACE, 0, failure_rate=0.25)
    outcomes = [flaky(g) is None for g in genotypes]
    assert 60 <= sum(outcomes) <= 140
    assert outcomes == [flaky(g) is None for g in genotypes]


def test_it_can_take_time_like_a_training_would():
    objective = SyntheticObjective(SPACE, 0, duration_s=0.05)
    started = time.monotonic()
    objective(random_genotypes(SPACE, 1)[0])
    assert time.monotonic() - started >= 0.05


def test_it_rejects_bad_options():
    for kwargs in ({"noise": -1.0}, {"failure_rate": 1.5}, {"duration_s": -1.0}, {"curve_noise": -0.1}):
        with pytest.raises(ValueError):
            SyntheticObjective(SPACE, 0, **kwargs)


# -- learning curves ---------------------------------------------------------------------------
def ranks(values):
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0] * len(values)
    for rank, i in enumerate(order):
        out[i] = rank
    return out


def test_a_curve_ends_at_the_reward_so_nothing_changes_without_early_stopping():
    for objective in (SyntheticObjective(SPACE, 0), SyntheticObjective(SPACE, 1, noise=0.05, failure_rate=0.2)):
        for g in random_genotypes(SPACE, 100):
            curve = objective.curve(g, 20)
            assert (curve is None) == (objective(g) is None)
            if curve is not None:
                assert len(curve) == 20 and curve[-1] == objective(g) and all(0 <= v <= 1 for v in curve)
    assert SyntheticObjective(SPACE, 0).curve(random_genotypes(SPACE, 1)[0], 1) == [
        SyntheticObjective(SPACE, 0)(random_genotypes(SPACE, 1)[0])
    ]


def test_curves_are_seeded_per_architecture_and_epoch():
    genotypes = random_genotypes(SPACE, 20)
    a, b, c = SyntheticObjective(SPACE, 0), SyntheticObjective(SPACE, 0), SyntheticObjective(SPACE, 1)
    assert [a.curve(g, 9) for g in genotypes] == [b.curve(g, 9) for g in genotypes]
    assert [a.curve(g, 9) for g in genotypes] != [c.curve(g, 9) for g in genotypes]
    for g in genotypes:  # the same cell written another way learns the same way
        assert a.curve(swap_halves(g), 9) == a.curve(g, 9) == a.curve(g.canonical(), 9)
    smooth = SyntheticObjective(SPACE, 0, curve_noise=0.0)
    for g in genotypes:  # without the per-epoch noise a curve rises from chance level to the reward
        curve = smooth.curve(g, 9)
        assert all(x < y for x, y in zip(curve, curve[1:])) and curve[0] > 0.1


def test_curves_cross_so_an_early_ranking_is_an_imperfect_guess():
    objective = SyntheticObjective(SPACE, 0, noise=0.01)
    curves = [objective.curve(g, 20) for g in random_genotypes(SPACE, 1000)]
    final = ranks([c[-1] for c in curves])
    rho = {e: statistics.correlation(ranks([c[e - 1] for c in curves]), final) for e in (1, 3, 10)}
    assert 0.4 < rho[1] < 0.7 and 0.55 < rho[3] < 0.8 and 0.85 < rho[10] < 0.97
    assert rho[1] < rho[3] < rho[10]
    # Plenty of pairs swap places between the first and the last epoch.
    pairs = itertools.combinations(range(200), 2)
    swapped = sum((curves[i][0] - curves[j][0]) * (curves[i][-1] - curves[j][-1]) < 0 for i, j in pairs)
    assert swapped > 0.15 * 200 * 199 / 2


def test_curves_are_the_same_from_many_threads():
    objective = SyntheticObjective(SPACE, 2)
    genotypes = random_genotypes(SPACE, 50)
    expected = [objective.curve(g, 12) for g in genotypes]
    seen = []

    def work():
        seen.append([objective.curve(g, 12) for g in genotypes])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [expected] * 4


def test_train_reports_every_epoch_and_stops_when_told():
    objective = SyntheticObjective(SPACE, 0)
    g = random_genotypes(SPACE, 1)[0]
    reported = []
    assert objective.train(g, 5, lambda e, v: reported.append((e, v))) == objective(g)
    assert reported == list(enumerate(objective.curve(g, 5), start=1))
    reported.clear()
    assert objective.train(g, 5, lambda e, v: reported.append(e) or e < 2) is None
    resumed = []  # after 3 epochs played: the rest only, the same final reward
    assert objective.train(g, 5, lambda e, v: resumed.append((e, v)), start=3) == objective(g)
    assert resumed == [(e, v) for e, v in enumerate(objective.curve(g, 5), start=1)][3:]
    assert reported == [1, 2]
    assert SyntheticObjective(SPACE, 0, failure_rate=1.0).train(g, 5, reported.append) is None
    timed = SyntheticObjective(SPACE, 0, duration_s=0.4)
    started = time.monotonic()
    timed.train(g, 4, lambda e, v: e < 2)  # stopped after half the epochs: about half the time
    assert 0.2 <= time.monotonic() - started < 0.35
    with pytest.raises(ValueError):
        objective.curve(g, 0)
