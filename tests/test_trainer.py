"""The trainer on real data (scikit-learn's digits): reward, determinism, failures."""

import math

import pytest
import torch

from nas_engine.cells import ENAS, NASNET_A
from nas_engine.data import load_dataset
from nas_engine.trainer import EpochMetrics, Recipe, RecipeError, Reporter, train_child

TINY = Recipe(repeats=1, filters=8, epochs=2, batch_size=64, lr=0.1)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return load_dataset("digits", cache_dir=tmp_path_factory.mktemp("cache"), seed=0)


class Recorder(Reporter):
    def __init__(self, stop_after_batches: int | None = None):
        self.started, self.batches, self.epochs = None, 0, []
        self.stop_after = stop_after_batches

    def on_start(self, total_epochs, batches_per_epoch):
        self.started = (total_epochs, batches_per_epoch)

    def on_batch(self, epoch, batch, batches):
        self.batches += 1

    def on_epoch(self, metrics: EpochMetrics):
        self.epochs.append(metrics)

    def should_stop(self):
        return self.stop_after is not None and self.batches >= self.stop_after


def test_a_child_learns_digits_well_above_chance(digits):
    recipe = Recipe(repeats=1, filters=12, epochs=4, batch_size=64, lr=0.1)
    result = train_child(NASNET_A, recipe, digits)
    assert result.status == "ok"
    assert result.reward == result.epochs[-1].val_acc
    assert result.reward > 0.5  # chance is 0.1
    assert result.epochs[-1].train_loss < result.epochs[0].train_loss
    assert result.params > 0 and result.mult_adds > 0 and result.wall_time > 0


def test_training_is_deterministic_on_cpu_for_a_seed(digits):
    a = train_child(NASNET_A, TINY, digits)
    b = train_child(NASNET_A, TINY, digits)
    c = train_child(NASNET_A, Recipe(**{**TINY.to_dict(), "seed": 1}), digits)
    assert [e.train_loss for e in a.epochs] == [e.train_loss for e in b.epochs]
    assert a.reward == b.reward
    assert [e.train_loss for e in a.epochs] != [e.train_loss for e in c.epochs]


def test_training_does_not_disturb_the_callers_random_state(digits):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_child(NASNET_A, Recipe(repeats=1, filters=4, epochs=1, batch_size=256), digits)
    assert torch.equal(torch.rand(3), expected)


def test_the_reporter_sees_every_batch_and_epoch(digits):
    recorder = Recorder()
    train_child(NASNET_A, TINY, digits, reporter=recorder)
    total_epochs, per_epoch = recorder.started
    assert total_epochs == 2 and per_epoch == len(digits.train_labels) // 64
    assert recorder.batches == 2 * per_epoch
    assert [m.epoch for m in recorder.epochs] == [1, 2]
    assert all(0 <= m.val_acc <= 1 for m in recorder.epochs)


def test_a_reporter_can_stop_training_early(digits):
    result = train_child(NASNET_A, TINY, digits, reporter=Recorder(stop_after_batches=3))
    assert result.status == "stopped"
    assert result.reward is None
    assert result.epochs == []


def test_divergence_is_a_reported_failure_not_a_reward(digits):
    recipe = Recipe(repeats=1, filters=4, epochs=1, batch_size=64, lr=1e12, grad_clip=0.0, momentum=0.0)
    result = train_child(NASNET_A, recipe, digits)
    assert result.status == "diverged"
    assert result.reward is None
    assert "became" in result.error


def test_the_full_paper_recipe_runs_aux_head_drop_path_cutout_smoothing(digits):
    recipe = Recipe(
        repeats=1,
        filters=8,
        epochs=1,
        batch_size=64,
        aux_weight=0.4,
        drop_path_keep=0.6,
        cutout=4,
        label_smoothing=0.1,
        nesterov=True,
    )
    result = train_child(ENAS, recipe, digits, keep_model=True)
    assert result.status == "ok"
    assert result.model is not None and result.model.aux_head is not None
    assert math.isfinite(result.epochs[0].train_loss)


def test_a_recipe_round_trips_and_names_bad_fields():
    assert Recipe.from_dict(TINY.to_dict()) == TINY
    assert Recipe.from_dict({"lr": 1}).lr == 1
    for data, field in [
        ({"epochs": 0}, "epochs"),
        ({"lr": -1.0}, "lr"),
        ({"momentum": 1.5}, "momentum"),
        ({"drop_path_keep": 0.0}, "drop_path_keep"),
        ({"macro": "mnist"}, "macro"),
        ({"batch_size": "64"}, "batch_size"),
        ({"epochs": True}, "epochs"),
        ({"colour": 1}, "colour"),
    ]:
        with pytest.raises(RecipeError) as info:
            Recipe.from_dict(data)
        assert info.value.field == field
