"""The search loop: parallel children in FIFO order, duplicates, failures, checkpoint/resume."""

from __future__ import annotations

import random
import threading
import time

import pytest
import torch

from nas_engine.early_stopping import EarlyStop, EarlyStopError
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


# -- early stopping ------------------------------------------------------------------------------
EPOCHS = 9  # ASHA rungs 1 and 3
ASHA = EarlyStop(rule="asha")
CURVES = SyntheticObjective(SPACE, 0, noise=0.01)


def per_epoch(objective=CURVES, epochs=EPOCHS, jitter: float = 0.0):
    """evaluate(genotype, report) from the synthetic learning curves; `jitter`: random
    sleeps between epochs, so parallel children finish epochs in a random order."""
    lock, rng = threading.Lock(), random.Random()

    def evaluate(genotype, report):
        def slow(epoch, value):
            with lock:
                pause = rng.random() * jitter
            time.sleep(pause)
            return report(epoch, value)

        return objective.train(genotype, epochs, slow if jitter else report)

    return evaluate


def trace(results):
    return [(r.proposal_id, r.status, r.reward, r.epochs, r.fidelity) for r in results]


@pytest.mark.parametrize("rule", ["asha", "median"])
def test_early_stopping_counts_the_epochs_trained_and_never_calls_a_rung_value_best(rule):
    results = []
    summary = run_search(
        make_strategy("random", SPACE, {}, 0),
        per_epoch(),
        children=60,
        epochs=EPOCHS,
        early_stop=EarlyStop(rule=rule),
        on_result=results.append,
    )
    stopped = [r for r in results if r.status == "stopped"]
    assert stopped and summary.stopped == len(stopped) and summary.completed == 60 - len(stopped)
    assert summary.epochs_trained == sum(r.epochs for r in results) < 60 * EPOCHS
    for r in stopped:
        assert r.fidelity.stopped and r.epochs == r.fidelity.epochs < EPOCHS
        assert r.reward == CURVES.curve(r.genotype, EPOCHS)[r.epochs - 1]  # told its value at the rung
    finals = [r.reward for r in results if r.status == "ok"]
    assert summary.history == finals and summary.best_reward == max(finals)
    assert all(r.reward == CURVES(r.genotype) and r.epochs == EPOCHS for r in results if r.status == "ok")
    assert max(r.reward for r in stopped) < summary.best_reward


def test_per_epoch_reporting_without_a_rule_is_the_classic_search():
    classic = run_search(make_strategy("ppo", SPACE, {"batch_size": 5}, 0), CURVES, children=30, parallel=2)
    results = []
    reporting = run_search(
        make_strategy("ppo", SPACE, {"batch_size": 5}, 0),
        per_epoch(),
        children=30,
        parallel=2,
        epochs=EPOCHS,
        on_result=results.append,
    )
    assert reporting.history == classic.history and reporting.best_genotype == classic.best_genotype
    assert reporting.epochs_trained == 30 * EPOCHS and reporting.stopped == 0 and classic.epochs_trained is None
    assert all(r.fidelity is None for r in results)  # told exactly as before


@pytest.mark.parametrize("rule", ["asha", "median"])
def test_parallel_children_stop_the_same_children_whatever_the_thread_timing(rule):
    """Random search asks the same children whatever it is told, so a sequential search
    and parallel ones with random timing must stop exactly the same children."""

    def search(parallel, jitter):
        results = []
        run_search(
            make_strategy("random", SPACE, {}, 3),
            per_epoch(jitter=jitter),
            children=40,
            parallel=parallel,
            epochs=EPOCHS,
            early_stop=EarlyStop(rule=rule),
            on_result=results.append,
        )
        return trace(results)

    sequential = search(1, 0.0)
    assert any(status == "stopped" for _, status, *_ in sequential)
    assert search(4, 0.002) == sequential
    assert search(4, 0.002) == sequential


