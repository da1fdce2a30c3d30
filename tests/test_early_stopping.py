"""Early stopping: settings, rung schedules, the two rules against hand-computed cases, and
the board that makes every decision independent of the order results arrive in."""

from __future__ import annotations

import random

import numpy as np
import pytest

from nas_engine.early_stopping import (
    Board,
    EarlyStop,
    EarlyStopError,
    asha_decision,
    check_epochs,
    decision_epochs,
    fidelity,
    median_decision,
    parse_early_stop,
    quantile,
    rungs,
    running_mean,
)

ASHA = EarlyStop(rule="asha", min_epochs=1, reduction_factor=3)
MEDIAN = EarlyStop(rule="median", min_epochs=2, min_peers=3)


# -- settings ----------------------------------------------------------------------------------
def test_settings_default_to_no_early_stopping_and_round_trip():
    assert parse_early_stop(None) == EarlyStop() and not EarlyStop().active
    assert parse_early_stop("asha") == EarlyStop(rule="asha")
    settings = parse_early_stop({"rule": "median", "min_epochs": 4, "min_peers": 5, "stopped_reward": "drop"})
    assert EarlyStop.from_dict(settings.to_dict()) == settings
    assert settings.to_dict() == {
        "rule": "median",
        "min_epochs": 4,
        "reduction_factor": 3,
        "min_peers": 5,
        "stopped_reward": "drop",
    }


@pytest.mark.parametrize(
    "data, field, reason",
    [
        ({"rule": "hyperband"}, "early_stop.rule", "must be one of none, asha, median"),
        ({"reduction_factor": 1}, "early_stop.reduction_factor", "must be an integer >= 2, got 1"),
        ({"reduction_factor": 2.5}, "early_stop.reduction_factor", "must be an integer >= 2"),
        ({"min_epochs": 0}, "early_stop.min_epochs", "must be an integer >= 1"),
        ({"min_epochs": True}, "early_stop.min_epochs", "must be an integer >= 1"),
        ({"min_peers": 0}, "early_stop.min_peers", "must be an integer >= 1"),
        ({"stopped_reward": "best"}, "early_stop.stopped_reward", "must be one of rung, normalised, drop"),
        ({"grace_period": 3}, "early_stop.grace_period", "unknown field"),
        (["asha"], "early_stop", "must be an object or a rule name"),
    ],
)
def test_it_rejects_bad_settings_naming_the_field(data, field, reason):
    with pytest.raises(EarlyStopError) as err:
        parse_early_stop(data)
    assert err.value.field == field and reason in err.value.reason


def test_settings_built_directly_are_checked_too():
    with pytest.raises(EarlyStopError, match="early_stop.reduction_factor: must be an integer >= 2, got 1"):
        EarlyStop(rule="asha", reduction_factor=1)  # would put every rung at min_epochs, forever
    with pytest.raises(EarlyStopError, match="spec.early_stop.rule"):
        parse_early_stop({"rule": "pbt"}, "spec.early_stop")


def test_a_rule_that_could_never_stop_a_child_is_refused():
    check_epochs(ASHA, 2)
    check_epochs(EarlyStop(), 1)  # no rule: nothing to check
    with pytest.raises(EarlyStopError, match="early_stop.min_epochs: must be below the children's 3 epochs"):
        check_epochs(EarlyStop(rule="median", min_epochs=3), 3)


# -- rung schedule -----------------------------------------------------------------------------
def test_rungs_are_min_epochs_times_powers_of_eta_below_the_full_training():
    assert rungs(ASHA, 20) == (1, 3, 9)
    assert rungs(ASHA, 27) == (1, 3, 9)  # never at the last epoch: the child is done then
    assert rungs(ASHA, 28) == (1, 3, 9, 27)
    assert rungs(EarlyStop(rule="asha", min_epochs=2, reduction_factor=2), 16) == (2, 4, 8)
    assert rungs(ASHA, 1) == ()
    assert decision_epochs(ASHA, 20) == (1, 3, 9)
    assert decision_epochs(MEDIAN, 6) == (2, 3, 4, 5)  # every epoch after the grace period
    assert decision_epochs(EarlyStop(), 20) == ()


# -- ASHA ----------------------------------------------------------------------------------------
def test_asha_lets_the_first_child_at_a_rung_continue():
    decision = asha_decision(0.01, [], 3, epoch=1)
    assert not decision.stop and decision.threshold is None and "first at this rung" in decision.reason


