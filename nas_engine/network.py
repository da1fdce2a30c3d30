"""Child networks: cells built from a genotype, stacked the way NASNet stacks them.

References: Zoph et al. 2017 §3-4 and appendix; TF-slim `nets/nasnet/nasnet.py`
(`_build_nasnet_base`, `_cifar_stem`, `_imagenet_stem`) and `nasnet_utils.py`
(`_cell_base`, `_reduce_prev_layer`, `_combine_unused_states`), which timm ports.

A cell receives h1 (the previous cell's output) and h0 (the one before). h1 always
goes through ReLU -> 1x1 conv -> BN to F channels; h0 is shape-matched only when it
must be: a factorized reduction when it is spatially larger, ReLU -> 1x1 -> BN when
only channels differ, untouched when there is no earlier cell (the first cell after
the stem reads the raw stem output as h0, as the reference code does). Every op writes
F channels; an add block has F channels, a concat block 2F. The cell output
concatenates the output states; an input state in the output is reduced with a
factorized reduction when it is larger (reduction cells) or brought to F channels with
1x1 conv + BN when its channel count is not F (the reference `_combine_unused_states`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from nas_engine.errors import FieldError
from nas_engine.genotype import Cell, Genotype
from nas_engine.ops import FactorizedReduction, Identity, ReLUConvBN, bn, make_op

MACRO_KINDS = ("cifar", "imagenet")


class NetworkError(FieldError):
    """A macro-architecture setting is invalid."""


@dataclass(frozen=True)
class MacroConfig:
    """How cells are stacked. Defaults: a small CIFAR child.

    kind: "cifar" (3x3 stem conv, N normal / reduction / N / reduction / N) or
          "imagenet" (stride-2 3x3 stem conv, two reduction cells as stem cells with
          F/4 and F/2 filters, then the CIFAR-like body).
    repeats: N, normal cells per stack.
    filters: F, the filter count of the first stack (doubles at each reduction).
    stem_multiplier: cifar: stem conv has stem_multiplier * F filters (paper: 3);
          imagenet: 32 * stem_multiplier (3 for large = 96, 1 for mobile = 32).
    skip_reduction_input: the cell after a reduction reads as h0 the cell *before*
          the one that fed the reduction (TF-slim's large ImageNet model does this).
    drop_path_keep: final keep probability of ScheduledDropPath (1.0 = off).
    """

    kind: str = "cifar"
    repeats: int = 2
    filters: int = 16
    stem_multiplier: float = 3.0
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 32
    aux_head: bool = False
    drop_path_keep: float = 1.0
    dropout: float = 0.0
    skip_reduction_input: bool = False

    def __post_init__(self) -> None:
        checks = [
            ("kind", self.kind in MACRO_KINDS, f"must be one of {', '.join(MACRO_KINDS)}"),
            ("repeats", isinstance(self.repeats, int) and self.repeats >= 1, "must be an integer >= 1"),
            ("filters", isinstance(self.filters, int) and self.filters >= 2, "must be an integer >= 2"),
            ("stem_multiplier", self.stem_multiplier > 0, "must be > 0"),
            ("num_classes", isinstance(self.num_classes, int) and self.num_classes >= 2, "must be >= 2"),
            ("in_channels", isinstance(self.in_channels, int) and self.in_channels >= 1, "must be >= 1"),
            ("image_size", isinstance(self.image_size, int) and self.image_size >= self.min_image_size(),
             f"must be an integer >= {self.min_image_size()} for the {self.kind} macro"),
            ("drop_path_keep", 0.0 < self.drop_path_keep <= 1.0, "must be in (0, 1]"),
            ("dropout", 0.0 <= self.dropout < 1.0, "must be in [0, 1)"),
        ]  # fmt: skip
        for name, ok, reason in checks:
            if not ok:
                raise NetworkError(name, f"{reason}, got {getattr(self, name)!r}")

    def min_image_size(self) -> int:
        return 8 if self.kind == "cifar" else 32


def parse_n_at_p(text: str) -> tuple[int, int]:
    """'6@768' -> (6, 768): the paper's notation, N normal cells @ penultimate filters."""
    try:
        n, p = text.split("@")
        result = int(n), int(p)
    except ValueError:
        raise NetworkError("n_at_p", f"expected N@P such as 6@768, got {text!r}") from None
    if result[0] < 1 or result[1] < 1:
        raise NetworkError("n_at_p", f"N and P must be positive, got {text!r}")
    return result


def output_multiplier(cell: Cell) -> int:
    """Channels of the cell output in units of F (6 for NASNet-A's normal cell)."""
    return sum(2 if s >= 2 and cell.blocks[s - 2].combine == "concat" else 1 for s in cell.output_states())


def filters_for_penultimate(genotype: Genotype, penultimate: int) -> int:
    """F such that the last normal cell outputs P channels: P = multiplier x 4 x F."""
    units = 4 * output_multiplier(genotype.normal)
    if penultimate % units:
        raise NetworkError(
            "penultimate_filters",
            f"P={penultimate} is not a multiple of {units} (4 x the normal cell's {units // 4} output states)",
        )
    return penultimate // units


def drop_path(x: torch.Tensor, keep_prob: float) -> torch.Tensor:
    """Zero whole samples of an op's output with probability 1 - keep_prob, rescale the rest."""
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep_prob)
    return x * mask / keep_prob


