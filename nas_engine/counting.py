"""Parameter and mult-add counts, the figures the paper's tables report.

Mult-adds come from PyTorch's own FLOP counter (`torch.utils.flop_counter`), which
counts 2 FLOPs per multiply-accumulate of convolutions and matrix products; we report
FLOPs / 2. The network is built on the meta device, so counting even the 88M-parameter
NASNet-A Large takes no memory and no compute.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch.utils.flop_counter import FlopCounterMode

from nas_engine.genotype import Genotype
from nas_engine.network import MacroConfig, NASNetwork


@dataclass(frozen=True)
class Counts:
    params: int
    mult_adds: int

    def to_dict(self) -> dict:
        return {"params": self.params, "mult_adds": self.mult_adds}


def count_params(model: torch.nn.Module, *, include_aux: bool = False) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if include_aux or not name.startswith("aux_head."))


def count_mult_adds(model: torch.nn.Module, input_shape: tuple[int, ...]) -> int:
    """Mult-adds of one inference forward pass (batch 1) of `model`."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(input_shape, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def describe(genotype: Genotype, macro: MacroConfig) -> Counts:
    """Counts of the network built from `genotype` and `macro` (inference, no aux head).

    Tracing a deep network takes seconds (N = 12: about 2 s), and the controller counts
    every sampled child, so N > 3 is extrapolated from N = 2 and 3: every normal cell past
    the second of a stack has the same input and output shapes as the one before it, so
    params and mult-adds grow by the same amount per added cell (exact; tested against a
    full build in tests/test_limits.py)."""
    if macro.repeats > 3:
        two, three = _built(genotype, replace(macro, repeats=2)), _built(genotype, replace(macro, repeats=3))
        extra = macro.repeats - 3
        return Counts(
            params=three.params + extra * (three.params - two.params),
            mult_adds=three.mult_adds + extra * (three.mult_adds - two.mult_adds),
        )
    return _built(genotype, macro)


def _built(genotype: Genotype, macro: MacroConfig) -> Counts:
    """Counts of the network actually built (on the meta device) and traced."""
    with torch.device("meta"):
        model = NASNetwork(genotype, replace(macro, aux_head=False))
    shape = (1, macro.in_channels, macro.image_size, macro.image_size)
    return Counts(params=count_params(model), mult_adds=count_mult_adds(model, shape))
