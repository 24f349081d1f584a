"""TaylorGLO: loss functions as third-order Taylor polynomials (Gonzalez & Miikkulainen 2021).

For each class c, ``x`` is the one-hot label entry and ``y`` the softmax
probability. Around a centre ``(t0, t1)`` the polynomial keeps the six terms that
depend on ``y`` (the four others have zero gradient)::

    f(x, y) = t2 (y-t1) + t3 (y-t1)^2 + t4 (y-t1)^3
            + t5 (x-t0)(y-t1) + t6 (x-t0)(y-t1)^2 + t7 (x-t0)^2 (y-t1)

and the batch loss is ``L = -(1/B) sum_samples sum_classes f(x_c, y_c)``.

Choice (the paper and the authors' code differ): the Taylor divisors 1/2 and 1/6
of the paper are *left out*, as in the authors' code; they only rescale t3, t4,
t6 and t7. With that choice the expansion of cross-entropy's ``x log y`` around
(0.5, 0.5) is ``t0 = t1 = 0.5, (t2..t7) = (1, -1, 4/3, 2, -2, 0)``, the named point
``cross_entropy_taylor``. The genome is the 8 numbers ``(t0, ..., t7)``; CMA-ES
starts at zeros with sigma 1.2 as in the paper.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .base import ContinuousSpace

NAMES = ("t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7")


def taylorglo_loss(logits: torch.Tensor, targets: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """The TaylorGLO loss of a batch for parameters ``theta = (t0, ..., t7)``."""
    t0, t1, t2, t3, t4, t5, t6, t7 = theta.unbind()
    y = torch.softmax(logits, dim=1)
    x = nn.functional.one_hot(targets, logits.shape[1]).to(y.dtype)
    dy, dx = y - t1, x - t0
    f = t2 * dy + t3 * dy**2 + t4 * dy**3 + t5 * dx * dy + t6 * dx * dy**2 + t7 * dx**2 * dy
    return -f.sum(dim=1).mean()


class TaylorGLOLoss(nn.Module):
    """``loss(logits, targets)`` for fixed TaylorGLO parameters."""

    theta: torch.Tensor

    def __init__(self, theta: tuple[float, ...]) -> None:
        super().__init__()
        if len(theta) != len(NAMES):
            raise ValueError(f"TaylorGLO takes 8 parameters (t0..t7), got {len(theta)}")
        self.register_buffer("theta", torch.tensor(theta, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return taylorglo_loss(logits, targets, self.theta.to(logits.device))

    def extra_repr(self) -> str:
        return ", ".join(f"{n}={v:.4g}" for n, v in zip(NAMES, self.theta.tolist()))


class TaylorGLOSpace(ContinuousSpace):
    """The 8 TaylorGLO parameters; ``build`` gives a loss ``nn.Module``."""

    name = "loss"
    slots = ("loss",)
    names = NAMES
    lower = (-4.0,) * 8
    upper = (4.0,) * 8
    bounded = False  # the box is for random sampling; CMA-ES moves freely, as in the paper

    def named(self) -> dict[str, tuple[float, ...]]:
        return {"cross_entropy_taylor": (0.5, 0.5, 1.0, -1.0, 4.0 / 3.0, 2.0, -2.0, 0.0)}

    def init_vector(self) -> np.ndarray:
        return np.zeros(8)

    def init_sigma(self) -> float:
        return 1.2

    def build(self, genome: tuple[float, ...]) -> TaylorGLOLoss:
        return TaylorGLOLoss(genome)

    def export_source(self, genome: tuple[float, ...]) -> str:
        params = ", ".join(f"{float(v)!r}" for v in genome)
        return f'''"""A TaylorGLO loss found by metalearn (Gonzalez & Miikkulainen 2021).

Genome: {self.format(genome)}
Taylor divisors are left out, as in the authors' code.
"""

import torch

THETA = ({params})


class TaylorGLOLoss(torch.nn.Module):
    """loss(logits, targets): -(1/B) sum_b sum_c f(onehot, softmax)."""

    def __init__(self, theta=THETA):
        super().__init__()
        self.register_buffer("theta", torch.tensor(theta, dtype=torch.float32))

    def forward(self, logits, targets):
        t0, t1, t2, t3, t4, t5, t6, t7 = self.theta.to(logits.device).unbind()
        y = torch.softmax(logits, dim=1)
        x = torch.nn.functional.one_hot(targets, logits.shape[1]).to(y.dtype)
        dy, dx = y - t1, x - t0
        f = (t2 * dy + t3 * dy**2 + t4 * dy**3
             + t5 * dx * dy + t6 * dx * dy**2 + t7 * dx**2 * dy)
        return -f.sum(dim=1).mean()
'''