class CellModule(nn.Module):
    def __init__(self, cell: Cell, *, reduction: bool, c_h0: int, c_h1: int, c: int, h0_larger: bool, h0_raw: bool):
        super().__init__()
        self.cell, self.reduction = cell, reduction
        self.pre1 = ReLUConvBN(c_h1, c, 1)
        if h0_raw:
            self.pre0: nn.Module = nn.Identity()
        elif h0_larger:
            self.pre0 = FactorizedReduction(c_h0, c, 2)
            c_h0 = c
        elif c_h0 != c:
            self.pre0 = ReLUConvBN(c_h0, c, 1)
            c_h0 = c
        else:
            self.pre0 = nn.Identity()
        channels = [c_h0, c]
        self.ops = nn.ModuleList()
        for block in cell.blocks:
            for state, name in zip(block.inputs, block.ops):
                stride = 2 if reduction and state < 2 else 1
                self.ops.append(make_op(name, channels[state], c, stride))
            channels.append(2 * c if block.combine == "concat" else c)
        # One adapter per output state, aligned with cell.output_states().
        self.out_adapters = nn.ModuleList()
        self.out_channels = 0
        for s in cell.output_states():
            if s < 2 and reduction:
                adapter: nn.Module = FactorizedReduction(channels[s], c, 2)
            elif s < 2 and channels[s] != c:
                adapter = FactorizedReduction(channels[s], c, 1)
            else:
                adapter = nn.Identity()
            self.out_adapters.append(adapter)
            self.out_channels += channels[s] if isinstance(adapter, nn.Identity) else c
        self.drop_keep = 1.0  # set by the network each forward (ScheduledDropPath)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        drop = self.training and self.drop_keep < 1.0
        ops = iter(self.ops)
        for block in self.cell.blocks:
            halves = []
            for state in block.inputs:
                op = next(ops)
                h = op(states[state])
                if drop and not isinstance(op, Identity):
                    h = drop_path(h, self.drop_keep)
                halves.append(h)
            states.append(halves[0] + halves[1] if block.combine == "add" else torch.cat(halves, dim=1))
        outs = [adapt(states[s]) for s, adapt in zip(self.cell.output_states(), self.out_adapters)]
        return torch.cat(outs, dim=1)


