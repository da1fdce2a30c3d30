"""Genotypes: JSON round trip, validation that names the field, canonical hashing."""

import json
import random

import pytest

from nas_engine.cells import KNOWN_CELLS, NASNET_A
from nas_engine.genotype import Block, Cell, Genotype, GenotypeError
from nas_engine.space import OPS, SearchSpace, SpaceError


def random_genotype(rng: random.Random, space: SearchSpace | None = None) -> Genotype:
    space = space or SearchSpace()
    decisions = [rng.randrange(n) for n in space.decision_sizes()]
    return Genotype.from_decisions(space, decisions)


def nasnet_dict():
    return json.loads(NASNET_A.to_json())


def test_the_paper_space_has_50_decisions_and_13_ops():
    space = SearchSpace()
    assert len(OPS) == 13
    assert space.num_decisions == 50
    assert space.decision_sizes()[:5] == [2, 2, 13, 13, 2]
    assert space.decision_sizes()[20:25] == [6, 6, 13, 13, 2]
    assert space.decision_names()[7] == "normal.block1.op_a"


def test_a_restricted_space_changes_the_decision_sizes():
    space = SearchSpace(ops=("identity", "sep_conv_3x3", "max_pool_3x3"), num_blocks=3, combines=("add",))
    assert space.num_decisions == 30
    assert space.decision_sizes()[:5] == [2, 2, 3, 3, 1]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"ops": ["conv_9x9"]}, "space.ops"),
        ({"ops": []}, "space.ops"),
        ({"num_blocks": 0}, "space.num_blocks"),
        ({"num_blocks": "5"}, "space.num_blocks"),
        ({"combines": ["mul"]}, "space.combines"),
        ({"colour": "red"}, "space.colour"),
    ],
)
def test_it_rejects_a_bad_space_naming_the_field(data, field):
    with pytest.raises(SpaceError, match=field.replace(".", r"\.")):
        SearchSpace.from_dict(data)


@pytest.mark.parametrize("name", sorted(KNOWN_CELLS))
def test_known_cells_round_trip_through_json(name):
    genotype = KNOWN_CELLS[name]
    assert Genotype.from_json(genotype.to_json()) == genotype
    assert Genotype.from_json(genotype.to_json(indent=2)) == genotype


def test_random_genotypes_round_trip_through_decisions_and_json():
    rng = random.Random(0)
    space = SearchSpace()
    for _ in range(50):
        genotype = random_genotype(rng, space)
        assert Genotype.from_decisions(space, genotype.to_decisions(space)) == genotype
        assert Genotype.from_json(genotype.to_json(), space) == genotype


def test_nasnet_a_keeps_its_explicit_output_quirk():
    assert NASNET_A.normal.output_states() == (0, 2, 3, 4, 5, 6)
    assert NASNET_A.reduce.output_states() == (3, 4, 5, 6)
    assert nasnet_dict()["normal"]["output"] == [0, 2, 3, 4, 5, 6]


def test_the_default_output_is_the_unconsumed_block_outputs():
    amoeba = KNOWN_CELLS["amoebanet_a"]
    assert amoeba.normal.output is None
    assert amoeba.normal.output_states() == (4, 5, 6)
    assert amoeba.reduce.output_states() == (3, 4, 6)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["normal"]["blocks"][2]["ops"].__setitem__(1, "conv_9x9"), "normal.blocks[2].ops[1]"),
        (lambda d: d["reduce"]["blocks"][0]["inputs"].__setitem__(0, 2), "reduce.blocks[0].inputs[0]"),
        (lambda d: d["normal"]["blocks"][4]["inputs"].__setitem__(1, -1), "normal.blocks[4].inputs[1]"),
        (lambda d: d["normal"]["blocks"][1].__setitem__("combine", "mul"), "normal.blocks[1].combine"),
        (lambda d: d["normal"]["blocks"][1].__setitem__("inputs", [0]), "normal.blocks[1].inputs"),
        (lambda d: d["normal"]["blocks"][1].__setitem__("inputs", [0, True]), "normal.blocks[1].inputs[1]"),
        (lambda d: d["normal"]["blocks"][1].__setitem__("colour", 1), "normal.blocks[1].colour"),
        (lambda d: d["normal"].__setitem__("output", [0, 9]), "normal.output[1]"),
        (lambda d: d["normal"].__setitem__("output", [2, 2]), "normal.output"),
        (lambda d: d["normal"].__setitem__("output", []), "normal.output"),
        (lambda d: d["reduce"].__setitem__("blocks", []), "reduce.blocks"),
        (lambda d: d.pop("reduce"), "reduce"),
        (lambda d: d.__setitem__("extra", {}), "extra"),
    ],
)
def test_it_names_the_block_and_field_of_a_bad_genotype(mutate, field):
    data = nasnet_dict()
    mutate(data)
    with pytest.raises(GenotypeError) as info:
        Genotype.from_dict(data)
    assert info.value.field == field
    assert str(info.value).startswith(field + ":")


