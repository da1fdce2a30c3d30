"""The NASNet search space: the op menu, the combine methods and the shape of a cell.

Zoph et al. 2017 ("Learning Transferable Architectures for Scalable Image Recognition"),
section 3 and appendix: a cell is B blocks; each block picks two inputs from the states
available so far, one op for each input, and a method to combine the two results.
States are numbered the way the reference code and DARTS number them:

    0 = h0, the output of the cell before the previous one ("prev_prev")
    1 = h1, the output of the previous cell
    2 + i = the output of block i of this cell

A search may restrict the op menu, the number of blocks or the combine methods; a
`SearchSpace` carries those choices and answers "how many options has decision k".
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The 13-op menu of the paper, under stable names (they are stored in databases and
# genotype files, so never rename one). Order is the order of the paper's list.
OPS: tuple[str, ...] = (
    "identity",
    "conv_1x3_3x1",
    "conv_1x7_7x1",
    "dil_conv_3x3",
    "avg_pool_3x3",
    "max_pool_3x3",
    "max_pool_5x5",
    "max_pool_7x7",
    "conv_1x1",
    "conv_3x3",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "sep_conv_7x7",
)

# Element-wise addition, or concatenation along channels.
COMBINES: tuple[str, ...] = ("add", "concat")

CELL_TYPES: tuple[str, ...] = ("normal", "reduce")

# The five decisions of one block, in the order the controller makes them.
DECISIONS_PER_BLOCK: tuple[str, ...] = ("input_a", "input_b", "op_a", "op_b", "combine")

NUM_CELL_INPUTS = 2
# Blocks per cell: the paper's B is 5; past 10 a cell's network only grows slow to build.
MAX_BLOCKS = 10


class SpaceError(ValueError):
    """A search-space setting is invalid; the message names the field."""


@dataclass(frozen=True)
class SearchSpace:
    """Which choices a search may make. The default is the paper's full space."""

    ops: tuple[str, ...] = OPS
    num_blocks: int = 5
    combines: tuple[str, ...] = COMBINES
    cell_types: tuple[str, ...] = field(default=CELL_TYPES, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))
        object.__setattr__(self, "combines", tuple(self.combines))
        if not self.ops:
            raise SpaceError("space.ops: the op menu is empty")
        for name in self.ops:
            if name not in OPS:
                raise SpaceError(f"space.ops: unknown op {name!r}; known ops: {', '.join(OPS)}")
        if len(set(self.ops)) != len(self.ops):
            raise SpaceError("space.ops: an op is listed twice")
        if not isinstance(self.num_blocks, int) or isinstance(self.num_blocks, bool):
            raise SpaceError("space.num_blocks: must be an integer")
        if not 1 <= self.num_blocks <= MAX_BLOCKS:
            raise SpaceError(f"space.num_blocks: must be between 1 and {MAX_BLOCKS}, got {self.num_blocks}")
        if not self.combines:
            raise SpaceError("space.combines: no combine method left")
        for name in self.combines:
            if name not in COMBINES:
                raise SpaceError(f"space.combines: unknown combine {name!r}; known: add, concat")
        if len(set(self.combines)) != len(self.combines):
            raise SpaceError("space.combines: a combine method is listed twice")

    # -- sizes of the decision sequence --------------------------------------------
    @property
    def decisions_per_cell(self) -> int:
        return len(DECISIONS_PER_BLOCK) * self.num_blocks

    @property
    def num_decisions(self) -> int:
        """50 for the paper's space: 5 decisions x 5 blocks x 2 cell types."""
        return self.decisions_per_cell * len(self.cell_types)

    def num_inputs(self, block: int) -> int:
        """States block `block` may read: the two cell inputs plus earlier blocks."""
        return NUM_CELL_INPUTS + block

    def decision_sizes(self) -> list[int]:
        """Number of options of every decision, in controller order (normal, then reduce)."""
        sizes = []
        for _cell in self.cell_types:
            for block in range(self.num_blocks):
                n_in = self.num_inputs(block)
                sizes += [n_in, n_in, len(self.ops), len(self.ops), len(self.combines)]
        return sizes

    def decision_names(self) -> list[str]:
        """Readable name of every decision, e.g. 'normal.block2.op_a' (for heatmaps)."""
        return [
            f"{cell}.block{block}.{what}"
            for cell in self.cell_types
            for block in range(self.num_blocks)
            for what in DECISIONS_PER_BLOCK
        ]

    # -- serialisation -------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"ops": list(self.ops), "num_blocks": self.num_blocks, "combines": list(self.combines)}

    @classmethod
    def from_dict(cls, data: dict | None) -> SearchSpace:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise SpaceError("space: must be an object with ops, num_blocks, combines")
        unknown = set(data) - {"ops", "num_blocks", "combines"}
        if unknown:
            raise SpaceError(f"space.{sorted(unknown)[0]}: unknown field")
        ops = data.get("ops", OPS)
        combines = data.get("combines", COMBINES)
        if not isinstance(ops, (list, tuple)) or not all(isinstance(o, str) for o in ops):
            raise SpaceError("space.ops: must be a list of op names")
        if not isinstance(combines, (list, tuple)) or not all(isinstance(c, str) for c in combines):
            raise SpaceError("space.combines: must be a list of combine names")
        return cls(ops=tuple(ops), num_blocks=data.get("num_blocks", 5), combines=tuple(combines))
