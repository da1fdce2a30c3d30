"""The 13 operations of the NASNet search space, built from one registry.

Semantics follow the paper's appendix and the reference code (TF-slim
`nets/nasnet/nasnet_utils.py`, which timm `models/nasnet.py` ports):

- every convolution is ReLU -> conv -> BN;
- a separable conv is applied twice: two stacked ReLU -> depthwise -> pointwise -> BN
  units, the stride on the first; the first pointwise conv already maps C_in -> C_out;
- pooling gets a 1x1 conv + BN (no ReLU) only when the channel count must change;
- identity becomes ReLU -> 1x1 conv (strided) -> BN when stride or channels differ.

Every factory takes the same arguments `(c_in, c_out, stride)` (the DARTS habit), so
the cell builder never special-cases an op. All convs are bias-free; BatchNorm uses
eps=1e-3 like the reference code.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

BN_EPS = 1e-3


def bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class ReLUConvBN(nn.Sequential):
    """ReLU -> conv -> BN, the unit of every non-separable conv in NASNet."""

    def __init__(self, c_in: int, c_out: int, kernel, stride=1, padding=0, dilation=1):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, dilation=dilation, bias=False),
            bn(c_out),
        )


class FactorizedConv(nn.Sequential):
    """ReLU -> 1xk conv -> kx1 conv -> BN (the '1x3 then 3x1' and '1x7 then 7x1' ops)."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, (1, k), stride=(1, stride), padding=(0, k // 2), bias=False),
            nn.Conv2d(c_out, c_out, (k, 1), stride=(stride, 1), padding=(k // 2, 0), bias=False),
            bn(c_out),
        )


class SepConv(nn.Sequential):
    """The doubled separable conv: two ReLU -> depthwise -> pointwise -> BN units."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int):
        pad = k // 2
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, k, stride=stride, padding=pad, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            bn(c_out),
            nn.ReLU(inplace=False),
            nn.Conv2d(c_out, c_out, k, stride=1, padding=pad, groups=c_out, bias=False),
            nn.Conv2d(c_out, c_out, 1, bias=False),
            bn(c_out),
        )


class Pool(nn.Sequential):
    """Max or average pooling; a 1x1 conv + BN follows only if channels must change."""

    def __init__(self, kind: str, c_in: int, c_out: int, k: int, stride: int):
        if kind == "avg":
            # count_include_pad=False as in the reference code: border pixels are not
            # darkened by the zero padding.
            layers: list[nn.Module] = [nn.AvgPool2d(k, stride=stride, padding=k // 2, count_include_pad=False)]
        else:
            layers = [nn.MaxPool2d(k, stride=stride, padding=k // 2)]
        if c_in != c_out:
            layers += [nn.Conv2d(c_in, c_out, 1, bias=False), bn(c_out)]
        super().__init__(*layers)


class Identity(nn.Module):
    """The identity op. Marked so drop-path can skip it (the paper drops every op but this)."""

    is_identity = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def identity(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return Identity()
    # Not a learnt op in the search space's sense, but it must change shape: TF 'none'.
    return ReLUConvBN(c_in, c_out, 1, stride=stride)


OpFactory = Callable[[int, int, int], nn.Module]

OP_FACTORIES: dict[str, OpFactory] = {
    "identity": identity,
    "conv_1x3_3x1": lambda c_in, c_out, s: FactorizedConv(c_in, c_out, 3, s),
    "conv_1x7_7x1": lambda c_in, c_out, s: FactorizedConv(c_in, c_out, 7, s),
    "dil_conv_3x3": lambda c_in, c_out, s: ReLUConvBN(c_in, c_out, 3, stride=s, padding=2, dilation=2),
    "avg_pool_3x3": lambda c_in, c_out, s: Pool("avg", c_in, c_out, 3, s),
    "max_pool_3x3": lambda c_in, c_out, s: Pool("max", c_in, c_out, 3, s),
    "max_pool_5x5": lambda c_in, c_out, s: Pool("max", c_in, c_out, 5, s),
    "max_pool_7x7": lambda c_in, c_out, s: Pool("max", c_in, c_out, 7, s),
    "conv_1x1": lambda c_in, c_out, s: ReLUConvBN(c_in, c_out, 1, stride=s),
    "conv_3x3": lambda c_in, c_out, s: ReLUConvBN(c_in, c_out, 3, stride=s, padding=1),
    "sep_conv_3x3": lambda c_in, c_out, s: SepConv(c_in, c_out, 3, s),
    "sep_conv_5x5": lambda c_in, c_out, s: SepConv(c_in, c_out, 5, s),
    "sep_conv_7x7": lambda c_in, c_out, s: SepConv(c_in, c_out, 7, s),
}


def make_op(name: str, c_in: int, c_out: int, stride: int) -> nn.Module:
    return OP_FACTORIES[name](c_in, c_out, stride)


class FactorizedReduction(nn.Module):
    """Halve the spatial size without losing every other pixel (paper §4, TF-slim).

    ReLU, then two stride-2 1x1 convs to C/2 each, the second on the input shifted by
    one pixel, concatenated, then BN. With stride 1 it is a plain 1x1 conv + BN.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 2):
        super().__init__()
        self.stride = stride
        if stride == 1:
            self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        else:
            self.relu = nn.ReLU(inplace=False)
            self.path_1 = nn.Conv2d(c_in, c_out // 2, 1, bias=False)
            self.path_2 = nn.Conv2d(c_in, c_out - c_out // 2, 1, bias=False)
        self.bn = bn(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return self.bn(self.conv(x))
        x = self.relu(x)
        # A stride-2 1x1 conv is a 1x1 conv on every other pixel: slicing first avoids
        # computing the 3/4 of the output that would be thrown away.
        a = self.path_1(x[:, :, ::2, ::2])
        # Shift by one pixel (drop the first row/column, zero-pad the last) as the
        # reference code does, so the second path sees the pixels the first skipped.
        shifted = nn.functional.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        b = self.path_2(shifted[:, :, ::2, ::2])
        return self.bn(torch.cat([a, b], dim=1))
