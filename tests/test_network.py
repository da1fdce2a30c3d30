"""Child networks: shapes, the paper's semantics, and fidelity to the published counts."""

import random
from dataclasses import replace

import pytest
import torch

from nas_engine.cells import KNOWN_CELLS, NASNET_A
from nas_engine.counting import count_params, describe
from nas_engine.genotype import Genotype
from nas_engine.network import (
    PRESETS,
    MacroConfig,
    NASNetwork,
    NetworkError,
    build_network,
    filters_for_penultimate,
    output_multiplier,
    parse_n_at_p,
)
from nas_engine.ops import OP_FACTORIES, FactorizedReduction, Identity, SepConv, make_op
from nas_engine.space import OPS, SearchSpace

timm = pytest.importorskip("timm")


def meta_network(genotype, macro):
    with torch.device("meta"):
        return NASNetwork(genotype, macro)


def within(value, target, tolerance):
    return abs(value - target) / target <= tolerance


# -- fidelity against the public PyTorch port and the paper's tables ---------------------
def test_nasnet_a_large_has_exactly_the_parameters_of_the_timm_port():
    with torch.device("meta"):
        reference = timm.create_model("nasnetalarge")
    reference_params = sum(p.numel() for p in reference.parameters())
    ours = describe(NASNET_A, PRESETS["imagenet_large_6@4032"])
    assert reference_params == 88_753_150
    assert ours.params == reference_params
    assert within(ours.mult_adds, 23.8e9, 0.03)


def test_a_narrow_large_model_matches_timm_too():
    with torch.device("meta"):
        reference = timm.create_model("nasnetalarge", stem_size=32, num_features=1056)
    macro = replace(PRESETS["imagenet_large_6@4032"], filters=44, stem_multiplier=1.0)
    assert describe(NASNET_A, macro).params == sum(p.numel() for p in reference.parameters()) == 7_188_490


def test_nasnet_a_mobile_matches_the_paper():
    counts = describe(NASNET_A, PRESETS["imagenet_mobile_4@1056"])
    assert within(counts.params, 5.3e6, 0.03)
    assert within(counts.mult_adds, 564e6, 0.03)


def test_nasnet_a_cifar_6_at_768_matches_the_paper():
    assert within(describe(NASNET_A, PRESETS["cifar_6@768"]).params, 3.3e6, 0.03)


def test_nasnet_a_cifar_at_2304_filters():
    # The paper's table gives 27.6M for "7 @ 2304". The reference construction at
    # N = 7, F = 96 counts 32.59M; at N = 6 it counts 28.21M, within 3% of 27.6M.
    # docs/fidelity.md explains why we believe the table's N is off by one.
    seven = describe(NASNET_A, PRESETS["cifar_7@2304"]).params
    six = describe(NASNET_A, replace(PRESETS["cifar_7@2304"], repeats=6)).params
    assert seven == 32_590_954
    assert within(six, 27.6e6, 0.03)


def test_the_penultimate_layer_has_p_filters_for_every_preset():
    for name, macro in PRESETS.items():
        _, p = parse_n_at_p(name.split("_")[-1])
        assert meta_network(NASNET_A, macro).penultimate_filters == p
        assert filters_for_penultimate(NASNET_A, p) == macro.filters


def test_n_at_p_notation_is_parsed_and_checked():
    assert parse_n_at_p("4@1056") == (4, 1056)
    for bad in ["6x768", "6@", "@768", "0@768", "six@768"]:
        with pytest.raises(NetworkError, match="n_at_p"):
            parse_n_at_p(bad)
    with pytest.raises(NetworkError, match="penultimate_filters"):
        filters_for_penultimate(NASNET_A, 770)


def test_concat_blocks_count_twice_in_the_output_multiplier():
    data = NASNET_A.to_dict()
    data["normal"]["blocks"][4]["combine"] = "concat"
    assert output_multiplier(Genotype.from_dict(data).normal) == 7


# -- forward passes on real tensors ------------------------------------------------------
@pytest.mark.parametrize("name", sorted(KNOWN_CELLS))
def test_known_cells_build_and_run_forward_and_backward(name):
    torch.manual_seed(0)
    model = build_network(KNOWN_CELLS[name], repeats=1, filters=8, aux_head=True, drop_path_keep=0.7)
    model.drop_path_progress = 0.5
    logits, aux = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and aux.shape == (2, 10)
    (logits.sum() + aux.sum()).backward()
    model.eval()
    logits, aux = model(torch.randn(2, 3, 32, 32))
    assert aux is None


