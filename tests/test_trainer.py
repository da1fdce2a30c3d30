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
    for data, field in [
        ({"crop_padding": -1}, "crop_padding"),
        ({"crop_padding": 1.5}, "crop_padding"),
        ({"flip": "yes"}, "flip"),
        ({"dropout": 1.0}, "dropout"),
        ({"weight_decay": float("inf")}, "weight_decay"),
    ]:
        with pytest.raises(RecipeError) as info:
            Recipe.from_dict(data)
        assert info.value.field == field
    nullable = Recipe.from_dict({"crop_padding": None, "flip": None})
    assert (nullable.crop_padding, nullable.flip) == (None, None)
    assert Recipe.from_dict({"crop_padding": 2, "flip": True}).to_dict()["crop_padding"] == 2


# -- augmentation that fits the data ------------------------------------------------------------
def test_augmentation_defaults_follow_the_data_set(digits):
    recipe = Recipe()
    assert recipe.padding_for(digits) == 1  # 8 px images: an eighth, not CIFAR's 4 px
    assert recipe.flip_for(digits) is False  # digits say mirroring is not safe
    assert Recipe(crop_padding=3, flip=True).padding_for(digits) == 3
    assert Recipe(crop_padding=3, flip=True).flip_for(digits) is True
    big = load_dataset("digits", image_size=32, cache_dir=None, seed=0)
    assert recipe.padding_for(big) == 4


def test_weight_decay_reaches_conv_and_linear_weights_only(digits):
    """One step with lr > 0 and zero gradients would move only decayed parameters: compare
    the optimiser groups instead, which is what SGD applies."""
    from nas_engine.network import NASNetwork
    from nas_engine.trainer import _decay_groups

    model = NASNetwork(NASNET_A, TINY.macro_config(digits))
    decayed, plain = _decay_groups(model, TINY)
    assert decayed["weight_decay"] == TINY.weight_decay and plain["weight_decay"] == 0.0
    assert all(p.dim() > 1 for p in decayed["params"]) and all(p.dim() == 1 for p in plain["params"])
    bn = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) and m.affine}
    assert bn and bn <= {id(p) for p in plain["params"]}
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
    (everything,) = _decay_groups(model, Recipe(**{**TINY.to_dict(), "weight_decay_norm_bias": True}))
    assert len(everything["params"]) == len(list(model.parameters()))


# -- test split and final trainings --------------------------------------------------------------
def test_the_test_split_is_scored_only_when_asked(digits):
    search_child = train_child(NASNET_A, TINY, digits)
    final = train_child(NASNET_A, TINY, digits, test=True)
    assert search_child.test_acc is None and search_child.to_dict()["test_acc"] is None
    assert final.reward == search_child.reward  # the test split changes nothing in training
    assert 0.0 <= final.test_acc <= 1.0 and final.test_loss > 0
    assert final.to_dict()["val_acc"] == final.reward


def test_val_size_zero_trains_on_every_training_image_and_reports_test_only(tmp_path):
    data = load_dataset("digits", cache_dir=tmp_path, val_size=0)
    result = train_child(NASNET_A, TINY, data, test=True)
    assert result.status == "ok" and result.reward is None
    assert all(e.val_acc is None and e.val_loss is None for e in result.epochs)
    assert result.test_acc is not None


# -- checkpoints ----------------------------------------------------------------------------------
class StopAfterEpochs(Reporter):
    def __init__(self, epochs: int):
        self.done, self.limit, self.resumed = 0, epochs, None

    def on_epoch(self, metrics):
        self.done += 1

    def on_resume(self, epoch, history):
        self.resumed = (epoch, len(history))

    def should_stop(self):
        return self.done >= self.limit


def test_a_run_resumed_from_its_checkpoint_ends_with_the_same_weights(digits, tmp_path):
    recipe = Recipe(**{**TINY.to_dict(), "epochs": 3, "drop_path_keep": 0.8})
    straight = train_child(NASNET_A, recipe, digits, keep_model=True, test=True)
    checkpoint = tmp_path / "run.pt"
    first = train_child(NASNET_A, recipe, digits, reporter=StopAfterEpochs(2), checkpoint=checkpoint)
    assert first.status == "stopped" and len(first.epochs) == 2 and checkpoint.is_file()
    reporter = StopAfterEpochs(99)
    resumed = train_child(
        NASNET_A, recipe, digits, keep_model=True, test=True, checkpoint=checkpoint, reporter=reporter
    )
    assert resumed.resumed_from_epoch == 2 and reporter.resumed == (2, 2) and reporter.done == 1
    assert [e.epoch for e in resumed.epochs] == [1, 2, 3]
    assert [e.train_loss for e in resumed.epochs] == [e.train_loss for e in straight.epochs]
    assert resumed.test_acc == straight.test_acc
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_checkpoint_of_another_run_is_not_resumed(digits, tmp_path):
    checkpoint = tmp_path / "run.pt"
    train_child(NASNET_A, TINY, digits, reporter=StopAfterEpochs(1), checkpoint=checkpoint)
    other = Recipe(**{**TINY.to_dict(), "seed": 5})
    result = train_child(NASNET_A, other, digits, checkpoint=checkpoint)
    assert result.resumed_from_epoch == 0 and len(result.epochs) == TINY.epochs
    checkpoint.write_bytes(b"not a checkpoint")
    assert train_child(NASNET_A, TINY, digits, checkpoint=checkpoint).resumed_from_epoch == 0
