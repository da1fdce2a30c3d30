"""Search strategies: the interface, each strategy, exact checkpoints, bad input, and the
proof that the learning strategies learn (on the synthetic objective)."""

from __future__ import annotations

import collections
import math

import pytest
import torch

from nas_engine.genotype import Genotype
from nas_engine.search import run_search
from nas_engine.space import SearchSpace
from nas_engine.strategies import (
    STRATEGIES,
    StrategyError,
    default_settings,
    load_checkpoint,
    make_strategy,
    save_checkpoint,
)
from nas_engine.strategies.base import Fidelity
from nas_engine.strategies.controller import Controller
from nas_engine.synthetic import SyntheticObjective

SPACE = SearchSpace()
SMALL_SPACE = SearchSpace(ops=("identity", "sep_conv_3x3", "max_pool_3x3"), num_blocks=3, combines=("add",))
# Settings small enough that a few dozen tells cross several updates / the evolution phase.
SMALL = {
    "random": {},
    "evolution": {"population_size": 8, "tournament_size": 3},
    "reinforce": {"batch_size": 4, "lr": 0.01},
    "ppo": {"batch_size": 4, "lr": 0.01},
}
# The paper's controller settings were made for 20,000 children; these tests have 500
# (25 updates), so the learning rate is scaled up (0.005 instead of 0.00035). Everything
# else is the paper's; the paper's own settings are tested over 1,000 children below.
LEARNING_PG = {"lr": 0.005}
# Measured last-100 margins over random search (seeds 0, 1, 2): evolution +0.55 +0.54
# +0.54, PPO +0.56 +0.54 +0.54, REINFORCE +0.53 +0.40 +0.46. Asserted: +0.2.
MARGIN = 0.2


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_same(a, b, path="state"):
    """Recursive, bitwise equality of state dicts (tensors by torch.equal, floats by ==)."""
    assert type(a) is type(b), path
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def drive(strategy, objective, start: int, stop: int) -> list:
    """A fixed schedule: keep 3 proposals pending, tell them in a varying order, fail some."""
    trace = []
    for step in range(start, stop):
        missing = 3 - len(strategy.pending())
        if missing > 0:
            trace.append([(p.id, p.decisions) for p in strategy.ask(missing)])
        pending = strategy.pending()
        chosen = pending[step % len(pending)]
        if step % 7 == 3:
            trace.append((chosen.id, "failed", strategy.tell_failure(chosen.id)))
        else:
            trace.append((chosen.id, strategy.tell(chosen.id, objective.reward(chosen.genotype))))
    return trace


# -- the registry and bad input --------------------------------------------------------------
def test_the_registry_holds_the_four_strategies():
    assert set(STRATEGIES) == {"random", "evolution", "reinforce", "ppo"}
    for name in STRATEGIES:
        assert make_strategy(name, SPACE, {}, seed=0).name == name


def test_defaults_are_the_papers():
    ppo = default_settings("ppo")
    assert (ppo["lr"], ppo["entropy_weight"], ppo["baseline_decay"], ppo["batch_size"]) == (0.00035, 1e-5, 0.95, 20)
    assert (ppo["hidden_size"], ppo["init_range"], ppo["clip"], ppo["epochs"]) == (100, 0.1, 0.2, 4)
    assert ppo["temperature"] is None and ppo["tanh_constant"] is None
    evo = default_settings("evolution")
    assert (evo["population_size"], evo["tournament_size"], evo["identity_prob"]) == (100, 25, 0.05)


def test_it_rejects_an_unknown_strategy():
    with pytest.raises(StrategyError) as err:
        make_strategy("bayesian", SPACE, {}, seed=0)
    assert err.value.field == "strategy.name" and "ppo" in err.value.reason


