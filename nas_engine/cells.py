"""Published cells, expressed in this search space.

- NASNet-A (Zoph et al. 2017, fig. 4), exactly as the reference code builds it (TF-slim
  `nets/nasnet/nasnet_utils.py`, timm `models/nasnet.py`): including its output quirk,
  the concatenation of h0 (normal) and of block 2 (reduction) although both are consumed.
- AmoebaNet-A (Real et al. 2018, fig. 4), as listed in the DARTS repository
  (`cnn/genotypes.py`). Fits exactly: every op is in the 13-op menu, every combine is add
  and the output is the default "unused states" rule.
- ENAS (Pham et al. 2018, fig. 7), as listed in the DARTS repository. The normal cell
  fits exactly. The reduction cell's wiring and ops fit, but ENAS reduces both cell
  inputs with a factorized reduction *before* the cell and then runs every op at stride
  1; in the NASNet space the ops that read h0/h1 carry the stride instead. So ENAS's
  reduction cell is built here with NASNet semantics: same graph, slightly different
  network (and parameter count) from the ENAS code.

NASNet-B and NASNet-C are not here: they use B = 4 and combine options (add then
normalise) that this space does not have, and no reference code defines them.
"""

from __future__ import annotations

from nas_engine.genotype import Block, Cell, Genotype


def _cell(blocks: list[tuple], output: tuple[int, ...] | None = None) -> Cell:
    return Cell(tuple(Block((a, b), (op_a, op_b), "add") for a, op_a, b, op_b in blocks), output)


NASNET_A = Genotype(
    normal=_cell(
        [
            (1, "sep_conv_5x5", 0, "sep_conv_3x3"),
            (0, "sep_conv_5x5", 0, "sep_conv_3x3"),
            (1, "avg_pool_3x3", 0, "identity"),
            (0, "avg_pool_3x3", 0, "avg_pool_3x3"),
            (1, "sep_conv_3x3", 1, "identity"),
        ],
        output=(0, 2, 3, 4, 5, 6),
    ),
    reduce=_cell(
        [
            (1, "sep_conv_5x5", 0, "sep_conv_7x7"),
            (1, "max_pool_3x3", 0, "sep_conv_7x7"),
            (1, "avg_pool_3x3", 0, "sep_conv_5x5"),
            (3, "identity", 2, "avg_pool_3x3"),
            (2, "sep_conv_3x3", 1, "max_pool_3x3"),
        ],
        output=(3, 4, 5, 6),
    ),
)

AMOEBANET_A = Genotype(
    normal=_cell(
        [
            (0, "avg_pool_3x3", 1, "max_pool_3x3"),
            (0, "sep_conv_3x3", 2, "sep_conv_5x5"),
            (0, "sep_conv_3x3", 3, "avg_pool_3x3"),
            (1, "sep_conv_3x3", 1, "identity"),
            (0, "identity", 1, "avg_pool_3x3"),
        ]
    ),
    reduce=_cell(
        [
            (0, "avg_pool_3x3", 1, "sep_conv_3x3"),
            (0, "max_pool_3x3", 2, "sep_conv_7x7"),
            (0, "sep_conv_7x7", 1, "avg_pool_3x3"),
            (0, "max_pool_3x3", 1, "max_pool_3x3"),
            (0, "conv_1x7_7x1", 5, "sep_conv_3x3"),
        ]
    ),
)

ENAS = Genotype(
    normal=_cell(
        [
            (1, "sep_conv_3x3", 1, "identity"),
            (1, "sep_conv_5x5", 0, "identity"),
            (0, "avg_pool_3x3", 1, "sep_conv_3x3"),
            (0, "sep_conv_3x3", 1, "avg_pool_3x3"),
            (1, "sep_conv_5x5", 0, "avg_pool_3x3"),
        ]
    ),
    reduce=_cell(
        [
            (0, "sep_conv_5x5", 1, "sep_conv_3x3"),
            (1, "sep_conv_3x3", 1, "avg_pool_3x3"),
            (1, "sep_conv_3x3", 1, "avg_pool_3x3"),
            (1, "avg_pool_3x3", 3, "sep_conv_3x3"),
            (4, "sep_conv_5x5", 1, "avg_pool_3x3"),
        ]
    ),
)

KNOWN_CELLS: dict[str, Genotype] = {
    "nasnet_a": NASNET_A,
    "amoebanet_a": AMOEBANET_A,
    "enas": ENAS,
}

DESCRIPTIONS: dict[str, str] = {
    "nasnet_a": "NASNet-A (Zoph et al. 2017), exactly as the reference code builds it",
    "amoebanet_a": "AmoebaNet-A (Real et al. 2018), regularized evolution in the NASNet space",
    "enas": "ENAS (Pham et al. 2018); reduction cell built with NASNet stride semantics",
}


def get_cell(name: str) -> Genotype:
    try:
        return KNOWN_CELLS[name]
    except KeyError:
        raise KeyError(f"unknown cell {name!r}; known cells: {', '.join(KNOWN_CELLS)}") from None