def test_it_checks_the_block_count_and_op_menu_against_a_space():
    space = SearchSpace(ops=("identity", "sep_conv_3x3"), num_blocks=5)
    with pytest.raises(GenotypeError) as info:
        Genotype.from_dict(nasnet_dict(), space)
    assert info.value.field == "normal.blocks[0].ops[0]"
    with pytest.raises(GenotypeError, match=r"normal\.blocks: expected 4 blocks, got 5"):
        Genotype.from_dict(nasnet_dict(), SearchSpace(num_blocks=4))


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", '"cell"', "null", '{"normal": 3, "reduce": 4}'])
def test_it_rejects_malformed_json_with_a_clear_error(text):
    with pytest.raises(GenotypeError):
        Genotype.from_json(text)


def test_swapping_the_two_inputs_of_an_add_keeps_the_hash():
    data = nasnet_dict()
    block = data["normal"]["blocks"][0]
    block["inputs"].reverse()
    block["ops"].reverse()
    swapped = Genotype.from_dict(data)
    assert swapped != NASNET_A
    assert swapped.canonical_hash() == NASNET_A.canonical_hash()


def test_renumbering_independent_blocks_keeps_the_hash():
    # Exchange blocks 0 and 1 of the normal cell (neither reads the other) and rewire.
    data = nasnet_dict()
    blocks = data["normal"]["blocks"]
    blocks[0], blocks[1] = blocks[1], blocks[0]
    data["normal"]["output"] = [0, 3, 2, 4, 5, 6]
    moved = Genotype.from_dict(data)
    assert moved.canonical_hash() == NASNET_A.canonical_hash()


def test_renumbering_a_dependent_block_keeps_the_hash():
    # AmoebaNet's reduce block 3 reads only inputs; move it to the front and rewire.
    amoeba = KNOWN_CELLS["amoebanet_a"]
    old = amoeba.reduce.blocks
    mapping = {0: 0, 1: 1, 2: 3, 3: 4, 4: 5, 5: 2, 6: 6}
    order = [old[3], old[0], old[1], old[2], old[4]]
    blocks = tuple(Block(tuple(mapping[i] for i in b.inputs), b.ops, b.combine) for b in order)
    moved = Genotype(amoeba.normal, Cell(blocks))
    assert moved != amoeba
    assert moved.canonical_hash() == amoeba.canonical_hash()


def test_different_cells_hash_differently():
    rng = random.Random(1)
    genotypes = [random_genotype(rng) for _ in range(200)]
    hashes = {g.canonical_hash() for g in genotypes}
    assert len(hashes) == len({g.canonical().to_json() for g in genotypes}) == 200
    changed = nasnet_dict()
    changed["normal"]["blocks"][0]["ops"][0] = "sep_conv_7x7"
    assert Genotype.from_dict(changed).canonical_hash() != NASNET_A.canonical_hash()


def test_an_explicit_output_equal_to_the_default_hashes_like_the_default():
    amoeba = KNOWN_CELLS["amoebanet_a"]
    explicit = Genotype(Cell(amoeba.normal.blocks, (4, 5, 6)), amoeba.reduce)
    assert explicit.canonical_hash() == amoeba.canonical_hash()
    other = Genotype(Cell(amoeba.normal.blocks, (2, 4, 5, 6)), amoeba.reduce)
    assert other.canonical_hash() != amoeba.canonical_hash()


def test_the_canonical_form_is_idempotent_and_valid():
    rng = random.Random(2)
    for _ in range(50):
        canonical = random_genotype(rng).canonical()
        assert canonical.canonical() == canonical
        assert canonical.validate() == canonical


def test_from_decisions_rejects_out_of_range_choices():
    space = SearchSpace()
    decisions = [0] * space.num_decisions
    decisions[2] = 13
    with pytest.raises(GenotypeError, match=r"decisions\[2\]"):
        Genotype.from_decisions(space, decisions)
    with pytest.raises(GenotypeError, match="expected 50 decisions"):
        Genotype.from_decisions(space, [0] * 49)