@pytest.mark.parametrize(
    "name, settings, field",
    [
        ("ppo", {"lr": -0.1}, "strategy.settings.lr"),
        ("ppo", {"lr": 0}, "strategy.settings.lr"),
        ("ppo", {"lr": "fast"}, "strategy.settings.lr"),
        ("ppo", {"lr": float("nan")}, "strategy.settings.lr"),
        ("ppo", {"clip": 0}, "strategy.settings.clip"),
        ("ppo", {"clip": -0.2}, "strategy.settings.clip"),
        ("ppo", {"epochs": 0}, "strategy.settings.epochs"),
        ("ppo", {"epochs": 2.5}, "strategy.settings.epochs"),
        ("ppo", {"batch_size": True}, "strategy.settings.batch_size"),
        ("reinforce", {"batch_size": 0}, "strategy.settings.batch_size"),
        ("reinforce", {"baseline_decay": 1.0}, "strategy.settings.baseline_decay"),
        ("reinforce", {"entropy_weight": -1e-5}, "strategy.settings.entropy_weight"),
        ("reinforce", {"temperature": 0}, "strategy.settings.temperature"),
        ("reinforce", {"clip": 0.2}, "strategy.settings.clip"),  # a PPO-only setting
        ("evolution", {"tournament_size": 101}, "strategy.settings.tournament_size"),
        ("evolution", {"population_size": 1, "tournament_size": 1}, "strategy.settings.population_size"),
        ("evolution", {"identity_prob": 1.5}, "strategy.settings.identity_prob"),
        ("random", {"population_size": 10}, "strategy.settings.population_size"),
        ("random", {"failure_reward": float("inf")}, "strategy.settings.failure_reward"),
    ],
)
def test_it_rejects_invalid_settings_naming_the_field(name, settings, field):
    with pytest.raises(StrategyError) as err:
        make_strategy(name, SPACE, settings, seed=0)
    assert err.value.field == field


def test_it_rejects_settings_that_are_not_an_object_and_bad_seeds():
    with pytest.raises(StrategyError, match="strategy.settings"):
        make_strategy("ppo", SPACE, [0.1], seed=0)
    for seed in (-1, 1.5, "0", None):
        with pytest.raises(StrategyError, match="strategy.seed"):
            make_strategy("random", SPACE, {}, seed=seed)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_it_rejects_unknown_ids_double_tells_and_bad_rewards(name):
    strategy = make_strategy(name, SPACE, SMALL[name], seed=0)
    (p,) = strategy.ask(1)
    for reward in (float("nan"), float("inf"), None, "0.9"):
        with pytest.raises(StrategyError, match="reward"):
            strategy.tell(p.id, reward)
    assert [q.id for q in strategy.pending()] == [p.id]  # a rejected tell leaves it pending
    strategy.tell(p.id, 0.5)
    with pytest.raises(StrategyError, match="proposal_id"):
        strategy.tell(p.id, 0.5)
    with pytest.raises(StrategyError, match="proposal_id"):
        strategy.tell_failure(12345)
    with pytest.raises(StrategyError, match="n"):
        strategy.ask(-1)


# -- the protocol, for every strategy ----------------------------------------------------------
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_proposals_have_increasing_ids_and_valid_decisions_even_with_parallel_asks(name):
    strategy = make_strategy(name, SPACE, SMALL[name], seed=3)
    objective = SyntheticObjective(SPACE, 0)
    seen = []
    for _ in range(12):
        batch = strategy.ask(3)
        seen += batch
        for p in batch[:2]:  # one of every three stays pending for a while
            strategy.tell(p.id, objective.reward(p.genotype))
    assert [p.id for p in seen] == list(range(36))
    for p in seen:
        assert p.genotype == Genotype.from_decisions(SPACE, p.decisions)
        assert all(0 <= d < s for d, s in zip(p.decisions, SPACE.decision_sizes()))
    assert [p.id for p in strategy.pending()] == [p.id for p in seen[2::3]]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_the_same_seed_gives_the_same_proposals_and_another_seed_others(name):
    def first(seed):
        return [p.decisions for p in make_strategy(name, SPACE, SMALL[name], seed=seed).ask(5)]

    assert first(7) == first(7)
    assert first(7) != first(8)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_works_in_a_restricted_space(name):
    """3 ops, B = 3, add only: 30 decisions, heads sized by decision_sizes."""
    strategy = make_strategy(name, SMALL_SPACE, SMALL[name], seed=0)
    updates, results = [], []
    run_search(
        strategy,
        SyntheticObjective(SMALL_SPACE, 0),
        children=40,
        parallel=2,
        on_update=updates.append,
        on_result=results.append,
    )
    assert len(results) == 40
    for r in results:
        assert r.genotype.validate(SMALL_SPACE) == r.genotype
        assert {b.combine for c in r.genotype.cells().values() for b in c.blocks} == {"add"}
    if name in ("ppo", "reinforce"):
        assert len(updates) == 10
        assert [len(row) for row in updates[-1].policy] == SMALL_SPACE.decision_sizes()


