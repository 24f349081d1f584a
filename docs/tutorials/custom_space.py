"""Write your own search space: label smoothing as a one-number loss space."""

import os

import numpy as np
from torch.nn import functional as F

import metalearn as ml
from metalearn.searchspaces.base import ContinuousSpace

TINY = os.environ.get("METALEARN_TUTORIAL_TINY") == "1"


class LabelSmoothingSpace(ContinuousSpace):
    """Cross-entropy with label smoothing epsilon (Szegedy et al. 2016), epsilon in [0, 0.3].

    A continuous space declares its coordinates and box; sampling, mutation, text
    (``epsilon=0.1``), parsing and keys come from ``ContinuousSpace``. It only says
    what a genome builds and which recipe slot that fills.
    """

    name = "label-smoothing"
    slots = ("loss",)
    names = ("epsilon",)
    lower = (0.0,)
    upper = (0.3,)

    def named(self):
        return {"none": (0.0,), "inception": (0.1,)}

    def build(self, genome):
        (epsilon,) = genome

        def loss(logits, targets):
            return F.cross_entropy(logits, targets, label_smoothing=epsilon)

        return loss


# Register by name. A "module:attribute" string instead of the class makes the space
# importable by worker processes too (the pool and ray executors).
ml.register_space("label-smoothing", LabelSmoothingSpace)
space = ml.get_space("label-smoothing")

genome = space.sample(np.random.default_rng(0))
text = space.format(genome)
assert space.parse(text) == genome, "text round-trips exactly"
print(text, "->", space.key(genome))

# Every strategy that works on continuous spaces works on it now...
run = ml.search(space="label-smoothing", strategy="random", task="mnist1d-mlp",
                budget=3 if TINY else 20, steps=30 if TINY else 500,
                run="runs/tutorial-label-smoothing", init=["none"], progress=not TINY)
print(run.best(k=3)[["name", "candidate", "fitness"]])

# ... and so do products with other spaces: learning rate, momentum, weight decay and
# label smoothing searched together by CMA-ES.
both = ml.get_space("hparams+label-smoothing")
print(both.names)
assert both.slots == ("hparams", "loss")
run = ml.search(space="hparams+label-smoothing", strategy="cmaes", task="mnist1d-mlp",
                budget=2 if TINY else 20, steps=30 if TINY else 500,
                run="runs/tutorial-hparams-label-smoothing", progress=not TINY)
print(run.best(k=1)[["candidate", "fitness"]])