def test_asha_cuts_at_the_one_minus_one_over_eta_quantile_of_earlier_values():
    # Three earlier values, eta 3: the 2/3 quantile sits a third of the way from 0.2 to 0.6.
    cut = asha_decision(0.3, [0.6, 0.1, 0.2], 3, epoch=3)
    assert cut.threshold == pytest.approx(0.2 + 0.4 / 3) and cut.stop and cut.peers == 3
    assert "stop" in cut.reason and "below the cutoff 0.3333 of 3 peers" in cut.reason
    assert not asha_decision(0.34, [0.6, 0.1, 0.2], 3).stop
    # One earlier value: the cutoff is that value, and a tie continues (stop only if strictly below).
    assert asha_decision(0.5, [0.5], 3).threshold == 0.5 and not asha_decision(0.5, [0.5], 3).stop
    assert asha_decision(0.49, [0.5], 3).stop
    # eta 2 keeps the top half: the median of 1, 2, 3, 4 is 2.5.
    assert asha_decision(2.4, [4, 1, 3, 2], 2).threshold == 2.5 and asha_decision(2.4, [4, 1, 3, 2], 2).stop


def test_the_quantile_is_numpys_linear_percentile():
    rng = random.Random(0)
    for n in range(1, 40):
        values = sorted(rng.random() for _ in range(n))
        for eta in (2, 3, 4, 7):
            assert quantile(values, eta - 1, eta) == pytest.approx(
                np.percentile(values, 100 * (1 - 1 / eta)), abs=1e-12
            )


# -- median stopping rule ----------------------------------------------------------------------
def test_running_means_start_at_the_grace_period():
    assert running_mean([0.1, 0.2, 0.3, 0.4], 2, 3) == pytest.approx(0.25)
    assert running_mean([0.1, 0.2, 0.3, 0.4], 1, 4) == pytest.approx(0.25)


def test_the_median_rule_compares_the_best_so_far_with_the_median_of_running_means():
    # Best so far 0.35 (epoch 1), median of 0.3, 0.4, 0.5 is 0.4: stop.
    decision = median_decision([0.35, 0.2, 0.3], [0.5, 0.3, 0.4], min_peers=3)
    assert decision.stop and decision.epoch == 3 and decision.threshold == pytest.approx(0.4)
    assert decision.value == 0.35 and "below the median of running means 0.4000 of 3 peers" in decision.reason
    assert not median_decision([0.41], [0.5, 0.3, 0.4], min_peers=3).stop
    assert not median_decision([0.4], [0.5, 0.3, 0.4], min_peers=3).stop  # a tie continues
    # An even number of peers: the mean of the middle two.
    assert median_decision([0.1], [0.1, 0.2, 0.3, 0.4], 3).threshold == pytest.approx(0.25)
    # Too few peers: continue, whatever the values.
    few = median_decision([0.0], [0.9, 0.9], min_peers=3)
    assert not few.stop and few.threshold is None and "only 2 peers" in few.reason


# -- the board: decisions in ask order ---------------------------------------------------------
def test_a_child_waits_for_every_earlier_child_to_reach_the_rung_or_end_below_it():
    board = Board(ASHA, max_epochs=9)  # rungs 1, 3
    for i in range(3):
        board.open(i)
    board.report(2, 0.5)
    assert board.decision(2, 1) is None and not board.decidable(2, 1)  # 0 and 1 may still report epoch 1
    board.report(0, 0.4)
    assert not board.decision(0, 1).stop  # the first child never waits
    assert board.decision(2, 1) is None
    board.end(1)  # child 1 ended before epoch 1 (it failed): nobody's peer
    decision = board.decision(2, 1)
    assert decision.peers == 1 and decision.threshold == 0.4 and not decision.stop
    board.report(2, 0.1)
    assert board.decision(2, 2).rule == "none"  # not a rung: no waiting, no decision


def test_a_child_that_ended_below_a_rung_is_not_a_peer_there_but_is_at_lower_rungs():
    board = Board(ASHA, max_epochs=9)
    board.set_row(0, [0.9, 0.9], ended=True)  # stopped or failed after epoch 2
    board.set_row(1, [0.5, 0.6, 0.7], ended=False)
    assert board.decision(1, 1).peers == 1 and board.decision(1, 1).stop
    assert board.decision(1, 3).peers == 0 and not board.decision(1, 3).stop