def test_random_genotypes_of_any_space_build_and_run():
    rng = random.Random(0)
    for space in [SearchSpace(), SearchSpace(num_blocks=3), SearchSpace(ops=("identity", "max_pool_7x7"))]:
        for _ in range(4):
            genotype = Genotype.from_decisions(space, [rng.randrange(n) for n in space.decision_sizes()])
            model = build_network(genotype, repeats=1, filters=6, image_size=16)
            logits, _ = model(torch.randn(2, 3, 16, 16))
            assert logits.shape == (2, 10)
            assert model.penultimate_filters == 4 * 6 * output_multiplier(genotype.normal)


def test_every_op_keeps_or_halves_the_spatial_size_and_writes_c_out_channels():
    x = torch.randn(2, 12, 9, 9)
    for name in OPS:
        for stride in (1, 2):
            y = make_op(name, 12, 8, stride)(x)
            assert y.shape == (2, 8, 5 if stride == 2 else 9, 5 if stride == 2 else 9), (name, stride)
    assert set(OP_FACTORIES) == set(OPS)


def test_identity_is_free_only_when_shapes_match():
    assert isinstance(make_op("identity", 8, 8, 1), Identity)
    assert sum(p.numel() for p in make_op("identity", 8, 8, 2).parameters()) == 8 * 8 + 2 * 8


def test_separable_convs_are_applied_twice():
    op = make_op("sep_conv_5x5", 8, 8, 1)
    assert isinstance(op, SepConv)
    convs = [m for m in op.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.groups for c in convs] == [8, 1, 8, 1]
    relus = [m for m in op.modules() if isinstance(m, torch.nn.ReLU)]
    assert len(relus) == 2


def test_factorized_reduction_halves_and_sees_both_pixel_phases():
    reduce = FactorizedReduction(4, 6).eval()
    x = torch.zeros(1, 4, 8, 8)
    x[:, :, 1::2, 1::2] = 1.0  # only the pixels the first path skips
    y = reduce(x)
    assert y.shape == (1, 6, 4, 4)
    assert not torch.allclose(y[:, 3:], reduce.bn(torch.zeros(1, 6, 4, 4))[:, 3:])


def test_drop_path_only_acts_in_training_and_grows_with_depth():
    model = build_network(NASNET_A, repeats=1, filters=8, drop_path_keep=0.6)
    model.drop_path_progress = 1.0
    model.train()
    model(torch.randn(2, 3, 32, 32))
    keeps = [cell.drop_keep for cell in model.cells]
    assert keeps == sorted(keeps, reverse=True)
    assert keeps[-1] == pytest.approx(0.6)
    model.eval()
    torch.manual_seed(0)
    a, _ = model(torch.ones(2, 3, 32, 32))
    b, _ = model(torch.ones(2, 3, 32, 32))
    assert torch.equal(a, b)


def test_the_imagenet_macro_uses_two_stem_reduction_cells():
    macro = MacroConfig(kind="imagenet", repeats=1, filters=16, image_size=64, stem_multiplier=1.0)
    model = NASNetwork(NASNET_A, macro)
    assert [c.reduction for c in model.cells[:2]] == [True, True]
    assert sum(c.reduction for c in model.cells) == 4
    logits, _ = model(torch.randn(1, 3, 64, 64))
    assert logits.shape == (1, 10)


def test_the_aux_head_sits_after_the_last_normal_cell_before_the_second_reduction():
    model = build_network(NASNET_A, repeats=2, filters=8, aux_head=True)
    kinds = ["R" if c.reduction else "N" for c in model.cells]
    assert kinds == list("NNRNNRNN")
    assert model.aux_after == 4
    assert count_params(model, include_aux=True) > count_params(model)


@pytest.mark.parametrize(
    ("field", "value"),
    [("kind", "mnist"), ("repeats", 0), ("filters", 1), ("image_size", 4), ("drop_path_keep", 0.0)],
)
def test_a_bad_macro_config_names_the_field(field, value):
    with pytest.raises(NetworkError, match=field):
        MacroConfig(**{field: value})
