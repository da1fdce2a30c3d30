"""Genotypes: a Normal and a Reduction cell written as plain data.

A genotype is what the controller samples, what the database stores and what a user
pastes back to train a cell at scale, so it is plain data with one JSON shape:

    {"normal": {"blocks": [{"inputs": [1, 0], "ops": ["sep_conv_5x5", "sep_conv_3x3"],
                            "combine": "add"}, ...],
                "output": [0, 2, 3, 4, 5, 6]},          # optional
     "reduce": {...}}

State numbering follows `space.py`: 0 = h0 (the cell before the previous one),
1 = h1 (the previous cell), 2 + i = block i. "output" lists the states concatenated
into the cell output; without it, the block outputs no block consumed are used (the
paper's rule). NASNet-A needs the explicit form (see `cells.py`).

Validation errors name the cell, block and field (`normal.blocks[2].ops[1]`), so a
web form or a CLI can point at what is wrong.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass

from nas_engine.errors import FieldError
from nas_engine.space import CELL_TYPES, COMBINES, MAX_BLOCKS, NUM_CELL_INPUTS, OPS, SearchSpace

# Above this many candidate block orders the canonical form gives up on exactness for
# ties (never reached for B <= 7: ties are groups of identical blocks).
_MAX_CANONICAL_CANDIDATES = 5040


class GenotypeError(FieldError):
    """A genotype is malformed. `field` is the path of the offending value."""


@dataclass(frozen=True)
class Block:
    """One block: `combine(ops[0](state inputs[0]), ops[1](state inputs[1]))`."""

    inputs: tuple[int, int]
    ops: tuple[str, str]
    combine: str = "add"

    def to_dict(self) -> dict:
        return {"inputs": list(self.inputs), "ops": list(self.ops), "combine": self.combine}


@dataclass(frozen=True)
class Cell:
    blocks: tuple[Block, ...]
    output: tuple[int, ...] | None = None  # None = the block outputs nobody consumed

    @property
    def num_states(self) -> int:
        return NUM_CELL_INPUTS + len(self.blocks)

    def consumed_states(self) -> set[int]:
        return {i for block in self.blocks for i in block.inputs}

    def output_states(self) -> tuple[int, ...]:
        """States concatenated into the cell output, in order."""
        if self.output is not None:
            return self.output
        used = self.consumed_states()
        return tuple(s for s in range(NUM_CELL_INPUTS, self.num_states) if s not in used)

    def to_dict(self) -> dict:
        data: dict = {"blocks": [b.to_dict() for b in self.blocks]}
        if self.output is not None:
            data["output"] = list(self.output)
        return data


@dataclass(frozen=True)
class Genotype:
    normal: Cell
    reduce: Cell

    def cells(self) -> dict[str, Cell]:
        return {"normal": self.normal, "reduce": self.reduce}

    # -- serialisation -------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"normal": self.normal.to_dict(), "reduce": self.reduce.to_dict()}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=indent is None)

    @classmethod
    def from_dict(cls, data: object, space: SearchSpace | None = None) -> Genotype:
        """Parse and validate. With `space`, also check ops, combines and B against it."""
        if not isinstance(data, dict):
            raise GenotypeError("", "a genotype must be a JSON object with 'normal' and 'reduce'")
        for key in data:
            if key not in CELL_TYPES:
                raise GenotypeError(str(key), "unknown field; a genotype has 'normal' and 'reduce'")
        cells = {}
        for name in CELL_TYPES:
            if name not in data:
                raise GenotypeError(name, "missing cell")
            cells[name] = _parse_cell(data[name], name, space)
        return cls(**cells)

    @classmethod
    def from_json(cls, text: str, space: SearchSpace | None = None) -> Genotype:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GenotypeError("", f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        return cls.from_dict(data, space)

    def validate(self, space: SearchSpace | None = None) -> Genotype:
        """Re-check a genotype built in code (from_dict checks parsed ones)."""
        return Genotype.from_dict(self.to_dict(), space)

    # -- identity --------------------------------------------------------------------
    def canonical(self) -> Genotype:
        """The same architecture written one fixed way.

        Two genotypes that build the same network up to renaming of blocks and swapping
        the two halves of a block (add and concat are symmetric; a concat's channel
        order is learnt away by the next layer) have equal canonical forms.
        """
        return Genotype(normal=_canonical_cell(self.normal), reduce=_canonical_cell(self.reduce))

    def canonical_hash(self) -> str:
        """sha256 of the canonical JSON: equal for the same cell written two ways."""
        text = json.dumps(self.canonical().to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    # -- the controller's view: one integer per decision ------------------------------
    def to_decisions(self, space: SearchSpace) -> list[int]:
        decisions = []
        for name in space.cell_types:
            for block in self.cells()[name].blocks:
                decisions += [
                    block.inputs[0],
                    block.inputs[1],
                    space.ops.index(block.ops[0]),
                    space.ops.index(block.ops[1]),
                    space.combines.index(block.combine),
                ]
        return decisions

    @classmethod
    def from_decisions(cls, space: SearchSpace, decisions: list[int]) -> Genotype:
        sizes = space.decision_sizes()
        if len(decisions) != len(sizes):
            raise GenotypeError("decisions", f"expected {len(sizes)} decisions, got {len(decisions)}")
        for k, (value, size) in enumerate(zip(decisions, sizes)):
            if not 0 <= int(value) < size:
                raise GenotypeError(f"decisions[{k}]", f"{value} is not in [0, {size})")
        cells = {}
        it = iter(int(v) for v in decisions)
        for name in space.cell_types:
            blocks = []
            for _ in range(space.num_blocks):
                in_a, in_b, op_a, op_b, comb = (next(it) for _ in range(5))
                blocks.append(Block((in_a, in_b), (space.ops[op_a], space.ops[op_b]), space.combines[comb]))
            cells[name] = Cell(tuple(blocks))
        return cls(**cells)


# -- parsing --------------------------------------------------------------------------
def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_cell(data: object, path: str, space: SearchSpace | None) -> Cell:
    if not isinstance(data, dict):
        raise GenotypeError(path, "a cell must be an object with 'blocks' (and optionally 'output')")
    for key in data:
        if key not in ("blocks", "output"):
            raise GenotypeError(f"{path}.{key}", "unknown field; a cell has 'blocks' and 'output'")
    raw_blocks = data.get("blocks")
    if not isinstance(raw_blocks, list) or not raw_blocks:
        raise GenotypeError(f"{path}.blocks", "must be a non-empty list of blocks")
    if len(raw_blocks) > MAX_BLOCKS:  # a 10,000-block cell took minutes to build, with no heartbeat
        raise GenotypeError(f"{path}.blocks", f"at most {MAX_BLOCKS} blocks per cell, got {len(raw_blocks)}")
    if space is not None and len(raw_blocks) != space.num_blocks:
        raise GenotypeError(f"{path}.blocks", f"expected {space.num_blocks} blocks, got {len(raw_blocks)}")
    ops = space.ops if space else OPS
    combines = space.combines if space else COMBINES
    blocks = tuple(_parse_block(b, f"{path}.blocks[{i}]", i, ops, combines) for i, b in enumerate(raw_blocks))
    output = data.get("output")
    if output is not None:
        num_states = NUM_CELL_INPUTS + len(blocks)
        if not isinstance(output, list) or not output:
            raise GenotypeError(f"{path}.output", "must be a non-empty list of state indices")
        for j, state in enumerate(output):
            if not _is_int(state) or not 0 <= state < num_states:
                raise GenotypeError(f"{path}.output[{j}]", f"state {state!r} is not in [0, {num_states})")
        if len(set(output)) != len(output):
            raise GenotypeError(f"{path}.output", "a state is listed twice")
        output = tuple(output)
    return Cell(blocks, output)


def _parse_block(data: object, path: str, index: int, ops: tuple, combines: tuple) -> Block:
    if not isinstance(data, dict):
        raise GenotypeError(path, "a block must be an object with 'inputs', 'ops' and 'combine'")
    for key in data:
        if key not in ("inputs", "ops", "combine"):
            raise GenotypeError(f"{path}.{key}", "unknown field; a block has inputs, ops, combine")
    inputs, block_ops = data.get("inputs"), data.get("ops")
    if not isinstance(inputs, list) or len(inputs) != 2:
        raise GenotypeError(f"{path}.inputs", "must be a list of two state indices")
    num_available = NUM_CELL_INPUTS + index
    for j, state in enumerate(inputs):
        if not _is_int(state) or not 0 <= state < num_available:
            raise GenotypeError(
                f"{path}.inputs[{j}]",
                f"state {state!r} out of range: block {index} may read states 0..{num_available - 1}",
            )
    if not isinstance(block_ops, list) or len(block_ops) != 2:
        raise GenotypeError(f"{path}.ops", "must be a list of two op names")
    for j, op in enumerate(block_ops):
        if op not in ops:
            raise GenotypeError(f"{path}.ops[{j}]", f"unknown op {op!r}; allowed: {', '.join(ops)}")
    combine = data.get("combine", "add")
    if combine not in combines:
        raise GenotypeError(f"{path}.combine", f"unknown combine {combine!r}; allowed: {', '.join(combines)}")
    return Block(tuple(inputs), tuple(block_ops), combine)


# -- canonical form ---------------------------------------------------------------------
def _canonical_cell(cell: Cell) -> Cell:
    # An isomorphism-invariant key per state: its depth and its expression tree with the
    # two halves of every block sorted. Sorting blocks by it gives a topological order
    # that is unique up to permutations of blocks with equal keys; trying those and
    # keeping the smallest rewrite makes the result exact.
    exprs, depths = ["h0", "h1"], [0, 0]
    for block in cell.blocks:
        halves = sorted(f"{op}({exprs[i]})" for i, op in zip(block.inputs, block.ops))
        exprs.append(f"{block.combine}[{halves[0]},{halves[1]}]")
        depths.append(1 + max(depths[i] for i in block.inputs))
    order = sorted(range(len(cell.blocks)), key=lambda b: (depths[b + 2], exprs[b + 2]))
    groups = [list(g) for _, g in itertools.groupby(order, key=lambda b: (depths[b + 2], exprs[b + 2]))]
    if math.prod(math.factorial(len(g)) for g in groups) > _MAX_CANONICAL_CANDIDATES:
        candidates = [order]
    else:
        candidates = [
            [b for group in perm for b in group]
            for perm in itertools.product(*(itertools.permutations(g) for g in groups))
        ]
    rewrites = [_renumber(cell, cand) for cand in candidates]
    return min(rewrites, key=lambda c: json.dumps(c.to_dict(), sort_keys=True))


def _renumber(cell: Cell, order: list[int]) -> Cell:
    new_index = {0: 0, 1: 1}
    for new, old in enumerate(order):
        new_index[old + 2] = new + 2
    blocks = []
    for old in order:
        block = cell.blocks[old]
        halves = sorted((new_index[i], op) for i, op in zip(block.inputs, block.ops))
        blocks.append(Block((halves[0][0], halves[1][0]), (halves[0][1], halves[1][1]), block.combine))
    renumbered = Cell(tuple(blocks))
    output = tuple(sorted(new_index[s] for s in cell.output_states()))
    # An explicit output equal to the default rule is the same cell: drop it.
    return renumbered if output == renumbered.output_states() else Cell(tuple(blocks), output)
