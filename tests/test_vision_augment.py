"""The on-device augmentation: random crop (zero padding 4) and horizontal flip."""

from __future__ import annotations

import torch

from metalearn.tasks.augment import crop_flip, random_crop_flip
from metalearn.tasks.supervised import AUGMENTS


def numbered(n: int = 1) -> torch.Tensor:
    """(n, 2, 32, 32) int images whose pixel (k, c, i, j) holds 1 + j + 32*i + 1024*c + 2048*k,
    so no pixel is 0 (the padding) and every value says where it came from."""
    return 1 + torch.arange(n * 2 * 32 * 32).view(n, 2, 32, 32)


def test_crop_of_padded_image_is_exact_shift_with_black_border():
    x = numbered(1)
    # top=0, left=8: content moves down 4 rows (zero rows on top) and left 4 columns
    out = crop_flip(x, torch.tensor([0]), torch.tensor([8]), torch.tensor([False]))
    assert out.shape == (1, 2, 32, 32)
    assert not out[0, :, :4].any() and not out[0, :, :, 28:].any()
    assert torch.equal(out[0, :, 4:, :28], x[0, :, :28, 4:])
    assert out[0, 0, 4, 0].item() == 1 + 4            # source pixel (row 0, column 4)
    assert out[0, 1, 31, 27].item() == 1 + 31 + 32 * 27 + 1024


def test_centre_crop_is_the_image_and_flip_mirrors_it():
    x = numbered(1)
    centre = (torch.tensor([4]), torch.tensor([4]))
    assert torch.equal(crop_flip(x, *centre, torch.tensor([False])), x)
    assert torch.equal(crop_flip(x, *centre, torch.tensor([True])), x.flip(-1))


def test_flip_is_applied_after_the_crop():
    x = numbered(1)
    out = crop_flip(x, torch.tensor([4]), torch.tensor([0]), torch.tensor([True]))
    # the crop keeps source columns -4..27; mirrored, column j shows source column 27 - j
    assert out[0, 0, 0, 0].item() == 1 + 27
    assert out[0, 0, 0, 27].item() == 1 + 0
    assert not out[0, :, :, 28:].any()


def test_each_image_gets_its_own_offsets():
    x = numbered(2)
    out = crop_flip(x, torch.tensor([0, 8]), torch.tensor([4, 4]), torch.tensor([False, False]))
    assert torch.equal(out[0, :, 4:], x[0, :, :28])
    assert torch.equal(out[1, :, :28], x[1, :, 4:])


def test_random_crop_flip_keeps_shape_dtype_and_is_reproducible():
    x = numbered(64).to(torch.uint8)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a, b = random_crop_flip(x, g1), random_crop_flip(x, g2)
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, b)
    assert not torch.equal(a, random_crop_flip(x, g1))  # the generator moved on
    assert AUGMENTS["crop-flip"] is random_crop_flip


def test_random_crop_flip_is_a_real_crop_from_the_generators_draws():
    x = numbered(16)
    out = random_crop_flip(x, torch.Generator().manual_seed(3))
    replay = torch.Generator().manual_seed(3)
    top = torch.randint(0, 9, (16,), generator=replay)
    left = torch.randint(0, 9, (16,), generator=replay)
    flip = torch.rand(16, generator=replay) < 0.5
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for n in range(16):
        crop = padded[n, :, top[n]:top[n] + 32, left[n]:left[n] + 32]
        assert torch.equal(out[n], crop.flip(-1) if flip[n] else crop)
    assert 0 < int(flip.sum()) < 16 and len(set(top.tolist())) > 3


def test_offsets_cover_all_nine_positions_and_flip_half_the_time():
    x = torch.zeros(4000, 1, 32, 32, dtype=torch.uint8)
    x[:, :, 0, 0] = 1  # marks the original top-left corner
    out = random_crop_flip(x, torch.Generator().manual_seed(0))
    where = (out == 1).nonzero()
    rows, cols = set(where[:, 2].tolist()), set(where[:, 3].tolist())
    assert rows == {0, 1, 2, 3, 4}                       # shifted down by 4 - top, when visible
    assert cols == {0, 1, 2, 3, 4, 27, 28, 29, 30, 31}   # and mirrored to the right when flipped
    assert 0.4 < (where[:, 3] >= 16).float().mean().item() < 0.6
    assert abs(len(where) / 4000 - 25 / 81) < 0.04       # visible for 5 of 9 tops x 5 of 9 lefts