def test_rows_only_grow():
    board = Board(ASHA, max_epochs=9)
    board.set_row(0, [0.1, 0.2], ended=False)
    board.set_row(0, [0.1, 0.2, 0.3], ended=True)
    with pytest.raises(ValueError, match="rows only grow"):
        board.set_row(0, [0.1, 0.25, 0.3], ended=True)
    with pytest.raises(ValueError, match="has ended"):
        board.set_row(0, [0.1, 0.2, 0.3, 0.4], ended=True)
    with pytest.raises(ValueError, match="has ended"):
        board.report(0, 0.5)
    board.open(1)
    with pytest.raises(ValueError, match="finite"):
        board.report(1, float("nan"))
    with pytest.raises(ValueError, match="has not reported epoch 1"):
        board.decision(1, 1)


def curves(rng: random.Random, n: int, epochs: int) -> list[list[float]]:
    """Noisy rising curves that cross: per child a final level and a learning speed."""
    out = []
    for _ in range(n):
        level, speed = rng.random(), rng.uniform(0.2, 3.0)
        out.append([level * (1 - (1 - e / epochs) ** speed) + rng.gauss(0, 0.02) for e in range(1, epochs + 1)])
    return out


def in_order(settings: EarlyStop, truth: list[list[float]], epochs: int) -> list[int]:
    """Each child trained to its end before the next one starts: where each one ended."""
    board, ends = Board(settings, epochs), []
    for i, curve in enumerate(truth):
        board.open(i)
        for epoch, value in enumerate(curve, start=1):
            board.report(i, value)
            if board.decision(i, epoch).stop:
                break
        board.end(i)
        ends.append(len(board.values(i)))
    return ends


def shuffled(settings: EarlyStop, truth: list[list[float]], epochs: int, rng: random.Random) -> list[int]:
    """Children asked one by one at random moments, each epoch's result arriving in a random
    order across children; a child waiting for its decision does nothing until it can go on."""
    board, n = Board(settings, epochs), len(truth)
    asked, waiting, done = 0, {}, set()
    while len(done) < n:
        choices = [i for i in range(asked) if i not in done]
        if asked < n:
            choices.append(asked)  # the next child gets asked
        i = rng.choice(choices)
        if i == asked:
            board.open(i)
            asked += 1
            continue
        if i in waiting:
            decision = board.decision(i, waiting[i])
            if decision is None:
                continue
            del waiting[i]
            if decision.stop:
                board.end(i)
                done.add(i)
            continue
        epoch = board.report(i, truth[i][len(board.values(i))])
        if epoch == epochs:
            board.end(i)
            done.add(i)
        elif board.decision(i, epoch) is None:
            waiting[i] = epoch
        elif board.decision(i, epoch).stop:
            board.end(i)
            done.add(i)
    return [len(board.values(i)) for i in range(n)]


@pytest.mark.parametrize("settings", [ASHA, EarlyStop(rule="asha", min_epochs=2, reduction_factor=2), MEDIAN])
@pytest.mark.parametrize("seed", range(6))
def test_decisions_are_the_same_whether_results_arrive_in_order_or_shuffled(settings, seed):
    epochs = 12
    truth = curves(random.Random(seed), 40, epochs)
    expected = in_order(settings, truth, epochs)
    assert min(expected) < epochs and max(expected) == epochs  # some stopped, some went all the way
    for shuffle in range(3):
        assert shuffled(settings, truth, epochs, random.Random(1000 * seed + shuffle)) == expected
    # And a board rebuilt from finished rows, inserted in any order, decides the same.
    rows = [(i, truth[i][:end], True) for i, end in enumerate(expected)]
    random.Random(seed).shuffle(rows)
    rebuilt = Board.from_rows(settings, epochs, rows)
    for i, end in enumerate(expected):
        stops = [e for e in decision_epochs(settings, epochs) if e <= end and rebuilt.decision(i, e).stop]
        assert stops == ([end] if end < epochs else [])


# -- what the strategy is told ---------------------------------------------------------------
def test_the_fidelity_holds_the_values_at_the_decision_epochs_reached():
    told = fidelity(EarlyStop(rule="asha", stopped_reward="normalised"), [0.1, 0.2, 0.3], 20)
    assert told.epochs == 3 and told.max_epochs == 20 and told.stopped
    assert told.rungs == ((1, 0.1), (3, 0.3)) and told.stopped_reward == "normalised"
    full = fidelity(ASHA, [0.1] * 9, 9)
    assert not full.stopped and full.rungs == ((1, 0.1), (3, 0.1))