# -- exact checkpoints ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_restored_strategy_continues_exactly_like_the_uninterrupted_one(name, tmp_path):
    """Checkpoint taken with proposals pending, after failures, mid-minibatch."""
    objective = SyntheticObjective(SPACE, 1)
    uninterrupted = make_strategy(name, SPACE, SMALL[name], seed=5)
    expected = drive(uninterrupted, objective, 0, 60)

    first = make_strategy(name, SPACE, SMALL[name], seed=5)
    before = drive(first, objective, 0, 25)
    assert first.pending(), "the checkpoint must be taken while proposals are pending"
    save_checkpoint(first, tmp_path / "ckpt.pt")
    drive(first, objective, 25, 30)  # the saved state must not change when the original goes on
    restored = load_checkpoint(tmp_path / "ckpt.pt", SPACE, expect=name)
    after = drive(restored, objective, 25, 60)

    assert before + after == expected  # same proposals, same UpdateStats (floats compared exactly)
    assert_same(restored.state_dict(), uninterrupted.state_dict())
    if name in ("ppo", "reinforce"):
        updates = [entry[-1] for entry in after if isinstance(entry, tuple) and entry[-1] is not None]
        assert len(updates) >= 5  # the restored strategy made real updates
        for p_restored, p_original in zip(restored.controller.parameters(), uninterrupted.controller.parameters()):
            assert torch.equal(p_restored, p_original)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_load_state_dict_restores_in_memory_too(name):
    objective = SyntheticObjective(SPACE, 2)
    a = make_strategy(name, SPACE, SMALL[name], seed=1)
    drive(a, objective, 0, 15)
    b = make_strategy(name, SPACE, SMALL[name], seed=99)
    b.load_state_dict(a.state_dict())
    assert drive(a, objective, 15, 30) == drive(b, objective, 15, 30)


def test_a_checkpoint_of_another_strategy_is_refused(tmp_path):
    path = tmp_path / "evo.pt"
    save_checkpoint(make_strategy("evolution", SPACE, {}, seed=0), path)
    data = path.read_bytes()
    with pytest.raises(StrategyError) as err:
        load_checkpoint(path, SPACE, expect="ppo")
    assert err.value.field == "checkpoint.strategy" and "evolution" in err.value.reason
    with pytest.raises(StrategyError, match="state.strategy"):
        make_strategy("ppo", SPACE, {}, seed=0).load_state_dict(make_strategy("random", SPACE).state_dict())
    with pytest.raises(StrategyError, match="checkpoint.space"):
        load_checkpoint(path, SMALL_SPACE)
    assert path.read_bytes() == data


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "foreign", "newer", "object", "missing"])
def test_a_damaged_checkpoint_raises_a_clear_error_and_stays_untouched(tmp_path, damage):
    path = tmp_path / "ckpt.pt"
    strategy = make_strategy("ppo", SPACE, SMALL["ppo"], seed=0)
    strategy.ask(2)
    save_checkpoint(strategy, path)
    good = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a checkpoint" * 100)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    elif damage == "newer":
        payload = torch.load(path, weights_only=True)
        torch.save({**payload, "version": 99}, path)
    elif damage == "object":  # something weights_only loading must refuse to unpickle
        torch.save({"format": "nas_engine.strategy_checkpoint", "x": collections.Counter("abc")}, path)
    else:
        path.unlink()
    damaged = path.read_bytes() if path.exists() else None
    with pytest.raises(StrategyError) as err:
        load_checkpoint(path, SPACE)
    assert err.value.field.startswith("checkpoint") and str(path) in str(err.value)
    assert (path.read_bytes() if path.exists() else None) == damaged


