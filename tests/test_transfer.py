"""Transfer: the paper's final trainings by name (`--preset`) and networks fitted to a budget.

Counting runs on the meta device but still takes up to a second per network, so the
budget tests fix N or sweep a short range of small networks, through a shared memo.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch

from nas_engine import transfer
from nas_engine.cells import AMOEBANET_A, NASNET_A
from nas_engine.commands import train as train_command
from nas_engine.commands.options import parse_count
from nas_engine.counting import Counts, describe
from nas_engine.errors import FieldError
from nas_engine.network import MacroConfig, NASNetwork
from nas_engine.trainer import Recipe, TrainResult
from nas_engine.transfer import TRANSFER_PRESETS, BudgetError, fit_to_budget, penultimate_filters
from tests.test_cli import run  # the CLI in-process: exit status, stdout, stderr


@functools.cache
def _describe(genotype, macro):
    return describe(genotype, macro)


@pytest.fixture
def memo(monkeypatch):
    """describe, remembered across the fits of one test (the fits revisit the same networks)."""
    monkeypatch.setattr(transfer, "describe", _describe)


@pytest.fixture
def trained(monkeypatch):
    """Replace training by a stub that records the recipe and counts the real network."""
    seen = {}

    def fake_train_child(genotype, recipe, data, **kwargs):
        seen.update(recipe=recipe, data=data)
        counts = describe(genotype, recipe.macro_config(data))
        return TrainResult(status="ok", reward=0.5, params=counts.params, mult_adds=counts.mult_adds, wall_time=0.0)

    monkeypatch.setattr(train_command, "train_child", fake_train_child)
    return seen


# -- fitting a budget ---------------------------------------------------------------------------
def test_nasnet_a_mobile_at_564m_mult_adds_and_n_4_lands_on_4_at_1056():
    n, f, counts = fit_to_budget(
        NASNET_A, kind="imagenet", image_size=224, num_classes=1000, max_mult_adds=564e6, repeats=4
    )
    assert (n, f, penultimate_filters(NASNET_A, f)) == (4, 44, 1056)
    assert counts == Counts(params=5_289_978, mult_adds=563_638_816)  # the paper: 5.3M, 564M


def test_the_fit_is_the_widest_network_within_every_budget(memo):
    kwargs = dict(kind="cifar", image_size=16, num_classes=10, repeats=2)
    n, f, counts = fit_to_budget(AMOEBANET_A, max_params=150_000, max_mult_adds=20e6, **kwargs)
    assert counts.params <= 150_000 and counts.mult_adds <= 20e6
    wider = describe(AMOEBANET_A, MacroConfig(kind="cifar", repeats=2, filters=f + 1, image_size=16))
    assert wider.params > 150_000 or wider.mult_adds > 20e6


def test_a_bigger_budget_never_gives_a_smaller_network(memo):
    kwargs = dict(kind="cifar", image_size=8, num_classes=10, repeats=range(1, 4))
    budgets = (30e3, 60e3, 120e3)
    fitted = [fit_to_budget(NASNET_A, max_params=budget, **kwargs) for budget in budgets]
    params = [counts.params for _, _, counts in fitted]
    assert params == sorted(params) and len(set(params)) == 3
    assert all(counts.params <= budget and 1 <= n <= 3 for budget, (n, _, counts) in zip(budgets, fitted))
    # ... and the pick of the sweep is no smaller than the widest network at any one N
    for n in range(1, 4):
        assert fit_to_budget(NASNET_A, max_params=120e3, **{**kwargs, "repeats": n})[2].params <= params[-1]


@pytest.mark.parametrize(("field", "budget"), [("max_params", 1_000), ("max_mult_adds", 10_000)])
def test_an_unreachable_budget_names_the_field_and_the_smallest_reachable_value(field, budget):
    smallest = describe(NASNET_A, MacroConfig(kind="cifar", repeats=1, filters=2, image_size=32))
    with pytest.raises(BudgetError) as info:
        fit_to_budget(NASNET_A, kind="cifar", image_size=32, num_classes=10, **{field: budget})
    assert isinstance(info.value, FieldError) and info.value.field == field
    assert f"smallest reachable value is {getattr(smallest, field.removeprefix('max_')):,}" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({}, "max_params"), ({"max_params": -5}, "max_params"), ({"max_mult_adds": float("nan")}, "max_mult_adds")],
)
def test_a_missing_or_nonpositive_budget_is_refused(kwargs, field):
    with pytest.raises(BudgetError) as info:
        fit_to_budget(NASNET_A, kind="cifar", image_size=32, num_classes=10, **kwargs)
    assert info.value.field == field


def test_counts_are_read_as_people_write_them():
    assert [parse_count(t) for t in ("564M", "5.3m", "23.8B", "600e6", "3300000", "50k")] == [
        564_000_000, 5_300_000, 23_800_000_000, 600_000_000, 3_300_000, 50_000,
    ]  # fmt: skip
    for bad in ("", "abc", "-5", "0", "1e", "inf"):
        with pytest.raises(Exception, match="positive count"):
            parse_count(bad)


# -- presets ------------------------------------------------------------------------------------
def test_presets_are_valid_recipes_whose_networks_build():
    assert {"cifar_final", "cifar_final_large", "imagenet_mobile", "imagenet_large"} <= set(TRANSFER_PRESETS)
    assert {name for name in TRANSFER_PRESETS if name.endswith("_cpu")} == {"cifar_final_cpu", "mobile_cpu"}
    for name, preset in TRANSFER_PRESETS.items():
        assert Recipe.from_dict(preset.recipe.to_dict()) == preset.recipe, name
        assert preset.description and preset.reference
        macro = preset.macro_config()
        with torch.device("meta"):
            net = NASNetwork(NASNET_A, macro)
        assert net.penultimate_filters == penultimate_filters(NASNET_A, preset.recipe.filters), name
        assert (net.aux_head is not None) == (preset.recipe.aux_weight > 0), name


def test_the_paper_presets_have_the_paper_sizes_and_recipes():
    sizes = {name: (p.n_at_p(NASNET_A), p.image_size) for name, p in TRANSFER_PRESETS.items()}
    assert sizes["cifar_final"] == ("6@768", 32) and sizes["cifar_final_large"] == ("7@2304", 32)
    assert sizes["imagenet_mobile"] == ("4@1056", 224) and sizes["imagenet_large"] == ("6@4032", 331)
    cifar = TRANSFER_PRESETS["cifar_final"].recipe
    assert (cifar.epochs, cifar.batch_size, cifar.lr, cifar.weight_decay, cifar.grad_clip) == (600, 32, 0.025, 5e-4, 5)
    assert (cifar.aux_weight, cifar.drop_path_keep, cifar.cutout, cifar.cosine) == (0.4, 0.6, 16, True)
    large = TRANSFER_PRESETS["imagenet_large"].recipe
    assert (large.stem_multiplier, large.skip_reduction_input, large.dropout, large.drop_path_keep) == (
        3,
        True,
        0.5,
        0.7,
    )
    mobile = TRANSFER_PRESETS["imagenet_mobile"].recipe
    assert (mobile.stem_multiplier, mobile.label_smoothing, mobile.dropout, mobile.drop_path_keep) == (1, 0.1, 0.5, 1)


def test_the_cpu_presets_keep_the_regularisation_of_their_paper_recipe():
    pairs = [("cifar_final_cpu", "cifar_final"), ("mobile_cpu", "imagenet_mobile")]
    kept = ("macro", "stem_multiplier", "weight_decay", "label_smoothing", "drop_path_keep", "aux_weight", "grad_clip")
    for small, paper in pairs:
        a, b = TRANSFER_PRESETS[small].recipe, TRANSFER_PRESETS[paper].recipe
        assert all(getattr(a, k) == getattr(b, k) for k in (*kept, "cutout", "dropout", "cosine")), small
        assert a.epochs <= 10 and a.repeats < b.repeats and a.filters < b.filters


# -- the command line ---------------------------------------------------------------------------
@pytest.fixture
def one_thread():
    """Beside other tests on two cores, one thread trains these tiny networks far faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_cpu_preset_trains_on_digits_end_to_end(tmp_path, one_thread):
    out = tmp_path / "bundle"
    result = run(
        "train", "--preset", "cifar_final_cpu", "--epochs", "1", "--subset-per-class", "10",
        "--cache-dir", tmp_path / "cache", "--output", out, "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "ok" and summary["preset"] == "cifar_final_cpu"
    assert (summary["n_at_p"], summary["image_size"], summary["budget"]) == ("2@192", 32, None)
    recipe = json.loads((out / "recipe.json").read_text())
    assert (recipe["epochs"], recipe["batch_size"], recipe["cutout"], recipe["drop_path_keep"]) == (1, 32, 16, 0.6)
    assert recipe["aux_weight"] == 0.4


def test_explicit_options_override_the_preset(tmp_path, trained):
    result = run(
        "train", "--preset", "cifar_final", "--epochs", "3", "--cutout", "0", "-F", "4", "--no-cosine",
        "--batch-size", "128", "--image-size", "16", "--subset-per-class", "5", "--cache-dir", tmp_path, "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    recipe = trained["recipe"]
    assert (recipe.repeats, recipe.filters, recipe.epochs, recipe.cutout, recipe.cosine) == (6, 4, 3, 0, False)
    assert recipe.batch_size == 128  # the usual default, given explicitly, still beats the preset's 32
    assert (recipe.drop_path_keep, recipe.aux_weight, recipe.lr) == (0.6, 0.4, 0.025)  # from the preset
    assert trained["data"].image_size == 16 and json.loads(result.stdout)["n_at_p"] == "6@96"


def test_without_a_preset_the_train_defaults_are_unchanged(tmp_path, trained):
    result = run("train", "--subset-per-class", "5", "--cache-dir", tmp_path, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert trained["recipe"] == Recipe()
    assert "digits: cifar 2@384 (F=16) at 8px" in result.stdout


def test_the_command_line_fits_the_width_to_a_budget(tmp_path, trained):
    result = run(
        "train", "--max-params", "50k", "-N", "1", "--subset-per-class", "5", "--cache-dir", tmp_path, "--json"
    )
    assert result.returncode == 0, result.stderr
    summary, recipe = json.loads(result.stdout), trained["recipe"]
    assert summary["n_at_p"] == f"1@{24 * recipe.filters}" and recipe.repeats == 1
    assert summary["budget"]["max_params"] == 50_000 and summary["budget"]["params"] <= 50_000
    wider = describe(NASNET_A, MacroConfig(repeats=1, filters=recipe.filters + 1, in_channels=1, image_size=8))
    assert wider.params > 50_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-params", "1M", "-F", "8"], "error: --max-params: the budget picks the width"),
        (["--max-mult-adds", "600M", "--n-at-p", "4@1056"], "error: --max-mult-adds: the budget picks the width"),
        (["--max-mult-adds", "1000", "-N", "1"], "error: --max-mult-adds: 1,000 is below the smallest network"),
        (["--max-params", "lots"], "argument --max-params: expected a positive count"),
        (["--preset", "cifar_huge"], "error: --preset: unknown preset 'cifar_huge'; known presets: cifar_final"),
    ],
)
def test_bad_transfer_options_are_one_line_and_exit_status_2(tmp_path, trained, args, message):
    result = run("train", *args, "--subset-per-class", "5", "--cache-dir", tmp_path)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr and "recipe" not in trained


def test_the_presets_are_listed_with_their_n_at_p_for_the_cell():
    text = run("train", "--list-presets").stdout
    assert all(name in text for name in TRANSFER_PRESETS) and "4@1056" in text
    rows = json.loads(run("train", "--list-presets", "--json").stdout)
    assert {row["name"]: row["n_at_p"] for row in rows}["imagenet_large"] == "6@4032"
