"""Batched data augmentation as tensor ops, on whatever device the batch lives on.

The CIFAR recipe of the NASNet paper (Zoph et al. 2017, appendix, following He et al.
2016): zero-pad 4 pixels and crop back to 32x32 at a random offset, flip horizontally
with probability 0.5; the final models add cutout (DeVries & Taylor 2017, "Improved
Regularization of Convolutional Neural Networks with Cutout": one square of 16 pixels
zeroed at a random centre, clipped at the border).

With the whole data set resident on the GPU, a per-image PIL pipeline in DataLoader
workers would be the bottleneck of every child, so each op here treats the batch at
once with index arithmetic, never a Python loop over samples. Randomness comes only
from the given `torch.Generator`, drawn on the generator's own device and then moved
to the batch's: a CPU generator gives the same augmentation whether the batch is on
the CPU or a GPU. All ops keep the dtype, so they work on uint8 images as well as on
normalized floats (where a zero is the mean colour, as in the DARTS cutout).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from nas_engine.errors import FieldError


class AugmentError(FieldError):
    """An augmentation argument is invalid. `field` names it."""


def normalize(
    images_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(x / 255 - mean) / std per channel, as `dtype`. Float input is taken as already in [0, 1]."""
    _check_batch(images_uint8)
    channels = images_uint8.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise AugmentError("mean", f"need {channels} per-channel values, got {len(mean)} means and {len(std)} stds")
    x = images_uint8.to(dtype)
    if images_uint8.dtype == torch.uint8:
        x = x / 255.0
    m = torch.tensor(mean, dtype=dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None) -> torch.Tensor:
    """Zero-pad by `padding` on every side, then crop each sample back to H x W at its own offset."""
    _check_batch(x)
    _check_non_negative("padding", padding)
    if padding == 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = _randint(2 * padding + 1, n, generator, x.device)
    dx = _randint(2 * padding + 1, n, generator, x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # n, 1, h, 1
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # n, 1, 1, w
    samples = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[samples, chans, rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Mirror each sample left-right with probability 0.5."""
    _check_batch(x)
    flip = _rand(x.shape[0], generator, x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator | None) -> torch.Tensor:
    """Zero a size x size square (all channels) at a uniformly random centre per sample.

    The centre may lie near the border, where the square is clipped, as in DeVries &
    Taylor's code (so the expected masked area is below size**2).
    """
    _check_batch(x)
    _check_non_negative("cutout_size", size)
    if size == 0:
        return x
    n, _, h, w = x.shape
    top = _randint(h, n, generator, x.device) - size // 2
    left = _randint(w, n, generator, x.device) - size // 2
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    in_rows = (ys >= top[:, None]) & (ys < top[:, None] + size)  # n, h
    in_cols = (xs >= left[:, None]) & (xs < left[:, None] + size)  # n, w
    mask = in_rows[:, None, :, None] & in_cols[:, None, None, :]  # n, 1, h, w
    return x.masked_fill(mask, 0)


def default_padding(image_size: int) -> int:
    """The crop padding that keeps the paper's proportion, 4 px at 32 px: an eighth of the
    image side, at least one pixel (1 at 8 px: a shift of half the image taught digits
    nothing but noise)."""
    return max(1, round(image_size / 8))


def augment_batch(
    x: torch.Tensor,
    *,
    padding: int = 4,
    flip: bool = True,
    cutout_size: int = 0,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Crop, flip, then cutout: the paper's CIFAR training augmentation for one batch."""
    x = random_crop(x, padding, generator)
    if flip:
        x = random_flip(x, generator)
    return cutout(x, cutout_size, generator)


# -- helpers ------------------------------------------------------------------------------
def _check_batch(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise AugmentError("images", f"expected a batch N x C x H x W, got {shape}")


def _check_non_negative(field: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise AugmentError(field, f"must be a non-negative integer, got {value!r}")


def _draw_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    # A generator can only fill tensors on its own device; without one, use the batch's.
    return generator.device if generator is not None else device


def _randint(high: int, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """n integers uniform in [0, high), on `device`."""
    draw = torch.randint(0, high, (n,), generator=generator, device=_draw_device(generator, device))
    return draw.to(device)


def _rand(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand((n,), generator=generator, device=_draw_device(generator, device)).to(device)