def test_a_malformed_state_is_refused():
    state = make_strategy("ppo", SPACE, SMALL["ppo"], seed=0).state_dict()
    del state["optimizer"]
    with pytest.raises(StrategyError, match="state"):
        make_strategy("ppo", SPACE, SMALL["ppo"], seed=0).load_state_dict(state)
    other = make_strategy("ppo", SPACE, {**SMALL["ppo"], "hidden_size": 50}, seed=0).state_dict()
    with pytest.raises(StrategyError, match="state"):
        make_strategy("ppo", SPACE, SMALL["ppo"], seed=0).load_state_dict(other)


def test_saving_is_atomic_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    strategy = make_strategy("evolution", SPACE, SMALL["evolution"], seed=0)
    save_checkpoint(strategy, path)
    strategy.ask(1)
    save_checkpoint(strategy, path)  # replaces
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    assert len(load_checkpoint(path, SPACE).pending()) == 1
    with pytest.raises(OSError):
        save_checkpoint(strategy, tmp_path / "missing-dir" / "ckpt.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


# -- random search ---------------------------------------------------------------------------------
def test_random_search_is_uniform():
    counts = collections.Counter()
    for p in make_strategy("random", SPACE, {}, seed=0).ask(2600):
        counts[p.decisions[2]] += 1  # normal.block0.op_a: 13 options
    assert set(counts) == set(range(13))
    assert all(140 <= c <= 260 for c in counts.values())  # 200 expected each


# -- early stopping: what a strategy is told for a stopped child ------------------------------------
def drive_with_fidelity(strategy, objective, start: int, stop: int, stopped_at=None) -> list:
    """`drive`'s schedule, every reward told with a fidelity; `stopped_at(step)` -> the rung
    a child stops at (its reward is then half its final one), or None for a full training."""
    trace = []
    for step in range(start, stop):
        if 3 - len(strategy.pending()) > 0:
            trace.append([(p.id, p.decisions) for p in strategy.ask(3 - len(strategy.pending()))])
        pending = strategy.pending()
        chosen = pending[step % len(pending)]
        reward = objective.reward(chosen.genotype)
        rung = stopped_at(step) if stopped_at else None
        if step % 7 == 3:
            trace.append((chosen.id, "failed", strategy.tell_failure(chosen.id)))
        elif rung is None:
            told = Fidelity(9, 9, ((1, reward / 3), (3, reward / 2)))
            trace.append((chosen.id, strategy.tell(chosen.id, reward, told)))
        else:
            told = Fidelity(rung, 9, ((1, reward / 3), (3, reward / 2))[: 1 + (rung == 3)])
            trace.append((chosen.id, strategy.tell(chosen.id, told.rungs[-1][1], told)))
    return trace


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_child_trained_in_full_teaches_the_same_with_or_without_its_fidelity(name):
    objective = SyntheticObjective(SPACE, 1)
    plain, told = make_strategy(name, SPACE, SMALL[name], seed=5), make_strategy(name, SPACE, SMALL[name], seed=5)
    assert drive(plain, objective, 0, 40) == drive_with_fidelity(told, objective, 0, 40)


def test_a_bad_fidelity_is_refused_naming_the_field():
    strategy = make_strategy("ppo", SPACE, SMALL["ppo"], seed=0)
    p = strategy.ask(1)[0]
    for fidelity, field in [
        (Fidelity(4, 3), "fidelity.epochs"),
        (Fidelity(0, 3), "fidelity.epochs"),
        (Fidelity(1, 3, ((1, 0.5),), "best"), "fidelity.stopped_reward"),
        (Fidelity(2, 3, ((2, 0.5), (1, 0.4))), "fidelity.rungs"),
        ({"epochs": 1}, "fidelity"),
    ]:
        with pytest.raises(StrategyError) as err:
            strategy.tell(p.id, 0.5, fidelity)
        assert err.value.field == field
    assert strategy.pending()  # nothing was told


@pytest.mark.parametrize("name", ["ppo", "reinforce"])
def test_policy_gradient_judges_a_stopped_child_against_the_baseline_of_its_rung(name):
    strategy = make_strategy(name, SPACE, {"batch_size": 100, "baseline_decay": 0.5}, seed=0)
    a, b, c, d = strategy.ask(4)
    strategy.tell(a.id, 0.8, Fidelity(9, 9, ((1, 0.2), (3, 0.4))))  # a full training: the final baseline
    strategy.tell(b.id, 0.1, Fidelity(1, 9, ((1, 0.1),)))  # stopped at rung 1, below its baseline 0.2
    strategy.tell(c.id, 0.5, Fidelity(3, 9, ((1, 0.3), (3, 0.5))))  # stopped at rung 3, above 0.4
    strategy.tell(d.id, 0.7, Fidelity(9, 9, ((1, 0.2), (3, 0.4))))
    assert [entry["advantage"] for entry in strategy._buffer] == pytest.approx([0.0, -0.1, 0.1, -0.1])
    assert [entry["reward"] for entry in strategy._buffer] == [0.8, 0.1, 0.5, 0.7]
    # Every child that reached a rung fed its baseline there, stopped or not; rung values
    # never touch the final baseline.
    assert strategy._rungs[1][0] == pytest.approx(((0.2 + 0.1) / 2 + 0.3) / 2 / 2 + 0.2 / 2)
    assert strategy._baseline == pytest.approx(0.75)


def test_normalised_rescales_a_rung_advantage_to_the_spread_of_final_rewards():
    strategy = make_strategy("ppo", SPACE, {"batch_size": 100, "baseline_decay": 0.5}, seed=0)
    a, b, c, d, e = strategy.ask(5)
    mode = "normalised"
    strategy.tell(a.id, 0.8, Fidelity(9, 9, ((1, 0.2),), mode))
    strategy.tell(b.id, 0.6, Fidelity(9, 9, ((1, 0.3),), mode))  # final spread: EMA variance 0.01
    strategy.tell(c.id, 0.25, Fidelity(1, 9, ((1, 0.25),), mode))  # rung 1 spread: 0.0025 before this
    assert strategy._buffer[-1]["advantage"] == pytest.approx(0.0)  # 0.25 is the rung's baseline
    rung_mean, rung_var = strategy._rungs[1]
    strategy.tell(d.id, 0.1, Fidelity(1, 9, ((1, 0.1),), mode))
    assert strategy._buffer[-1]["advantage"] == pytest.approx((0.1 - rung_mean) * (0.01 / rung_var) ** 0.5)
    strategy.tell(e.id, 0.1, Fidelity(1, 9, ((1, 0.1),), "drop"))
    assert len(strategy._buffer) == 4 and not strategy.pending()  # dropped: told, teaches nothing


def test_evolution_ranks_children_by_how_far_they_were_trained_then_by_reward():
    evo = make_strategy("evolution", SPACE, {"population_size": 4, "tournament_size": 4, "identity_prob": 1.0}, 0)
    a, b, c, d = evo.ask(4)
    evo.tell(a.id, 0.9, Fidelity(1, 9, ((1, 0.9),)))
    evo.tell(b.id, 0.3, Fidelity(9, 9, ((1, 0.1), (3, 0.2))))  # the only full training: it wins
    evo.tell(c.id, 0.8, Fidelity(3, 9, ((1, 0.5), (3, 0.8))))
    evo.tell(d.id, 0.2, Fidelity(3, 9, ((1, 0.1), (3, 0.2))))
    assert evo.stopped_at() == [1, 0, 3, 3]
    assert evo.ask(1)[0].decisions == b.decisions  # identity mutation: a copy of the parent
    evo = make_strategy("evolution", SPACE, {"population_size": 3, "tournament_size": 3, "identity_prob": 1.0}, 0)
    a, b, c = evo.ask(3)
    evo.tell(a.id, 0.9, Fidelity(1, 9, ((1, 0.9),)))
    evo.tell(b.id, 0.4, Fidelity(3, 9, ((1, 0.2), (3, 0.4))))
    evo.tell(c.id, 0.5, Fidelity(3, 9, ((1, 0.2), (3, 0.5))))  # the best of the highest rung
    assert evo.ask(1)[0].decisions == c.decisions


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_checkpoint_written_before_early_stopping_still_restores(name, tmp_path):
    """Such a checkpoint lacks what early stopping added to a strategy's state (PPO's and
    REINFORCE's rung baselines, evolution's stopped-at epochs): it restores as a search
    that never stopped a child, and goes on exactly like the uninterrupted one."""
    objective = SyntheticObjective(SPACE, 1)
    uninterrupted = make_strategy(name, SPACE, SMALL[name], seed=5)
    expected = drive(uninterrupted, objective, 0, 50)
    first = make_strategy(name, SPACE, SMALL[name], seed=5)
    before = drive(first, objective, 0, 25)
    save_checkpoint(first, tmp_path / "new.pt")
    payload = torch.load(tmp_path / "new.pt", weights_only=True)
    added = {"ppo": ("rungs", "final_var"), "reinforce": ("rungs", "final_var"), "evolution": ("history_stopped",)}
    for key in added.get(name, ()):
        del payload["state"][key]
    torch.save(payload, tmp_path / "old.pt")
    restored = load_checkpoint(tmp_path / "old.pt", SPACE, expect=name)
    assert before + drive(restored, objective, 25, 50) == expected
    assert_same(restored.state_dict(), uninterrupted.state_dict())


def test_early_stopping_still_lets_the_learning_strategies_learn():
    """PPO and evolution with every child but a few stopped at an early rung (told with
    fidelity): the last children are still far better than random ones."""
    objective = SyntheticObjective(SPACE, 0)
    for name, settings in (("ppo", LEARNING_PG), ("evolution", {})):
        strategy = make_strategy(name, SPACE, settings, seed=0)
        finals = []
        for _ in range(400):
            p = strategy.ask(1)[0]
            reward = objective.reward(p.genotype)
            if p.id % 4 == 0:  # trained in full
                strategy.tell(p.id, reward, Fidelity(9, 9, ((1, reward / 3), (3, reward / 2))))
            else:  # the rung-1 value: a third of the final one
                strategy.tell(p.id, reward / 3, Fidelity(1, 9, ((1, reward / 3),)))
            finals.append(reward)
        assert sum(finals[-100:]) / 100 > sum(finals[:100]) / 100 + MARGIN / 2, name


# -- evolution ----------------------------------------------------------------------------------------
def _hamming(a, b):
    return sum(x != y for x, y in zip(a, b))


def test_evolution_is_random_until_the_population_is_full_then_mutates_the_tournament_winner():
    objective = SyntheticObjective(SPACE, 0)
    evo = make_strategy("evolution", SPACE, {"population_size": 10, "tournament_size": 10, "identity_prob": 0.0}, 0)
    for p in evo.ask(10):
        evo.tell(p.id, objective.reward(p.genotype))
    for _ in range(30):
        top = max(m[2] for m in evo.population())
        best = [m[1] for m in evo.population() if m[2] == top]  # equivalent cells tie
        children = evo.ask(3)  # parallel asks: each runs its own tournament
        for child in children:  # tournament = population: the parent is always a best member
            assert min(_hamming(child.decisions, b) for b in best) == 1
        for child in children:
            evo.tell(child.id, objective.reward(child.genotype))
        assert len(evo.population()) == 10


def test_evolution_identity_mutation_copies_the_parent():
    evo = make_strategy("evolution", SPACE, {"population_size": 5, "tournament_size": 5, "identity_prob": 1.0}, 0)
    for i, p in enumerate(evo.ask(5)):
        evo.tell(p.id, float(i))
    assert evo.ask(1)[0].decisions == evo.population()[-1][1]


def test_evolution_ages_out_the_oldest_and_drops_failures():
    evo = make_strategy("evolution", SPACE, {"population_size": 4, "tournament_size": 2}, 0)
    proposals = evo.ask(6)
    for p in proposals[:5]:
        evo.tell(p.id, 0.5)
    assert [m[0] for m in evo.population()] == [1, 2, 3, 4]  # the oldest left, not the worst
    evo.tell_failure(proposals[5].id)
    assert [m[0] for m in evo.population()] == [1, 2, 3, 4]
    assert [h[0] for h in evo.history()] == [0, 1, 2, 3, 4]


def test_evolution_mutates_exactly_one_decision_and_never_a_fixed_one():
    space = SMALL_SPACE  # add only: the combine can not change
    evo = make_strategy("evolution", space, {"population_size": 3, "tournament_size": 1, "identity_prob": 0.0}, 0)
    for p in evo.ask(3):
        evo.tell(p.id, 0.5)
    members = [m[1] for m in evo.population()]
    changed = collections.Counter()
    for child in evo.ask(600):
        parent = next(m for m in members if _hamming(m, child.decisions) == 1)
        changed[next(k % 5 for k, (a, b) in enumerate(zip(parent, child.decisions)) if a != b)] += 1
    assert 4 not in changed  # the combine decision
    assert all(120 <= changed[j] <= 180 for j in range(4))  # inputs and ops, 150 expected each


# -- the controller and policy-gradient strategies -------------------------------------------------
def test_the_controller_is_the_papers():
    ppo = make_strategy("ppo", SPACE, {}, seed=0)
    c = ppo.controller
    assert c.lstm.hidden_size == 100 and c.lstm.num_layers == 1
    assert all(p.abs().max() <= 0.1 for p in c.parameters())
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in c.parameters())
    assert c.head_weight.shape[0] == 50 and c.sizes == SPACE.decision_sizes()
    assert ppo.optimizer.param_groups[0]["lr"] == 0.00035


