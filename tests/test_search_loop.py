"""The search loop: parallel children in FIFO order, duplicates, failures, checkpoint/resume."""

from __future__ import annotations

import threading

import pytest
import torch

from nas_engine.genotype import Genotype
from nas_engine.search import ChildResult, run_search
from nas_engine.space import SearchSpace
from nas_engine.strategies import Strategy, StrategyError, make_strategy, save_checkpoint
from nas_engine.strategies.base import read_checkpoint
from nas_engine.synthetic import SyntheticObjective

SPACE = SearchSpace()
OBJECTIVE = SyntheticObjective(SPACE, 0)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Scripted(Strategy):
    """Proposes the given decision lists in turn and records what it is told."""

    name = "scripted"

    def __init__(self, script: list[list[int]]):
        super().__init__(SPACE, {}, 0)
        self.script, self.told = script, []

    def _propose(self, n):
        return [(self.script[(self._next_id + i) % len(self.script)], {}) for i in range(n)]

    def _observe(self, proposal_id, entry, reward):
        self.told.append((proposal_id, reward))

    def tell_failure(self, proposal_id):
        self.told.append((proposal_id, None))
        return super().tell_failure(proposal_id)


def decisions(seed: int) -> list[int]:
    return make_strategy("random", SPACE, {}, seed=seed).ask(1)[0].decisions


def swapped(d: list[int]) -> list[int]:
    """The same architecture with the two halves of every block swapped."""
    out = list(d)
    for i in range(0, len(d), 5):
        out[i], out[i + 1], out[i + 2], out[i + 3] = d[i + 1], d[i], d[i + 3], d[i + 2]
    return out


class Counting:
    """An evaluate that counts calls and the most children evaluated at once."""

    def __init__(self, objective=OBJECTIVE, fail=(), delay=0.0):
        self.objective, self.fail, self.delay = objective, set(fail), delay
        self.calls, self.running, self.most = [], 0, 0
        self.lock = threading.Lock()

    def __call__(self, genotype):
        with self.lock:
            self.calls.append(genotype.canonical_hash())
            self.running += 1
            self.most = max(self.most, self.running)
        threading.Event().wait(self.delay)
        with self.lock:
            self.running -= 1
        return None if genotype.canonical_hash() in self.fail else self.objective(genotype)


def test_it_runs_the_budget_and_summarises():
    results = []
    summary = run_search(make_strategy("random", SPACE, {}, 0), OBJECTIVE, children=150, on_result=results.append)
    assert summary.children == 150 and len(summary.history) == 150
    assert summary.history == [r.reward for r in results]
    assert summary.best_reward == max(summary.history)
    assert OBJECTIVE(summary.best_genotype) == summary.best_reward
    assert summary.mean_reward_last_100 == pytest.approx(sum(summary.history[-100:]) / 100)
    assert summary.duration > 0 and summary.failed == 0
    assert all(isinstance(r, ChildResult) and r.status == "ok" for r in results)


def test_parallel_children_are_asked_ahead_and_told_in_fifo_order():
    evaluate = Counting(delay=0.03)
    results = []
    strategy = make_strategy("evolution", SPACE, {"population_size": 10, "tournament_size": 3}, 0)
    summary = run_search(strategy, evaluate, children=40, parallel=4, on_result=results.append)
    assert [r.proposal_id for r in results] == list(range(40))
    assert evaluate.most == 4  # four children really ran at once
    again = run_search(
        make_strategy("evolution", SPACE, {"population_size": 10, "tournament_size": 3}, 0),
        OBJECTIVE,
        children=40,
        parallel=4,
    )
    assert again.history == summary.history  # FIFO telling makes thread timing irrelevant


def test_the_strategy_sees_proposals_asked_before_earlier_ones_are_told():
    strategy = make_strategy("ppo", SPACE, {"batch_size": 4}, 0)
    seen_pending = []

    def evaluate(genotype):
        seen_pending.append(len(strategy.pending()))
        return OBJECTIVE(genotype)

    run_search(strategy, evaluate, children=12, parallel=3)
    assert max(seen_pending) == 3


def test_duplicates_reuse_the_measured_reward():
    a, b = decisions(1), decisions(2)
    strategy = Scripted([a, b, a, swapped(b), a])
    evaluate = Counting()
    results = []
    summary = run_search(strategy, evaluate, children=5, on_result=results.append)
    assert [r.status for r in results] == ["ok", "ok", "reused", "reused", "reused"]
    assert len(evaluate.calls) == 2
    assert strategy.told == [(i, results[i].reward) for i in range(5)]  # told like any other child
    assert results[2].reward == results[0].reward and results[3].reward == results[1].reward
    assert summary.children == 5 and summary.reused == 3 and len(summary.history) == 5


def test_duplicates_are_evaluated_again_when_reuse_is_off():
    a = decisions(1)
    evaluate = Counting()
    summary = run_search(Scripted([a]), evaluate, children=3, reuse_duplicates=False)
    assert len(evaluate.calls) == 3 and summary.reused == 0


def test_a_duplicate_of_a_child_still_running_waits_for_it():
    a, b = decisions(1), decisions(2)
    evaluate = Counting(delay=0.01)
    results = []
    run_search(Scripted([a, b, a, a]), evaluate, children=4, parallel=4, on_result=results.append)
    assert len(evaluate.calls) == 2
    assert [r.status for r in results] == ["ok", "ok", "reused", "reused"]


