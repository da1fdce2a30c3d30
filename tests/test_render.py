"""The SVG drawing of cells and genotypes (nas_engine/render.py)."""

from __future__ import annotations

import math
import random
import re
import xml.etree.ElementTree as ET

import pytest

from nas_engine.cells import AMOEBANET_A, ENAS, KNOWN_CELLS, NASNET_A
from nas_engine.genotype import Block, Cell, Genotype
from nas_engine.render import render_cell_svg, render_genotype_svg
from nas_engine.space import OPS

SVG = "{http://www.w3.org/2000/svg}"
KNOWN = [(name, cell_type) for name in KNOWN_CELLS for cell_type in ("normal", "reduce")]


def random_cell(num_blocks: int, seed: int, p_concat: float = 0.5) -> Cell:
    rng = random.Random(seed)
    blocks = tuple(
        Block(
            (rng.randrange(2 + i), rng.randrange(2 + i)),
            (rng.choice(OPS), rng.choice(OPS)),
            "concat" if rng.random() < p_concat else "add",
        )
        for i in range(num_blocks)
    )
    return Cell(blocks)


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def of_class(root: ET.Element, name: str) -> list[ET.Element]:
    return [el for el in root.iter() if el.get("class") == name]


def edges(root: ET.Element, **attrs: str) -> list[ET.Element]:
    wanted = {k.replace("_", "-"): v for k, v in attrs.items()}
    return [e for e in of_class(root, "edge") if all(e.get(f"data-{k}") == v for k, v in wanted.items())]


# -- geometry helpers for the "edges avoid nodes" tests ----------------------------------
def node_shapes(root: ET.Element) -> list[tuple]:
    """('rect', x0, y0, x1, y1) or ('circle', cx, cy, r) for every node, in cell coords."""
    shapes = []
    for cls in ("op", "combine", "input", "output"):
        for g in of_class(root, cls):
            shape = g[0]  # the node's own outline; a stride badge comes later
            if shape.tag == SVG + "circle":
                shapes.append(("circle", *(float(shape.get(a)) for a in ("cx", "cy", "r"))))
            else:
                x, y, w, h = (float(shape.get(a)) for a in ("x", "y", "width", "height"))
                shapes.append(("rect", x, y, x + w, y + h))
    return shapes