def test_the_stored_log_prob_is_the_controllers_log_prob_of_the_decisions():
    ppo = make_strategy("ppo", SPACE, {}, seed=0)
    proposals = ppo.ask(5)
    decisions = torch.tensor([p.decisions for p in proposals])
    log_prob, entropy, probs = ppo.controller.evaluate(decisions)
    stored = torch.tensor([ppo._pending[p.id]["log_prob"] for p in proposals])
    assert torch.allclose(stored, log_prob, atol=1e-4)
    assert torch.allclose(probs.sum(-1), torch.ones(50, 5))
    assert (entropy > 0).all()


def test_controller_sampling_follows_its_probabilities():
    controller = Controller([3, 4, 2], init_range=1.0, generator=torch.Generator().manual_seed(0))
    decisions, _ = controller.sample(6000, torch.Generator().manual_seed(1))
    _, _, probs = controller.evaluate(decisions[:1])
    frequencies = torch.bincount(decisions[:, 0], minlength=3).float() / 6000
    assert torch.allclose(frequencies, probs[0, 0, :3], atol=0.03)


def test_temperature_and_tanh_constant_shape_the_logits():
    sizes = SPACE.decision_sizes()
    decisions = torch.zeros(1, len(sizes), dtype=torch.long)
    base = Controller(sizes, init_range=1.0, generator=torch.Generator().manual_seed(0))
    flat = Controller(sizes, init_range=1.0, tanh_constant=0.01, generator=torch.Generator().manual_seed(0))
    hot = Controller(sizes, init_range=1.0, temperature=100.0, generator=torch.Generator().manual_seed(0))
    uniform_entropy = sum(math.log(s) for s in sizes)
    assert base.evaluate(decisions)[1].item() < uniform_entropy - 1
    for shaped in (flat, hot):
        assert shaped.evaluate(decisions)[1].item() == pytest.approx(uniform_entropy, abs=0.01)


