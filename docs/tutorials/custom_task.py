"""Write your own task: a dataset and a model of your own, searched like any other task."""

import math
import os

import torch
from torch import nn

import metalearn as ml
from metalearn.tasks import SupervisedTask
from metalearn.tasks.data import register_dataset
from metalearn.tasks.models import register_model
from metalearn.tasks.train import Splits

TINY = os.environ.get("METALEARN_TUTORIAL_TINY") == "1"


@register_dataset("spirals")
def spirals(n: int = 3000, turns: float = 1.5, noise: float = 0.15, seed: int = 0, **_) -> Splits:
    """Three interleaved spirals in the plane, generated locally (never downloaded)."""
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 3, (n,), generator=g)
    radius = torch.rand(n, generator=g)
    angle = radius * turns * 2 * math.pi + label * (2 * math.pi / 3)
    x = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    x = x + noise * radius.unsqueeze(1) * torch.randn(n, 2, generator=g)
    # validation is carved from training data; the test split is kept apart
    a, b = int(0.7 * n), int(0.85 * n)
    return Splits(x[:a], label[:a], x[a:b], label[a:b], x[b:], label[b:], num_classes=3)


@register_model("tanh-mlp")
def tanh_mlp(in_shape, num_classes, width: int = 64, **_) -> nn.Module:
    """A two-layer tanh network (every backward rule applies to its Linear layers)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_shape[0], width), nn.Tanh(),
                         nn.Linear(width, width), nn.Tanh(), nn.Linear(width, num_classes))


# A task is a dataset, a model and the default recipe a candidate replaces parts of.
task = ml.register_task(SupervisedTask(
    name="spirals-tanh",
    dataset="spirals",
    model="tanh-mlp",
    steps=1000,                       # a job's default length
    batch_size=64,
    hparams={"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0},
    model_args={"width": 64},
    data_args={"noise": 0.15},
))
print(task.config)                    # part of every job's identity in the ledger

# The default recipe, trained once: the accuracy a searched candidate has to beat.
steps = 50 if TINY else 1000
baseline = task.run(seed=0, steps=steps)
print(f"default recipe: validation accuracy {baseline['accuracy']:.3f}")
assert 0.0 <= baseline["accuracy"] <= 1.0

# Variants of a task are one call away; they are different tasks to the ledger.
short = task.with_options(steps=200, batch_size=32)
assert short.config != task.config

# Search it like a built-in task.
run = ml.search(space="loss", strategy="cmaes", task="spirals-tanh", budget=3 if TINY else 20,
                steps=steps, run="runs/tutorial-spirals", progress=not TINY)
print(run.best(k=1)[["candidate", "fitness"]])
