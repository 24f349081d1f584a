"""TaylorGLO loss (Gonzalez & Miikkulainen 2021): the formula and its cross-entropy point."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import metalearn as ml
from metalearn.searchspaces.taylorglo import TaylorGLOLoss


def reference_loss(logits: np.ndarray, targets: np.ndarray, t: np.ndarray) -> float:
    """The reference formula, written with plain loops over samples and classes."""
    total = 0.0
    for b in range(logits.shape[0]):
        z = logits[b] - logits[b].max()
        probs = np.exp(z) / np.exp(z).sum()
        for c in range(logits.shape[1]):
            x, y = float(c == targets[b]), probs[c]
            f = (t[2] * (y - t[1]) + t[3] * (y - t[1]) ** 2 + t[4] * (y - t[1]) ** 3
                 + t[5] * (x - t[0]) * (y - t[1]) + t[6] * (x - t[0]) * (y - t[1]) ** 2
                 + t[7] * (x - t[0]) ** 2 * (y - t[1]))
            total += f
    return -total / logits.shape[0]


@pytest.mark.parametrize("seed", range(5))
def test_taylorglo_loss_equals_reference_formula(seed: int) -> None:
    rng = np.random.default_rng(seed)
    theta = rng.normal(0, 2, 8)
    logits = rng.normal(0, 3, (16, 10))
    targets = rng.integers(0, 10, 16)
    loss = TaylorGLOLoss(tuple(theta))(torch.tensor(logits), torch.tensor(targets))
    assert loss.item() == pytest.approx(reference_loss(logits, targets, theta), rel=1e-5, abs=1e-6)


def test_cross_entropy_taylor_gradient_points_like_cross_entropy() -> None:
    space = ml.get_space("loss")
    taylor = space.build(space.named()["cross_entropy_taylor"])
    generator = torch.Generator().manual_seed(0)
    logits = (0.05 * torch.randn(64, 10, generator=generator, dtype=torch.float64)).requires_grad_()
    targets = torch.randint(0, 10, (64,), generator=generator)
    (g_taylor,) = torch.autograd.grad(taylor(logits.float(), targets), logits)
    (g_ce,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, targets), logits)
    cosine = torch.nn.functional.cosine_similarity(g_taylor.flatten(), g_ce.flatten(), dim=0)
    assert cosine > 0.95


def test_cross_entropy_taylor_equals_cross_entropy_up_to_a_constant_near_half() -> None:
    # Two classes with y near 0.5: the expansion of x log y drops only the y-free term
    # x log 0.5, so L = CE + log 0.5 up to third-order error.
    space = ml.get_space("loss")
    taylor = space.build(space.named()["cross_entropy_taylor"])
    targets = torch.tensor([0, 1, 1])
    for scale in (0.02, 0.1, 0.2):
        logits = scale * torch.tensor([[1.0, -1.0], [-0.5, 0.5], [0.3, -0.3]])
        ce = torch.nn.functional.cross_entropy(logits, targets)
        assert (taylor(logits, targets) - ce).item() == pytest.approx(np.log(0.5), abs=2e-3)


def test_loss_space_text_round_trips_exactly() -> None:
    space = ml.get_space("loss")
    rng = np.random.default_rng(1)
    for _ in range(200):
        genome = space.sample(rng)
        assert space.parse(space.format(genome)) == genome
        child = space.mutate(genome, rng)
        assert child != genome and len(child) == 8


def test_malformed_loss_text_names_position_and_expectation() -> None:
    space = ml.get_space("loss")
    with pytest.raises(ml.ParseError, match=r"position 10 expected a number, found .abc."):
        space.parse("t0=0.5 t1=abc")
    with pytest.raises(ml.ParseError, match="values for t2"):
        space.parse("t0=0 t1=0")