def test_parallel_learning_searches_are_reproducible_with_early_stopping():
    def search():
        results = []
        strategy = make_strategy("evolution", SPACE, {"population_size": 10, "tournament_size": 3}, 0)
        run_search(
            strategy, per_epoch(jitter=0.002), children=40, parallel=4, epochs=EPOCHS, early_stop=ASHA,
            on_result=results.append,
        )  # fmt: skip
        return trace(results)

    assert search() == search()


def stops_at_rung_1(first: list[int], tries=range(100, 200)) -> list[int]:
    """Decisions of a child that ASHA stops after epoch 1 when it comes right after `first`."""
    lead = CURVES.curve(Genotype.from_decisions(SPACE, first), EPOCHS)[0]
    return next(d for d in map(decisions, tries) if CURVES.curve(Genotype.from_decisions(SPACE, d), EPOCHS)[0] < lead)


def test_a_duplicate_of_a_stopped_child_is_reused_as_stopped():
    b = decisions(2)
    a = stops_at_rung_1(b)
    strategy = Scripted([b, a, swapped(a)])
    results = []
    summary = run_search(strategy, per_epoch(), children=3, epochs=EPOCHS, early_stop=ASHA, on_result=results.append)
    assert [r.status for r in results] == ["ok", "stopped", "reused"]
    assert results[2].stopped and results[2].fidelity == results[1].fidelity and results[2].epochs == 0
    assert strategy.told[2] == (2, results[1].reward)
    assert summary.stopped == 2 and summary.reused == 1 and summary.epochs_trained == EPOCHS + 1


@pytest.mark.parametrize("name", ["ppo", "evolution"])
def test_a_resumed_search_with_early_stopping_ends_exactly_where_the_uninterrupted_one_does(name, tmp_path):
    settings = {"ppo": {"batch_size": 4, "lr": 0.01}, "evolution": {"population_size": 6, "tournament_size": 2}}[name]
    objective = SyntheticObjective(SPACE, 3, failure_rate=0.1, noise=0.01)
    common = {"children": 30, "parallel": 3, "epochs": EPOCHS, "early_stop": ASHA}
    whole_results = []
    whole = run_search(
        make_strategy(name, SPACE, settings, 7), per_epoch(objective, jitter=0.001),
        checkpoint_path=tmp_path / "whole.pt", on_result=whole_results.append, **common,
    )  # fmt: skip

    calls = 0
    evaluate = per_epoch(objective, jitter=0.001)

    def crashing(genotype, report):  # the worker dies while other children wait at a rung
        nonlocal calls
        calls += 1
        if calls == 14:
            raise RuntimeError("worker lost")
        return evaluate(genotype, report)

    path = tmp_path / "resumed.pt"
    with pytest.raises(RuntimeError, match="worker lost"):
        run_search(make_strategy(name, SPACE, settings, 7), crashing, checkpoint_path=path, **common)
    told = read_checkpoint(path)["loop"]["children"]
    assert 0 < told < 30

    resumed_results = []
    resumed = run_search(
        make_strategy(name, SPACE, settings, 7), per_epoch(objective, jitter=0.001), checkpoint_path=path,
        resume=True, on_result=resumed_results.append, **common,
    )  # fmt: skip
    assert trace(resumed_results) == trace(whole_results)[told:]
    assert resumed.history == whole.history and resumed.best_genotype == whole.best_genotype
    assert (resumed.epochs_trained, resumed.stopped, resumed.failed) == (
        whole.epochs_trained,
        whole.stopped,
        whole.failed,
    )
    assert whole.stopped > 0


