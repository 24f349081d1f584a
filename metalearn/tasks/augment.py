"""Data augmentation on the device, vectorised over the batch.

The standard CIFAR augmentation (He et al. 2016, Sec. 4.2; Zagoruyko & Komodakis
2016): pad each image by 4 pixels with zeros, take a random 32x32 crop, and flip it
horizontally with probability 1/2. Here it is one gather over the whole batch, on
whatever device the batch lives (uint8 images stay uint8, so zero padding is the
black border of torchvision's ``RandomCrop(32, padding=4)``), and every random draw
comes from the ``torch.Generator`` the training loop passes in, so a job's
augmentation depends on its seed alone.

Registered in :data:`metalearn.tasks.supervised.AUGMENTS` as ``"crop-flip"``.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .supervised import AUGMENTS


def crop_flip(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor,
              padding: int = 4) -> torch.Tensor:
    """Crop each image of ``x`` (N, C, H, W) from its zero-padded copy, then flip some.

    Args:
        x: images, any dtype.
        top, left: (N,) integer offsets of each crop in the padded image, in ``[0, 2*padding]``
            (``padding`` for both is the uncropped image).
        flip: (N,) booleans: mirror that image left to right after cropping.
        padding: zero border added on every side before cropping.

    Returns:
        (N, C, H, W) tensor of ``x``'s dtype: ``out[n, c, i, j] = padded[n, c, top[n] + i,
        left[n] + (W - 1 - j if flip[n] else j)]``.
    """
    n, c, h, w = x.shape
    device = x.device
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = top.view(n, 1) + torch.arange(h, device=device)                 # (N, H)
    columns = torch.arange(w, device=device)
    columns = torch.where(flip.view(n, 1), w - 1 - columns, columns) + left.view(n, 1)  # (N, W)
    return padded[torch.arange(n, device=device).view(n, 1, 1, 1),
                  torch.arange(c, device=device).view(1, c, 1, 1),
                  rows.view(n, 1, h, 1),
                  columns.view(n, 1, 1, w)]


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4
                     ) -> torch.Tensor:
    """Random crop (zero padding ``padding``) and horizontal flip of every image in ``x``.

    Draws, in this order from ``generator``: the crops' top offsets, their left offsets,
    and the flips (a uniform number below 1/2 flips), each one per image.
    """
    n = x.shape[0]
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=x.device)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=x.device)
    flip = torch.rand(n, generator=generator, device=x.device) < 0.5
    return crop_flip(x, top, left, flip, padding)


AUGMENTS["crop-flip"] = random_crop_flip
