"""Training hyperparameters as a continuous box: log10 learning rate, momentum, log10 weight decay."""

from __future__ import annotations

import numpy as np

from ..recipe import Recipe
from .base import ContinuousSpace


class HParamsSpace(ContinuousSpace):
    """``(log10 lr, momentum, log10 weight_decay)``; ``build`` gives the recipe's ``hparams``."""

    name = "hparams"
    slots = ("hparams",)
    names = ("log10_lr", "momentum", "log10_weight_decay")
    lower = (-4.0, 0.0, -7.0)
    upper = (0.0, 0.99, -2.0)

    def named(self) -> dict[str, tuple[float, ...]]:
        return {"default": (-1.0, 0.9, -7.0)}

    def init_vector(self) -> np.ndarray:
        return np.array(self.named()["default"])

    def init_sigma(self) -> float:
        return 0.5

    def build(self, genome: tuple[float, ...]) -> dict[str, float]:
        log_lr, momentum, log_wd = genome
        return {"lr": 10.0 ** log_lr, "momentum": float(np.clip(momentum, 0.0, 0.999)),
                "weight_decay": 10.0 ** log_wd}

    def fill(self, recipe: Recipe, genome: tuple[float, ...]) -> Recipe:
        return recipe.replace(hparams=self.build(genome))

    def export_source(self, genome: tuple[float, ...]) -> str:
        """``HPARAMS`` and ``make_optimizer(params)``: the default recipe's SGD with them."""
        hparams = self.build(genome)
        values = ", ".join(f"{k!r}: {float(v)!r}" for k, v in hparams.items())
        return f'''"""Training hyperparameters found by metalearn (space 'hparams').

Genome: {self.format(genome)}
make_optimizer is the default recipe's optimizer (SGD) with these values.
"""

import torch

HPARAMS = {{{values}}}


def make_optimizer(params, **overrides):
    """torch.optim.SGD with HPARAMS; keywords override single values."""
    settings = {{**HPARAMS, **overrides}}
    return torch.optim.SGD(params, lr=settings["lr"], momentum=settings["momentum"],
                           weight_decay=settings["weight_decay"], nesterov=False)
'''
