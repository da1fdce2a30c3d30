"""Draw a cell (or a whole genotype) as a standalone SVG, in pure Python.

No Graphviz: the layout is small enough to do by hand and doing it here keeps the
output byte-identical from run to run and free of anything but plain shapes and text.

Layout, left to right: the two cell inputs, then one column per block depth (the longest
path from the inputs, so every edge points right), then the output concatenation. A
block is drawn as its two op nodes stacked, feeding a combine node ("+" for add, a
"concat" pill for concatenation). Blocks are placed at the mean height of their inputs
so edges stay short, and an edge that jumps over a column is routed through the gap
between that column's blocks (a "lane"), so edges do not run through nodes.

Naming follows the design notes (NASNET.md section 3): h1 = previous cell, h0 = the cell
before it, b1..bB = block outputs. Elements carry classes and data- attributes (state
numbers as in `space.py`: s0, s1, s2 + i) so tests and the web page can query them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

from nas_engine.genotype import Cell, Genotype
from nas_engine.space import CELL_TYPES, NUM_CELL_INPUTS

# Op families: legend label, fill, stroke. Soft fills so the black labels stay readable
# when projected; hues chosen to stay distinct for the common colour-vision deficiencies.
FAMILIES: dict[str, tuple[str, str, str]] = {
    "sep": ("separable conv", "#d6e6f5", "#2f6ea8"),
    "conv": ("conv", "#fbe0c4", "#c0671d"),
    "pool": ("pooling", "#d8eed2", "#3f8f3f"),
    "identity": ("identity", "#ececec", "#7a7a7a"),
}
FONT = "Helvetica, Arial, sans-serif"
INK, EDGE, DARK = "#222222", "#8a8a8a", "#37474f"

# Geometry in px. A block is two ops 40 px apart (centre to centre) plus gaps wide
# enough for a couple of edge lanes between stacked blocks.
IN_W, IN_H = 118, 34
OP_W, OP_H, OP_DY = 112, 28, 20
COMB_GAP, COMB_W, ADD_R = 28, 48, 13
COL_GAP = 64
BLOCK_HALF = OP_DY + OP_H / 2 + 8  # half height of a block incl. its stride badge
BLOCK_PITCH = 2 * BLOCK_HALF + 46  # centre-to-centre distance of stacked blocks
LANE = 11  # distance between parallel edges passing a column
COL_PITCH = OP_W + COMB_GAP + COMB_W + COL_GAP
OUT_W, PORT = 72, 16
INF = float("inf")
# Quotes escaped in text too: harmless there, but keeps user text from ever reading as markup.
_QUOTES = {'"': "&quot;", "'": "&#39;"}


def op_family(op: str) -> str:
    """The colour family of an op: sep, conv, pool or identity."""
    if op.startswith("sep_conv"):
        return "sep"
    if "pool" in op:
        return "pool"
    return "identity" if op == "identity" else "conv"


def render_cell_svg(cell: Cell, *, cell_type: str = "normal", title: str | None = None) -> str:
    """One cell as an SVG document. In a reduction cell, ops reading h0/h1 get a "/2" badge."""
    _check_cell_type(cell_type)
    layout = _CellLayout(cell, cell_type)
    return _document([(cell_type, layout)], title, with_stride=cell_type == "reduce")


def render_genotype_svg(genotype: Genotype, *, title: str | None = None) -> str:
    """Both cells of a genotype, the normal cell above the reduction cell, one legend."""
    cells = [(name, _CellLayout(cell, name)) for name, cell in genotype.cells().items()]
    return _document(cells, title, with_stride=True)


def _check_cell_type(cell_type: str) -> None:
    if cell_type not in CELL_TYPES:
        raise ValueError(f"cell_type must be one of {', '.join(CELL_TYPES)}, got {cell_type!r}")


def _n(x: float) -> str:
    """A coordinate, rounded so the text is short and identical on every platform."""
    text = f"{x:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _text(x: float, y: float, content: str, size: float = 12, **attrs: str) -> str:
    extra = "".join(f" {k.replace('_', '-')}={quoteattr(v)}" for k, v in attrs.items())
    return f'<text x="{_n(x)}" y="{_n(y)}" font-size="{_n(size)}"{extra}>{escape(content, _QUOTES)}</text>'


def _curve(x0: float, y0: float, x1: float, y1: float) -> str:
    # Horizontal tangents at both ends: edges leave and enter nodes level, and the
    # curve never leaves the x range between its ends (which holds no nodes).
    mid = (x0 + x1) / 2
    return f" C{_n(mid)},{_n(y0)} {_n(mid)},{_n(y1)} {_n(x1)},{_n(y1)}"


@dataclass
class _Edge:
    """One arrow: from a node to a node, jumping the block columns between them."""

    src: str  # data-from: a state ("s3") or an op ("b1.0")
    dst: str  # data-to: an op, a state, or "out"
    start: tuple[float, float]
    end: tuple[float, float]
    from_col: int
    to_col: int
    lanes: dict[int, float] = field(default_factory=dict)  # jumped column -> y it passes at

    def jumped(self) -> range:
        return range(self.from_col + 1, self.to_col)

    def heads(self) -> float:
        """The height the edge first heads for after leaving its source."""
        return self.lanes.get(self.from_col + 1, self.end[1])

    def arrives(self) -> float:
        """The height the edge comes from just before its target."""
        return self.lanes.get(self.to_col - 1, self.start[1])


class _CellLayout:
    """Positions of every node and the path of every edge of one cell, in local px."""

    def __init__(self, cell: Cell, cell_type: str):
        self.cell, self.cell_type = cell, cell_type
        self.depth = [0] * NUM_CELL_INPUTS
        for block in cell.blocks:
            self.depth.append(1 + max(self.depth[i] for i in block.inputs))
        self.num_cols = max(self.depth)
        self.columns = [
            [b for b in range(len(cell.blocks)) if self.depth[b + 2] == d] for d in range(1, self.num_cols + 1)
        ]
        self._place_states()
        self.parts: list[str] = []
        self._route_edges()
        self._draw_nodes()

    # -- x positions --------------------------------------------------------------------
    def op_left(self, col: int) -> float:
        return IN_W + COL_GAP + (col - 1) * COL_PITCH

    def comb_x(self, col: int) -> float:
        return self.op_left(col) + OP_W + COMB_GAP + COMB_W / 2

    def comb_half(self, block: int) -> float:
        return COMB_W / 2 if self.cell.blocks[block].combine == "concat" else ADD_R

    def state_out(self, state: int) -> tuple[float, float]:
        """Where edges leave a state: the right side of an input or of a combine node."""
        if state < NUM_CELL_INPUTS:
            return IN_W, self.y[state]
        col = self.depth[state]
        return self.comb_x(col) + self.comb_half(state - 2), self.y[state]

    @property
    def width(self) -> float:
        return self.op_left(self.num_cols + 1) + OUT_W

    # -- y positions --------------------------------------------------------------------
    def _place_states(self) -> None:
        # h1 above h0, spread with the tallest column so the fan-out is not too steep.
        tallest = max(len(c) for c in self.columns)
        spread = max(BLOCK_PITCH, (tallest - 1) * BLOCK_PITCH / 2)
        self.y = {1: -spread / 2, 0: spread / 2}
        for column in self.columns:
            want = {b: sum(self.y[i] for i in self.cell.blocks[b].inputs) / 2 for b in column}
            order = sorted(column, key=lambda b: (want[b], b))
            placed: list[float] = []
            for b in order:  # each block at its wish, pushed down past the one above
                placed.append(want[b] if not placed else max(want[b], placed[-1] + BLOCK_PITCH))
            shift = sum(want[b] - y for b, y in zip(order, placed)) / len(order)
            for b, y in zip(order, placed):
                self.y[b + 2] = y + shift
        # The op reading the higher state goes on top, so a block's own edges never cross.
        self.op_y: dict[tuple[int, int], float] = {}
        for b, block in enumerate(self.cell.blocks):
            top = 0 if self.y[block.inputs[0]] <= self.y[block.inputs[1]] else 1
            self.op_y[b, top] = self.y[b + 2] - OP_DY
            self.op_y[b, 1 - top] = self.y[b + 2] + OP_DY
        outs = sorted(self.cell.output_states(), key=lambda s: (self.y[s], s))
        self.out_h = max(44.0, PORT * len(outs) + 16)
        self.out_y = sum(self.y[s] for s in outs) / len(outs)
        self.port_y = {s: self.out_y + (k - (len(outs) - 1) / 2) * PORT for k, s in enumerate(outs)}

    def _free_gaps(self, col: int) -> list[tuple[float, float]]:
        """Vertical intervals of a column free of blocks; the outer two are unbounded."""
        edges = [-INF]
        for y in sorted(self.y[b + 2] for b in self.columns[col - 1]):
            edges += [y - BLOCK_HALF - 6, y + BLOCK_HALF + 6]
        edges.append(INF)
        return [(edges[k], edges[k + 1]) for k in range(0, len(edges), 2)]

    # -- edges --------------------------------------------------------------------------
    def _route_edges(self) -> None:
        self.edges: list[_Edge] = []
        for b, block in enumerate(self.cell.blocks):
            col = self.depth[b + 2]
            for slot, state in enumerate(block.inputs):
                op_y = self.op_y[b, slot]
                self._edge(state, f"b{b}.{slot}", (self.op_left(col), op_y), col)
                combine_left = (self.comb_x(col) - self.comb_half(b), self.y[b + 2])
                op_right = (self.op_left(col) + OP_W, op_y)
                self.edges.append(_Edge(f"b{b}.{slot}", f"s{b + 2}", op_right, combine_left, col, col))
        out_col = self.num_cols + 1
        for s in self.cell.output_states():
            self._edge(s, "out", (self.op_left(out_col), self.port_y[s]), out_col)
        self._assign_lanes()
        self._spread_input_ports()
        self._order_output_ports()

    def _edge(self, state: int, dst: str, end: tuple[float, float], col: int) -> None:
        """An edge out of a state, into the node at `end` in column `col`."""
        self.edges.append(_Edge(f"s{state}", dst, self.state_out(state), end, self.depth[state], col))

    def _assign_lanes(self) -> None:
        # First pass: the gap of each jumped column an edge passes through, the one
        # nearest to where the straight line from source to target would cross it.
        users: dict[tuple[int, int], list[tuple[float, int]]] = {}
        for k, e in enumerate(self.edges):
            (sx, sy), (tx, ty) = e.start, e.end
            for col in e.jumped():
                xc = (self.op_left(col) + self.comb_x(col)) / 2
                want = sy + (ty - sy) * (xc - sx) / (tx - sx)
                gaps = self._free_gaps(col)
                g = min(range(len(gaps)), key=lambda i: (max(gaps[i][0] - want, want - gaps[i][1], 0), i))
                users.setdefault((col, g), []).append((want, k))
        # Second pass: spread the edges sharing a gap, keeping their vertical order. Above
        # or below a column an edge stays level with its source where it can: one bend at
        # the end reads better than a staircase.
        for (col, g), group in sorted(users.items()):
            group.sort()
            lo, hi = self._free_gaps(col)[g]
            level = [self.edges[k].start[1] for _, k in group]
            if lo == -INF:
                ys, y = [], hi
                for pref in reversed(level):
                    y = min(pref, y - LANE)
                    ys.insert(0, y)
            elif hi == INF:
                ys, y = [], lo
                for pref in level:
                    y = max(pref, y + LANE)
                    ys.append(y)
            else:
                ys = [lo + (hi - lo) * (j + 1) / (len(group) + 1) for j in range(len(group))]
            for (_, k), y in zip(group, ys):
                self.edges[k].lanes[col] = y

    def _spread_input_ports(self) -> None:
        # Each edge leaving h0/h1 gets its own point on the node's side, in the order of
        # where it heads, so the many edges of an input fan out instead of leaving as
        # one thick bundle.
        for state in range(NUM_CELL_INPUTS):
            mine = sorted((e for e in self.edges if e.src == f"s{state}"), key=lambda e: (e.heads(), e.end[1]))
            step = min(5.0, (IN_H - 12) / max(1, len(mine) - 1))
            for j, e in enumerate(mine):
                e.start = (e.start[0], e.start[1] + (j - (len(mine) - 1) / 2) * step)

    def _order_output_ports(self) -> None:
        # Ports taken in the order the edges arrive at, so they do not cross at the end.
        mine = sorted((e for e in self.edges if e.dst == "out"), key=lambda e: (e.arrives(), e.src))
        for y, e in zip(sorted(self.port_y.values()), mine):
            e.end = (e.end[0], y)

    def edge_svg(self, e: _Edge) -> str:
        (x, y), (tx, ty) = e.start, e.end
        d = f"M{_n(x)},{_n(y)}"
        for col, lane_y in sorted(e.lanes.items()):
            # Curve into the lane, then run straight past the column's nodes.
            d += _curve(x, y, self.op_left(col) - 4, lane_y)
            x, y = self.comb_x(col) + COMB_W / 2 + 4, lane_y
            d += f" L{_n(x)},{_n(y)}"
        d += _curve(x, y, tx, ty)
        return (
            f'<path class="edge" data-from="{e.src}" data-to="{e.dst}" d="{d}" fill="none" '
            f'stroke="{EDGE}" stroke-width="1.4" marker-end="url(#arrow)"/>'
        )

    # -- nodes --------------------------------------------------------------------------
    def _draw_nodes(self) -> None:
        p = self.parts
        for state, label in ((1, "h1 (prev)"), (0, "h0 (prev-prev)")):
            y = self.y[state]
            p.append(
                f'<g class="input" data-state="s{state}"><rect x="0" y="{_n(y - IN_H / 2)}" width="{IN_W}" '
                f'height="{IN_H}" rx="6" fill="{DARK}"/>'
                + _text(IN_W / 2, y + 4.5, label, 13, fill="#ffffff", font_weight="bold", text_anchor="middle")
                + "</g>"
            )
        for b, block in enumerate(self.cell.blocks):
            col = self.depth[b + 2]
            for slot, (state, op) in enumerate(zip(block.inputs, block.ops)):
                p.append(self._op_node(b, slot, op, state < NUM_CELL_INPUTS and self.cell_type == "reduce", col))
            p.append(self._combine_node(b, block.combine, col))
        x, y, h = self.op_left(self.num_cols + 1), self.out_y, self.out_h
        p.append(
            f'<g class="output" data-state="out"><rect x="{_n(x)}" y="{_n(y - h / 2)}" width="{OUT_W}" '
            f'height="{_n(h)}" rx="6" fill="{DARK}"/>'
            + _text(x + OUT_W / 2, y + 4.5, "concat", 13, fill="#ffffff", font_weight="bold", text_anchor="middle")
            + _text(x + OUT_W / 2, y - h / 2 - 7, "output", 11, fill="#555555", text_anchor="middle")
            + "</g>"
        )

    def _op_node(self, b: int, slot: int, op: str, strided: bool, col: int) -> str:
        _, fill, stroke = FAMILIES[op_family(op)]
        x, y = self.op_left(col), self.op_y[b, slot] - OP_H / 2
        stride_attr = ' data-stride="2"' if strided else ""
        svg = (
            f'<g class="op" data-block="{b}" data-slot="{slot}" data-op={quoteattr(op)}{stride_attr}>'
            f'<rect x="{_n(x)}" y="{_n(y)}" width="{OP_W}" height="{OP_H}" rx="5" fill="{fill}" '
            f'stroke="{stroke}" stroke-width="1.3"/>'
            + _text(x + OP_W / 2, y + OP_H / 2 + 4.5, op, 12.5, fill=INK, text_anchor="middle")
        )
        if strided:  # a badge on the top-right corner: this op runs at stride 2
            bx, by = x + OP_W - 14, y - 6
            svg += (
                f'<g class="stride"><rect x="{_n(bx - 13)}" y="{_n(by - 1)}" width="26" height="14" rx="7" '
                f'fill="#b23a48"/>'
                + _text(bx, by + 10, "/2", 10.5, fill="#ffffff", font_weight="bold", text_anchor="middle")
                + "</g>"
            )
        return svg + "</g>"

    def _combine_node(self, b: int, combine: str, col: int) -> str:
        x, y = self.comb_x(col), self.y[b + 2]
        svg = f'<g class="combine" data-block="{b}" data-combine={quoteattr(combine)} data-state="s{b + 2}">'
        if combine == "concat":
            svg += (
                f'<rect x="{_n(x - COMB_W / 2)}" y="{_n(y - 11)}" width="{COMB_W}" height="22" rx="11" '
                f'fill="#fff4d6" stroke="{INK}" stroke-width="1.3"/>'
                + _text(x, y + 3.8, "concat", 10.5, fill=INK, text_anchor="middle")
            )
        else:
            svg += (
                f'<circle cx="{_n(x)}" cy="{_n(y)}" r="{ADD_R}" fill="#ffffff" stroke="{INK}" stroke-width="1.3"/>'
                f'<path d="M{_n(x - 6)},{_n(y)} H{_n(x + 6)} M{_n(x)},{_n(y - 6)} V{_n(y + 6)}" '
                f'stroke="{INK}" stroke-width="2"/>'
            )
        # Block name below the node, inside the block's reserved height (no lane runs there).
        svg += _text(x, y + 26, f"b{b + 1}", 11, fill="#555555", text_anchor="middle")
        return svg + "</g>"

    def bounds(self) -> tuple[float, float]:
        """Top and bottom of everything drawn, edge lanes included."""
        ys = list(self.y.values()) + [y for e in self.edges for y in e.lanes.values()]
        top = min(min(ys) - BLOCK_HALF, self.out_y - self.out_h / 2 - 20, self.y[1] - IN_H / 2)
        bottom = max(max(ys) + BLOCK_HALF, self.out_y + self.out_h / 2, self.y[0] + IN_H / 2)
        return top, bottom


def _legend(with_stride: bool) -> tuple[list[str], float]:
    """The legend as one row of swatches; returns its parts (at y = 0) and its width."""
    parts, x = [], 0.0
    for label, fill, stroke in FAMILIES.values():
        parts.append(f'<rect x="{_n(x)}" y="-10" width="22" height="14" rx="3" fill="{fill}" stroke="{stroke}"/>')
        parts.append(_text(x + 28, 1.5, label, 12, fill=INK))
        x += 28 + 6.5 * len(label) + 24
    parts.append(f'<circle cx="{_n(x + 9)}" cy="-3" r="9" fill="#ffffff" stroke="{INK}"/>')
    parts.append(f'<path d="M{_n(x + 5)},-3 H{_n(x + 13)} M{_n(x + 9)},-7 V1" stroke="{INK}" stroke-width="1.6"/>')
    parts.append(_text(x + 24, 1.5, "add", 12, fill=INK))
    x += 24 + 21 + 22
    parts.append(f'<rect x="{_n(x)}" y="-11" width="44" height="16" rx="8" fill="#fff4d6" stroke="{INK}"/>')
    parts.append(_text(x + 22, 0.5, "concat", 9.5, fill=INK, text_anchor="middle"))
    parts.append(_text(x + 50, 1.5, "concatenate", 12, fill=INK))
    x += 50 + 77 + 22
    if with_stride:
        parts.append(f'<rect x="{_n(x)}" y="-10" width="26" height="14" rx="7" fill="#b23a48"/>')
        parts.append(_text(x + 13, 1, "/2", 10.5, fill="#ffffff", font_weight="bold", text_anchor="middle"))
        parts.append(_text(x + 32, 1.5, "stride 2 (reads a cell input)", 12, fill=INK))
        x += 32 + 7 * 29
    return parts, x


def _document(cells: list[tuple[str, _CellLayout]], title: str | None, with_stride: bool) -> str:
    margin, body, y = 24.0, [], 24.0
    if title:
        body.append(_text(margin, y + 16, title, 20, fill=INK, font_weight="bold"))
        y += 34
    width = 0.0
    for name, layout in cells:
        heading = "Normal cell" if name == "normal" else "Reduction cell"
        body.append(_text(margin, y + 14, heading, 15, fill=INK, font_weight="bold"))
        y += 24
        top, bottom = layout.bounds()
        body.append(f'<g class="cell" data-cell="{name}" transform="translate({_n(margin)},{_n(y - top)})">')
        body += [layout.edge_svg(e) for e in layout.edges] + layout.parts
        body.append("</g>")
        y += bottom - top + 28
        width = max(width, layout.width)
    legend, legend_w = _legend(with_stride)
    body.append(f'<g class="legend" transform="translate({_n(margin)},{_n(y + 8)})">{"".join(legend)}</g>')
    w, h = max(width, legend_w) + 2 * margin, y + 8 + margin
    defs = (
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9.5" refY="5" markerWidth="7" markerHeight="7" '
        f'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{EDGE}"/></marker></defs>'
    )
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_n(w)}" height="{_n(h)}" viewBox="0 0 {_n(w)} {_n(h)}" '
        f'font-family="{FONT}">'
    )
    # <title> is what screen readers and hover tooltips show.
    label = f"<title>{escape(title or 'NASNet cell', _QUOTES)}</title>"
    background = f'<rect class="background" width="{_n(w)}" height="{_n(h)}" fill="#ffffff"/>'
    return "\n".join([head, label, defs, background, *body, "</svg>"]) + "\n"