def test_a_checkpoint_from_before_early_stopping_resumes_without_it(tmp_path):
    path = tmp_path / "old.pt"
    first = run_search(make_strategy("random", SPACE, {}, 0), CURVES, children=10, checkpoint_path=path)
    payload = torch.load(path, weights_only=True)
    old_keys = ("children", "failed", "reused", "history", "best_reward", "best_genotype", "rewards_by_hash")
    payload["loop"] = {"version": 1, **{k: payload["loop"][k] for k in (*old_keys, "elapsed")}}
    torch.save(payload, path)
    with pytest.raises(StrategyError) as err:
        run_search(
            make_strategy("random", SPACE, {}, 0), per_epoch(), children=20, checkpoint_path=path, resume=True,
            epochs=EPOCHS, early_stop=ASHA,
        )  # fmt: skip
    assert err.value.field == "checkpoint.early_stop"
    more = run_search(
        make_strategy("random", SPACE, {}, 0), per_epoch(), children=20, checkpoint_path=path, resume=True,
        epochs=EPOCHS,
    )  # fmt: skip
    straight = run_search(make_strategy("random", SPACE, {}, 0), CURVES, children=20)
    assert more.history[:10] == first.history and more.history == straight.history
    assert more.epochs_trained is None  # the first ten were never counted


@pytest.mark.parametrize(
    "again, field",
    [
        ({"early_stop": EarlyStop(rule="median")}, "checkpoint.early_stop"),
        ({"early_stop": EarlyStop(rule="asha", reduction_factor=2)}, "checkpoint.early_stop"),
        ({"early_stop": ASHA, "epochs": 10}, "checkpoint.epochs"),
    ],
)
def test_resuming_with_other_early_stopping_is_refused(tmp_path, again, field):
    path = tmp_path / "ckpt.pt"
    run_search(
        make_strategy("random", SPACE, {}, 0), per_epoch(), children=5, epochs=EPOCHS, early_stop=ASHA,
        checkpoint_path=path,
    )  # fmt: skip
    with pytest.raises(StrategyError) as err:
        run_search(
            make_strategy("random", SPACE, {}, 0), per_epoch(), children=8, checkpoint_path=path, resume=True,
            **{"epochs": EPOCHS, **again},
        )  # fmt: skip
    assert err.value.field == field


def test_it_rejects_bad_early_stopping_arguments():
    strategy = make_strategy("random", SPACE, {}, 0)
    with pytest.raises(StrategyError, match="search.epochs: early stopping needs"):
        run_search(strategy, OBJECTIVE, children=3, early_stop=ASHA)
    with pytest.raises(StrategyError, match="search.epochs"):
        run_search(strategy, OBJECTIVE, children=3, epochs=0)
    with pytest.raises(EarlyStopError, match="early_stop.min_epochs"):
        run_search(strategy, per_epoch(), children=3, epochs=3, early_stop=EarlyStop(rule="asha", min_epochs=3))


def test_an_evaluate_that_breaks_the_epoch_protocol_is_an_error():
    def skips(genotype, report):
        report(2, 0.5)

    with pytest.raises(ValueError, match="reported epoch 2, expected epoch 1"):
        run_search(make_strategy("random", SPACE, {}, 0), skips, children=1, epochs=EPOCHS, early_stop=ASHA)

    def short(genotype, report):
        report(1, 0.5)
        return 0.5

    with pytest.raises(ValueError, match="after reporting 1 of 9 epochs"):
        run_search(make_strategy("random", SPACE, {}, 0), short, children=1, epochs=EPOCHS, early_stop=ASHA)


def test_a_child_that_raises_ends_the_search_without_leaving_threads_waiting():
    evaluate = per_epoch()

    def evaluate_or_crash(genotype, report):
        if not hasattr(evaluate_or_crash, "seen"):
            evaluate_or_crash.seen = True
            threading.Event().wait(0.2)  # the first child is slow: later ones wait for it at rung 1
            raise RuntimeError("out of memory")
        return evaluate(genotype, report)

    outcome = []

    def search():
        try:
            run_search(
                make_strategy("random", SPACE, {}, 0), evaluate_or_crash, children=8, parallel=4, epochs=EPOCHS,
                early_stop=ASHA,
            )  # fmt: skip
        except RuntimeError as exc:
            outcome.append(str(exc))

    thread = threading.Thread(target=search)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive() and outcome == ["out of memory"]
    waiting = [t for t in threading.enumerate() if t.name.startswith("child")]
    deadline = time.monotonic() + 10
    while waiting and time.monotonic() < deadline:
        waiting = [t for t in waiting if t.is_alive()]
        time.sleep(0.05)
    assert not waiting
