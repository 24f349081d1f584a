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