def test_failures_are_told_as_failures_and_not_reused():
    a, b = decisions(1), decisions(2)
    failing = Genotype.from_decisions(SPACE, a).canonical_hash()
    strategy = Scripted([a, b, a])
    evaluate = Counting(fail={failing})
    results = []
    summary = run_search(strategy, evaluate, children=3, on_result=results.append)
    assert [r.status for r in results] == ["failed", "ok", "failed"]
    assert len(evaluate.calls) == 3  # the duplicate of a failed child is tried again
    assert strategy.told[0] == (0, None) and strategy.told[2] == (2, None)
    assert summary.children == 3 and summary.failed == 2 and len(summary.history) == 1


def test_a_non_finite_reward_is_a_failure():
    summary = run_search(make_strategy("ppo", SPACE, {"batch_size": 2}, 0), lambda g: float("nan"), children=4)
    assert summary.failed == 4 and summary.history == [] and summary.best_reward is None


def test_controller_updates_reach_on_update():
    updates = []
    run_search(
        make_strategy("reinforce", SPACE, {"batch_size": 5}, 0), OBJECTIVE, children=20, on_update=updates.append
    )
    assert [u.step for u in updates] == [1, 2, 3, 4]


@pytest.mark.parametrize("name", ["ppo", "evolution"])
def test_a_resumed_search_ends_exactly_where_the_uninterrupted_one_does(name, tmp_path):
    settings = {"ppo": {"batch_size": 4, "lr": 0.01}, "evolution": {"population_size": 6, "tournament_size": 2}}[name]
    objective = SyntheticObjective(SPACE, 3, failure_rate=0.1)
    whole = make_strategy(name, SPACE, settings, 7)
    expected = run_search(whole, objective, children=30, parallel=3, checkpoint_path=tmp_path / "whole.pt")

    calls = 0

    def crashing(genotype):  # the worker dies while three children are outstanding
        nonlocal calls
        calls += 1
        if calls == 14:
            raise RuntimeError("worker lost")
        return objective(genotype)

    path = tmp_path / "resumed.pt"
    with pytest.raises(RuntimeError, match="worker lost"):
        run_search(make_strategy(name, SPACE, settings, 7), crashing, children=30, parallel=3, checkpoint_path=path)
    interrupted = read_checkpoint(path)
    assert 0 < interrupted["loop"]["children"] < 30 and interrupted["state"]["pending"]

    resumed_strategy = make_strategy(name, SPACE, settings, 7)
    resumed = run_search(resumed_strategy, objective, children=30, parallel=3, checkpoint_path=path, resume=True)
    assert resumed.history == expected.history
    assert (resumed.children, resumed.failed, resumed.best_reward) == (30, expected.failed, expected.best_reward)
    assert resumed.best_genotype == expected.best_genotype
    whole_state, resumed_state = read_checkpoint(tmp_path / "whole.pt"), read_checkpoint(path)
    assert whole_state["loop"]["history"] == resumed_state["loop"]["history"]
    if name == "ppo":
        for p, q in zip(resumed_strategy.controller.parameters(), whole.controller.parameters()):
            assert torch.equal(p, q)


def test_resuming_a_finished_search_changes_nothing(tmp_path):
    path = tmp_path / "ckpt.pt"
    first = run_search(make_strategy("random", SPACE, {}, 0), OBJECTIVE, children=10, checkpoint_path=path)
    again = run_search(make_strategy("random", SPACE, {}, 0), OBJECTIVE, children=10, checkpoint_path=path, resume=True)
    assert again.history == first.history and again.children == 10
    more = run_search(make_strategy("random", SPACE, {}, 0), OBJECTIVE, children=15, checkpoint_path=path, resume=True)
    assert more.history[:10] == first.history and more.children == 15


def test_an_existing_checkpoint_is_never_overwritten_silently(tmp_path):
    path = tmp_path / "ckpt.pt"
    run_search(make_strategy("random", SPACE, {}, 0), OBJECTIVE, children=3, checkpoint_path=path)
    data = path.read_bytes()
    with pytest.raises(StrategyError, match="resume"):
        run_search(make_strategy("random", SPACE, {}, 0), OBJECTIVE, children=3, checkpoint_path=path)
    assert path.read_bytes() == data


@pytest.mark.parametrize(
    "strategy, field",
    [
        (lambda: make_strategy("ppo", SPACE, {}, 0), "checkpoint.strategy"),
        (lambda: make_strategy("random", SPACE, {"failure_reward": 0.0}, 0), "checkpoint.settings"),
        (lambda: make_strategy("random", SearchSpace(num_blocks=4), {}, 0), "checkpoint.space"),
    ],
)
def test_resuming_with_another_strategy_fails_and_keeps_the_checkpoint(tmp_path, strategy, field):
    path = tmp_path / "ckpt.pt"
    run_search(make_strategy("random", SPACE, {}, 0), OBJECTIVE, children=3, checkpoint_path=path)
    data = path.read_bytes()
    with pytest.raises(StrategyError) as err:
        run_search(strategy(), OBJECTIVE, children=6, checkpoint_path=path, resume=True)
    assert err.value.field == field
    assert path.read_bytes() == data


def test_resuming_needs_loop_state(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(make_strategy("random", SPACE, {}, 0), path)  # a bare strategy checkpoint
    with pytest.raises(StrategyError, match="checkpoint.loop"):
        run_search(make_strategy("random", SPACE, {}, 0), OBJECTIVE, children=3, checkpoint_path=path, resume=True)
    with pytest.raises(StrategyError, match="search.resume"):
        run_search(make_strategy("random", SPACE, {}, 0), OBJECTIVE, children=3, resume=True)


@pytest.mark.parametrize("kwargs, field", [({"children": -1}, "search.children"), ({"parallel": 0}, "search.parallel")])
def test_it_rejects_bad_arguments(kwargs, field):
    with pytest.raises(StrategyError, match=field):
        run_search(make_strategy("random", SPACE, {}, 0), OBJECTIVE, **{"children": 3, **kwargs})