def sample_path(d: str, steps: int = 40) -> list[tuple[float, float]]:
    tokens = re.findall(r"[MCL]|-?\d+(?:\.\d+)?", d)
    points, pos, i = [], (0.0, 0.0), 0
    while i < len(tokens):
        cmd, i = tokens[i], i + 1
        count = {"M": 2, "L": 2, "C": 6}[cmd]
        nums = [float(t) for t in tokens[i : i + count]]
        i += count
        if cmd == "C":
            p0, p1, p2, p3 = pos, nums[0:2], nums[2:4], nums[4:6]
            for s in range(steps + 1):
                t = s / steps
                c = [(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t * t * (1 - t), t**3]
                points.append(tuple(sum(w * p[a] for w, p in zip(c, (p0, p1, p2, p3))) for a in (0, 1)))
        elif cmd == "L":
            for s in range(steps + 1):
                t = s / steps
                points.append((pos[0] + (nums[0] - pos[0]) * t, pos[1] + (nums[1] - pos[1]) * t))
        pos = (nums[0], nums[1]) if cmd != "C" else (nums[4], nums[5])
    return points


def inside(point: tuple[float, float], shape: tuple, margin: float = 1.5) -> bool:
    x, y = point
    if shape[0] == "circle":
        return math.hypot(x - shape[1], y - shape[2]) < shape[3] - margin
    return shape[1] + margin < x < shape[3] - margin and shape[2] + margin < y < shape[4] - margin


def overlap(a: tuple, b: tuple) -> bool:
    box = [s if s[0] == "rect" else ("rect", s[1] - s[3], s[2] - s[3], s[1] + s[3], s[2] + s[3]) for s in (a, b)]
    (_, ax0, ay0, ax1, ay1), (_, bx0, by0, bx1, by1) = box
    return ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1


# -- the document ---------------------------------------------------------------------
@pytest.mark.parametrize("name, cell_type", KNOWN)
def test_it_produces_well_formed_svg_that_scales(name, cell_type):
    root = parse(render_cell_svg(KNOWN_CELLS[name].cells()[cell_type], cell_type=cell_type))
    assert root.tag == SVG + "svg"
    width, height = float(root.get("width")), float(root.get("height"))
    assert root.get("viewBox") == f"0 0 {root.get('width')} {root.get('height')}"
    assert 400 < width < 3000 and 200 < height < 3000


def test_the_same_cell_always_renders_byte_identical_svg():
    assert render_genotype_svg(NASNET_A, title="x") == render_genotype_svg(NASNET_A, title="x")
    cell = random_cell(7, seed=3)
    assert render_cell_svg(cell, cell_type="reduce") == render_cell_svg(random_cell(7, seed=3), cell_type="reduce")


def test_it_rejects_an_unknown_cell_type():
    with pytest.raises(ValueError, match="cell_type"):
        render_cell_svg(NASNET_A.normal, cell_type="stem")


def test_text_is_large_enough_to_read_on_a_slide():
    root = parse(render_genotype_svg(AMOEBANET_A, title="AmoebaNet-A"))
    sizes = [float(t.get("font-size")) for t in root.iter(SVG + "text")]
    assert min(sizes) >= 9.5
    assert all(float(t.get("font-size")) >= 12 for t in root.iter(SVG + "text") if t.text in OPS)


# -- nodes ----------------------------------------------------------------------------
@pytest.mark.parametrize("name, cell_type", KNOWN)
def test_every_op_of_the_cell_appears_as_a_labelled_node(name, cell_type):
    cell = KNOWN_CELLS[name].cells()[cell_type]
    root = parse(render_cell_svg(cell, cell_type=cell_type))
    drawn = sorted((int(g.get("data-block")), int(g.get("data-slot")), g.get("data-op")) for g in of_class(root, "op"))
    assert drawn == sorted((b, slot, op) for b, block in enumerate(cell.blocks) for slot, op in enumerate(block.ops))
    for g in of_class(root, "op"):
        assert g.get("data-op") in [t.text for t in g.iter(SVG + "text")]


@pytest.mark.parametrize("name, cell_type", KNOWN)
def test_it_draws_one_combine_node_per_block(name, cell_type):
    cell = KNOWN_CELLS[name].cells()[cell_type]
    combines = of_class(parse(render_cell_svg(cell, cell_type=cell_type)), "combine")
    assert sorted(int(g.get("data-block")) for g in combines) == list(range(len(cell.blocks)))


def test_inputs_are_labelled_as_the_previous_and_the_previous_but_one_cell():
    root = parse(render_cell_svg(ENAS.normal))
    labels = {g.get("data-state"): "".join(g.itertext()) for g in of_class(root, "input")}
    assert labels == {"s1": "h1 (prev)", "s0": "h0 (prev-prev)"}


def test_concat_combine_is_drawn_differently_from_add():
    cell = Cell(
        (Block((0, 1), ("identity", "conv_3x3"), "add"), Block((0, 2), ("sep_conv_3x3", "max_pool_3x3"), "concat"))
    )
    add, concat = sorted(of_class(parse(render_cell_svg(cell)), "combine"), key=lambda g: g.get("data-block"))
    assert (add.get("data-combine"), concat.get("data-combine")) == ("add", "concat")
    assert add[0].tag == SVG + "circle" and concat[0].tag == SVG + "rect"
    assert "concat" in list(concat.itertext()) and "concat" not in list(add.itertext())


def test_ops_of_different_families_get_different_colours():
    cell = Cell((Block((0, 1), ("sep_conv_3x3", "conv_3x3")), Block((0, 1), ("max_pool_3x3", "identity"))))
    fills = {g.get("data-op"): g[0].get("fill") for g in of_class(parse(render_cell_svg(cell)), "op")}
    assert len(set(fills.values())) == 4


def test_the_legend_explains_families_combines_and_stride():
    legend = " ".join(of_class(parse(render_genotype_svg(NASNET_A)), "legend")[0].itertext())
    for word in ("separable conv", "conv", "pooling", "identity", "add", "concat", "stride 2"):
        assert word in legend


# -- edges ----------------------------------------------------------------------------
@pytest.mark.parametrize("name, cell_type", KNOWN)
def test_the_output_node_has_one_incoming_edge_per_output_state(name, cell_type):
    cell = KNOWN_CELLS[name].cells()[cell_type]
    root = parse(render_cell_svg(cell, cell_type=cell_type))
    assert len(of_class(root, "output")) == 1
    assert sorted(e.get("data-from") for e in edges(root, to="out")) == sorted(f"s{s}" for s in cell.output_states())


def test_a_consumed_state_in_the_nasnet_output_feeds_both_its_ops_and_the_output():
    normal = parse(render_cell_svg(NASNET_A.normal))
    assert len(edges(normal, **{"from": "s0", "to": "out"})) == 1
    assert len([e for e in edges(normal, **{"from": "s0"}) if e.get("data-to") != "out"]) == 6
    reduce = parse(render_cell_svg(NASNET_A.reduce, cell_type="reduce"))
    # Block 2 of the paper (state 3) feeds block 4's identity and the output.
    assert {e.get("data-to") for e in edges(reduce, **{"from": "s3"})} == {"b3.0", "out"}


@pytest.mark.parametrize("name, cell_type", KNOWN)
def test_each_op_reads_its_input_state_and_feeds_its_combine(name, cell_type):
    cell = KNOWN_CELLS[name].cells()[cell_type]
    root = parse(render_cell_svg(cell, cell_type=cell_type))
    for b, block in enumerate(cell.blocks):
        for slot, state in enumerate(block.inputs):
            assert [e.get("data-from") for e in edges(root, to=f"b{b}.{slot}")] == [f"s{state}"]
            assert [e.get("data-to") for e in edges(root, **{"from": f"b{b}.{slot}"})] == [f"s{b + 2}"]


def test_every_edge_joins_two_drawn_nodes():
    root = parse(render_cell_svg(random_cell(7, seed=11), cell_type="reduce"))
    ids = {g.get("data-state") for cls in ("input", "combine", "output") for g in of_class(root, cls)}
    ids |= {f"b{g.get('data-block')}.{g.get('data-slot')}" for g in of_class(root, "op")}
    for e in of_class(root, "edge"):
        assert e.get("data-from") in ids and e.get("data-to") in ids


@pytest.mark.parametrize("cell", [g.cells()[t] for g in KNOWN_CELLS.values() for t in ("normal", "reduce")])
def test_edges_never_run_through_a_node_in_the_known_cells(cell):
    assert_edges_avoid_nodes(parse(render_cell_svg(cell, cell_type="reduce")))


@pytest.mark.parametrize("num_blocks", range(1, 8))
def test_edges_never_run_through_a_node_in_random_cells(num_blocks):
    for seed in range(6):
        assert_edges_avoid_nodes(parse(render_cell_svg(random_cell(num_blocks, seed), cell_type="reduce")))


def assert_edges_avoid_nodes(root: ET.Element) -> None:
    shapes = node_shapes(root)
    for e in of_class(root, "edge"):
        for point in sample_path(e.get("d")):
            hit = [s for s in shapes if inside(point, s)]
            assert not hit, f"edge {e.get('data-from')}->{e.get('data-to')} runs through {hit[0]} at {point}"


@pytest.mark.parametrize("num_blocks", range(1, 8))
def test_no_two_nodes_overlap(num_blocks):
    for seed in range(4):
        shapes = node_shapes(parse(render_cell_svg(random_cell(num_blocks, seed), cell_type="reduce")))
        for i, a in enumerate(shapes):
            assert not any(overlap(a, b) for b in shapes[i + 1 :]), a


# -- cell sizes and types -------------------------------------------------------------
@pytest.mark.parametrize("num_blocks", range(1, 8))
def test_it_renders_cells_of_one_to_seven_blocks(num_blocks):
    cell = random_cell(num_blocks, seed=num_blocks, p_concat=0.8)
    root = parse(render_cell_svg(cell, cell_type="reduce", title=f"B = {num_blocks}"))
    assert len(of_class(root, "op")) == 2 * num_blocks
    assert len(of_class(root, "combine")) == num_blocks
    assert len(edges(root, to="out")) == len(cell.output_states())
    assert len(of_class(root, "edge")) == 4 * num_blocks + len(cell.output_states())


def test_stride_marks_appear_only_in_reduction_cells_on_ops_reading_a_cell_input():
    reduce = parse(render_cell_svg(NASNET_A.reduce, cell_type="reduce"))
    strided = {(g.get("data-block"), g.get("data-slot")) for g in of_class(reduce, "op") if g.get("data-stride")}
    expected = {
        (str(b), str(s)) for b, blk in enumerate(NASNET_A.reduce.blocks) for s, i in enumerate(blk.inputs) if i < 2
    }
    assert strided == expected
    assert len(of_class(reduce, "stride")) == len(expected) == 7
    normal = parse(render_cell_svg(NASNET_A.reduce, cell_type="normal"))
    assert of_class(normal, "stride") == []
    assert not any(g.get("data-stride") for g in of_class(normal, "op"))
    assert "stride" not in " ".join(of_class(normal, "legend")[0].itertext())


def test_the_genotype_picture_labels_both_cells_with_normal_above_reduce():
    root = parse(render_genotype_svg(AMOEBANET_A, title="AmoebaNet-A"))
    cells = of_class(root, "cell")
    assert [g.get("data-cell") for g in cells] == ["normal", "reduce"]
    offsets = [float(re.search(r"translate\([\d.]+,([\d.]+)\)", g.get("transform")).group(1)) for g in cells]
    assert offsets[0] < offsets[1]
    texts = list(root.itertext())
    assert "Normal cell" in texts and "Reduction cell" in texts and "AmoebaNet-A" in texts
    assert len(of_class(cells[1], "stride")) > 0 and of_class(cells[0], "stride") == []


def test_the_genotype_picture_draws_every_block_of_a_seven_block_genotype():
    genotype = Genotype(random_cell(7, seed=1, p_concat=0.9), random_cell(7, seed=2, p_concat=0.9))
    root = parse(render_genotype_svg(genotype))
    assert len(of_class(root, "combine")) == 14 and len(of_class(root, "output")) == 2


# -- safety ---------------------------------------------------------------------------
def test_a_malicious_title_comes_out_inert():
    title = '<script>alert(1)</script>" onload="x'
    svg = render_genotype_svg(NASNET_A, title=title)
    root = parse(svg)
    assert "<script" not in svg and 'onload="x' not in svg
    assert not [el for el in root.iter() if el.tag.endswith("script")]
    assert not [a for el in root.iter() for a in el.attrib if a.lower().startswith("on")]
    assert title in list(root.itertext())  # shown as text, exactly as typed


def test_a_title_with_ampersands_and_quotes_round_trips_in_a_single_cell():
    title = 'A & B\'s "best" cell <v2>'
    assert title in list(parse(render_cell_svg(ENAS.reduce, cell_type="reduce", title=title)).itertext())


@pytest.mark.parametrize("name", KNOWN_CELLS)
def test_it_contains_no_script_event_handler_or_external_reference(name):
    svg = render_genotype_svg(KNOWN_CELLS[name], title=name)
    root = parse(svg)
    for el in root.iter():
        assert not el.tag.endswith(("script", "image", "foreignObject", "use", "a"))
        for attr, value in el.attrib.items():
            assert not attr.lower().startswith("on")
            assert "href" not in attr
            for ref in re.findall(r"url\(([^)]*)\)", value):
                assert ref.startswith("#")
    assert "http" not in svg.replace('xmlns="http://www.w3.org/2000/svg"', "")