@pytest.mark.parametrize("name", ["ppo", "reinforce"])
def test_updates_come_every_minibatch_with_stats_for_the_dashboard(name):
    strategy = make_strategy(name, SPACE, {"batch_size": 5}, seed=0)
    rewards = [0.1 * (i % 7) for i in range(10)]
    stats = [strategy.tell(p.id, r) for p, r in zip(strategy.ask(10), rewards)]
    assert [s is not None for s in stats] == [False] * 4 + [True] + [False] * 4 + [True]
    first, second = stats[4], stats[9]
    assert (first.step, second.step) == (1, 2)
    assert first.mean_reward == pytest.approx(sum(rewards[:5]) / 5)
    baseline = rewards[0]
    for r in rewards[1:10]:
        baseline = 0.95 * baseline + 0.05 * r
    assert second.baseline == pytest.approx(baseline)
    assert [len(row) for row in second.policy] == SPACE.decision_sizes()
    assert all(sum(row) == pytest.approx(1.0, abs=1e-5) for row in second.policy)
    assert second.entropy > 0 and second.approx_kl >= 0 and math.isfinite(second.loss)
    assert 0 <= second.clip_fraction <= 1 and (name == "ppo" or second.clip_fraction == 0)


@pytest.mark.parametrize("name", ["ppo", "reinforce"])
def test_a_failure_is_dropped_unless_a_failure_reward_is_set(name):
    dropping = make_strategy(name, SPACE, {"batch_size": 3}, seed=0)
    a, b, c, d = dropping.ask(4)
    assert dropping.tell(a.id, 0.5) is None and dropping.tell_failure(b.id) is None
    assert dropping.tell(c.id, 0.4) is None
    assert dropping.tell(d.id, 0.6).mean_reward == pytest.approx(0.5)

    punishing = make_strategy(name, SPACE, {"batch_size": 3, "failure_reward": 0.0}, seed=0)
    a, b, c = punishing.ask(3)
    punishing.tell(a.id, 0.6)
    punishing.tell_failure(b.id)
    assert punishing.tell(c.id, 0.3).mean_reward == pytest.approx(0.3)