class AuxHead(nn.Module):
    """Auxiliary classifier (paper §4 / TF-slim `_build_aux_head`); loss weight 0.4."""

    def __init__(self, c_in: int, spatial: int, num_classes: int):
        super().__init__()
        # Small inputs (digits) reach the head below 5x5: skip the pool, keep the shape logic.
        pooled = (spatial - 5) // 3 + 1 if spatial >= 5 else spatial
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.AvgPool2d(5, stride=3, count_include_pad=False) if spatial >= 5 else nn.Identity(),
            nn.Conv2d(c_in, 128, 1, bias=False),
            bn(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, pooled, bias=False),  # kernel = what is left of the image
            bn(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class NASNetwork(nn.Module):
    """A child network. forward(x) -> (logits, aux_logits or None)."""

    def __init__(self, genotype: Genotype, macro: MacroConfig):
        super().__init__()
        self.genotype, self.macro = genotype, macro
        F = macro.filters
        if macro.kind == "cifar":
            c_stem, stem_stride, stem_pad = int(round(macro.stem_multiplier * F)), 1, 1
        else:
            c_stem, stem_stride, stem_pad = int(round(32 * macro.stem_multiplier)), 2, 0
        self.stem = nn.Sequential(
            nn.Conv2d(macro.in_channels, c_stem, 3, stride=stem_stride, padding=stem_pad, bias=False), bn(c_stem)
        )
        size = (macro.image_size + 2 * stem_pad - 3) // stem_stride + 1
        # Each produced tensor: (channels, spatial size). Index 0 stands for "no cell
        # yet" (TF-slim's `cell_outputs = [None, net]`), index 1 is the stem.
        self._outputs: list[tuple[int, int] | None] = [None, (c_stem, size)]
        self.cells = nn.ModuleList()
        self.wiring: list[tuple[int, int]] = []  # (index of h0, index of h1) per cell
        if macro.kind == "imagenet":
            for scale in (4, 2):  # two reduction cells as stem cells, F/4 then F/2
                self._add_cell(genotype.reduce, True, F // scale, len(self._outputs) - 2)
        num_cells = 3 * macro.repeats
        reduction_at = {int(k / 3 * num_cells) for k in (1, 2)}
        scale, self.aux_after = 1, None
        for cell_num in range(num_cells):
            prev = len(self._outputs) - 2
            if cell_num in reduction_at:
                scale *= 2
                if scale == 4 and macro.aux_head:
                    self.aux_after = len(self.cells) - 1  # last normal cell before reduction 2
                self._add_cell(genotype.reduce, True, F * scale, len(self._outputs) - 2)
            if not macro.skip_reduction_input:
                prev = len(self._outputs) - 2
            self._add_cell(genotype.normal, False, F * scale, prev)
        c_last, size_last = self._outputs[-1]
        self.aux_head = None
        if self.aux_after is not None:
            c_aux, size_aux = self._outputs[self.aux_after + 2]
            self.aux_head = AuxHead(c_aux, size_aux, macro.num_classes)
        self.head = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(macro.dropout) if macro.dropout else nn.Identity(),
            nn.Linear(c_last, macro.num_classes),
        )
        self.penultimate_filters = c_last
        # After which cell each produced tensor is no longer needed (frees memory early).
        self._last_use = {i: max(k for k, w in enumerate(self.wiring) if i in w) for w in self.wiring for i in w}
        self.drop_path_progress = 0.0  # fraction of training done, set by the trainer

    def _add_cell(self, cell: Cell, reduction: bool, c: int, prev_index: int) -> None:
        prev = self._outputs[prev_index]
        c_h1, size_h1 = self._outputs[-1]
        h0_raw = prev is None
        c_h0, size_h0 = (c_h1, size_h1) if h0_raw else prev
        module = CellModule(
            cell, reduction=reduction, c_h0=c_h0, c_h1=c_h1, c=c, h0_larger=size_h0 > size_h1, h0_raw=h0_raw
        )
        self.cells.append(module)
        self.wiring.append((prev_index if not h0_raw else len(self._outputs) - 1, len(self._outputs) - 1))
        self._outputs.append((module.out_channels, (size_h1 + 1) // 2 if reduction else size_h1))

    def _update_drop_path(self) -> None:
        final_drop = 1.0 - self.macro.drop_path_keep
        total = len(self.cells)
        progress = min(1.0, max(0.0, self.drop_path_progress))
        for k, cell in enumerate(self.cells):
            cell.drop_keep = 1.0 - (k + 1) / total * progress * final_drop

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.macro.drop_path_keep < 1.0:
            self._update_drop_path()
        outputs: list[torch.Tensor | None] = [None, self.stem(x)]
        aux = None
        for k, (cell, (i0, i1)) in enumerate(zip(self.cells, self.wiring)):
            outputs.append(cell(outputs[i0], outputs[i1]))
            for i in {i0, i1}:
                if self._last_use[i] == k:
                    outputs[i] = None
            if k == self.aux_after and self.training:
                aux = self.aux_head(outputs[-1])
        return self.head(outputs[-1]), aux


def build_network(genotype: Genotype, macro: MacroConfig | None = None, **overrides) -> NASNetwork:
    """Build a child network; `overrides` replace fields of `macro` (or of the default)."""
    macro = replace(macro or MacroConfig(), **overrides)
    return NASNetwork(genotype, macro)


# The paper's named configurations (Zoph et al. 2017, tables 1-3; TF-slim configs).
PRESETS: dict[str, MacroConfig] = {
    "cifar_6@768": MacroConfig(kind="cifar", repeats=6, filters=32, stem_multiplier=3.0, aux_head=True,
                               drop_path_keep=0.6),
    "cifar_7@2304": MacroConfig(kind="cifar", repeats=7, filters=96, stem_multiplier=3.0, aux_head=True,
                                drop_path_keep=0.6),
    "imagenet_mobile_4@1056": MacroConfig(kind="imagenet", repeats=4, filters=44, stem_multiplier=1.0,
                                          num_classes=1000, image_size=224),
    "imagenet_large_6@4032": MacroConfig(kind="imagenet", repeats=6, filters=168, stem_multiplier=3.0,
                                         num_classes=1000, image_size=331, skip_reduction_input=True,
                                         drop_path_keep=0.7, dropout=0.5),
}  # fmt: skip
