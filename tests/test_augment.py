"""Batched augmentation: crop, flip and cutout as tensor ops driven by one generator."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nas_engine.augment import AugmentError, augment_batch, cutout, normalize, random_crop, random_flip


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 16, c: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Random uint8 images: every pixel distinct enough that a shifted window is unambiguous."""
    return torch.randint(0, 256, (n, c, size, size), generator=gen(seed), dtype=torch.uint8)


def crop_offset(sample: torch.Tensor, original: torch.Tensor, padding: int) -> tuple[int, int] | None:
    """The (dy, dx) window of the zero-padded original that `sample` equals, if any."""
    padded = F.pad(original, (padding,) * 4)
    h, w = original.shape[-2:]
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            if torch.equal(padded[:, dy : dy + h, dx : dx + w], sample):
                return dy, dx
    return None


# -- normalize ------------------------------------------------------------------------------------
def test_normalize_scales_uint8_to_float_and_standardises_each_channel():
    x = images(4)
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.1)
    out = normalize(x, mean, std)
    assert out.dtype == torch.float32 and out.shape == x.shape
    expected = (x[:, 1].double() / 255 - 0.4) / 0.2
    assert torch.allclose(out[:, 1].double(), expected, atol=1e-5)


def test_normalize_returns_the_asked_dtype():
    assert normalize(images(2), (0.5,) * 3, (0.5,) * 3, dtype=torch.float64).dtype == torch.float64


def test_normalize_refuses_a_mean_for_the_wrong_number_of_channels():
    with pytest.raises(AugmentError) as err:
        normalize(images(2), (0.5,), (0.5,))
    assert err.value.field == "mean"


# -- random crop ------------------------------------------------------------------------------------
def test_a_crop_without_padding_is_the_identity():
    x = images()
    assert torch.equal(random_crop(x, 0, gen()), x)


def test_every_crop_is_a_window_of_the_zero_padded_image():
    x = images(8)
    out = random_crop(x, 4, gen())
    assert out.shape == x.shape and out.dtype == x.dtype
    for sample, original in zip(out, x):
        assert crop_offset(sample, original, 4) is not None


def test_different_samples_get_different_crops():
    x = images(1).repeat(64, 1, 1, 1)
    out = random_crop(x, 4, gen())
    offsets = {crop_offset(sample, x[0], 4) for sample in out}
    assert len(offsets) >= 20  # 81 possible offsets, 64 draws


# -- random flip -----------------------------------------------------------------------------------
def test_a_flip_mirrors_about_half_of_the_samples_exactly():
    x = images(64)
    out = random_flip(x, gen())
    flipped = [torch.equal(o, s.flip(-1)) for o, s in zip(out, x)]
    kept = [torch.equal(o, s) for o, s in zip(out, x)]
    assert all(f != k for f, k in zip(flipped, kept))  # each sample is one or the other
    assert 16 <= sum(flipped) <= 48


# -- cutout --------------------------------------------------------------------------------------------
def test_cutout_zeroes_exactly_size_squared_pixels_when_the_square_is_inside():
    x = torch.ones(64, 3, 32, 32)
    out = cutout(x, 8, gen())
    inside = 0
    for sample in out:
        zero = sample == 0
        assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2])  # all channels
        rows, cols = zero[0].nonzero(as_tuple=True)
        assert len(rows) <= 64
        height, width = int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1
        assert len(rows) == height * width  # one solid rectangle
        if rows.min() > 0 and cols.min() > 0 and rows.max() < 31 and cols.max() < 31:
            assert len(rows) == 64
            inside += 1
    assert inside > 0


def test_cutout_of_size_zero_is_the_identity():
    x = images()
    assert torch.equal(cutout(x, 0, gen()), x)


def test_cutout_works_on_uint8_images():
    out = cutout(images(), 16, gen())
    assert out.dtype == torch.uint8 and int((out == 0).sum()) > 0


# -- the whole batch ------------------------------------------------------------------------------------
def test_augment_batch_keeps_shape_and_dtype():
    for x in (images(), normalize(images(), (0.5,) * 3, (0.25,) * 3)):
        out = augment_batch(x, padding=4, cutout_size=16, generator=gen())
        assert out.shape == x.shape and out.dtype == x.dtype


def test_the_same_seed_gives_the_same_batch_and_another_seed_does_not():
    x = images()
    a = augment_batch(x, cutout_size=8, generator=gen(1))
    b = augment_batch(x, cutout_size=8, generator=gen(1))
    c = augment_batch(x, cutout_size=8, generator=gen(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_augmentation_never_changes_its_input():
    x = images()
    before = x.clone()
    augment_batch(x, cutout_size=8, generator=gen())
    assert torch.equal(x, before)


def test_bad_arguments_are_refused_with_their_field():
    with pytest.raises(AugmentError) as err:
        random_crop(images(), -1, gen())
    assert err.value.field == "padding"
    with pytest.raises(AugmentError) as err:
        augment_batch(images()[0], generator=gen())
    assert err.value.field == "images"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("generator_device", ["cpu", "cuda"])
def test_a_cuda_batch_works_with_a_generator_on_either_device(generator_device):
    x = images().cuda()
    g = torch.Generator(device=generator_device).manual_seed(0)
    out = augment_batch(x, cutout_size=8, generator=g)
    assert out.device == x.device and out.shape == x.shape
    if generator_device == "cpu":  # the same draws as on the CPU
        assert torch.equal(out.cpu(), augment_batch(x.cpu(), cutout_size=8, generator=gen(0)))