def test_the_entropy_is_a_bonus_to_maximise():
    """With equal rewards the advantages are 0: only the entropy term moves the policy."""
    strategy = make_strategy("reinforce", SPACE, {"batch_size": 10, "entropy_weight": 1.0, "lr": 0.01}, seed=0)
    entropies = []
    for _ in range(3):
        for p in strategy.ask(10):
            stats = strategy.tell(p.id, 0.5)
        entropies.append(stats.entropy)
    assert entropies[0] < entropies[1] < entropies[2]


def test_ppo_ratios_start_at_one_and_clip_after_large_steps():
    gentle = make_strategy("ppo", SPACE, {"batch_size": 10, "epochs": 1}, seed=0)
    for i, p in enumerate(gentle.ask(10)):
        stats = gentle.tell(p.id, 0.1 * i)
    assert stats.clip_fraction == 0.0 and stats.approx_kl < 0.02  # one small step: ratios stay near 1
    steep = make_strategy("ppo", SPACE, {"batch_size": 10, "epochs": 8, "lr": 0.05}, seed=0)
    for i, p in enumerate(steep.ask(10)):
        stats = steep.tell(p.id, 0.1 * i)
    assert stats.clip_fraction > 0


# -- the proof that it learns ----------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learning_strategies_beat_random_search_over_500_children(seed):
    """Mean reward of the last 100 of 500 children on the synthetic objective."""
    objective = SyntheticObjective(SPACE, seed)

    def last_100(name, settings):
        strategy = make_strategy(name, SPACE, settings, seed=seed)
        return run_search(strategy, objective, children=500).mean_reward_last_100

    random_search = last_100("random", {})
    learnt = {
        "evolution": last_100("evolution", {}),
        "ppo": last_100("ppo", LEARNING_PG),
        "reinforce": last_100("reinforce", LEARNING_PG),
    }
    for name, value in learnt.items():
        assert value > random_search + MARGIN, f"{name}: {value:.3f} vs random {random_search:.3f}"


def test_ppo_with_the_papers_settings_learns_within_1000_children():
    """Learning rate 0.00035 and all: slower (1,000 children), but clearly learning.
    Measured last-100: 0.65 against random's 0.38 (seed 1, the slowest of seeds 0-2)."""
    objective = SyntheticObjective(SPACE, 1)
    random_search = run_search(make_strategy("random", SPACE, {}, seed=1), objective, children=1000)
    ppo = run_search(make_strategy("ppo", SPACE, {}, seed=1), objective, children=1000)
    assert ppo.mean_reward_last_100 > random_search.mean_reward_last_100 + 0.15
