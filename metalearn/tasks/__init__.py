"""Tasks: what candidates are trained on. Register a task with :func:`register_task`."""

from __future__ import annotations

from .base import Diverged, JobTimeout, Task, TrainingState
from .supervised import SupervisedTask, steps_for_epochs

TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Make ``task`` available by its name to ``get_task`` and the command line."""
    TASKS[task.name] = task
    return task


register_task(SupervisedTask(
    name="mnist1d-mlp", dataset="mnist1d", model="mlp", steps=2000, batch_size=128,
    hparams={"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
))
register_task(SupervisedTask(  # Conv2d layers with strides and padding, for backward rules
    name="mnist1d-conv", dataset="mnist1d", model="signal-convnet", steps=2000, batch_size=128,
    hparams={"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
))

# A cheap synthetic task (no training) for comparing search strategies: docs/strategies.md.
from .synthetic import SyntheticRuleMatch  # noqa: E402

register_task(SyntheticRuleMatch())

# The image tasks of the seed papers (docs/tasks.md): CIFAR-10 and SVHN read from a local
# folder; the papers' budgets (epochs over the training images left once validation is
# carved off, as steps) and learning-rate schedules are the defaults.
from . import augment, vision, vision_models  # noqa: E402,F401  (register augments, data, models)

_wrn = SupervisedTask(  # Zagoruyko & Komodakis 2016: 200 epochs, lr x0.2 at epochs 60, 120, 160
    name="cifar10-wrn-16-2", dataset="cifar10", model="wrn", model_args={"depth": 16, "width": 2},
    batch_size=128, steps=steps_for_epochs(200, vision.CIFAR10_EPOCH, 128),
    epoch_size=vision.CIFAR10_EPOCH, lr_schedule="multistep:0.3,0.6,0.8:0.2",
    hparams={"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": 1.0},
    augment="crop-flip", amp=True, channels_last=True, compile="reduce-overhead",
)
register_task(_wrn)
register_task(_wrn.with_options(name="cifar10-wrn-10-1", model_args={"depth": 10, "width": 1}))
register_task(_wrn.with_options(name="cifar10-wrn-28-10", model_args={"depth": 28, "width": 10}))
register_task(_wrn.with_options(  # WRN on SVHN: 160 epochs, lr 0.01 /10 at 80 and 120, x/255 only
    name="svhn-wrn-16-2", dataset="svhn", data_args={"normalize": False}, augment="none",
    model_args={"depth": 16, "width": 2, "dropout": 0.4}, lr_schedule="step",
    steps=steps_for_epochs(160, vision.SVHN_EPOCH, 128), epoch_size=vision.SVHN_EPOCH,
    hparams={"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": 1.0},
))
register_task(_wrn.with_options(  # He et al. 2016: 64k iterations, lr 0.1 /10 at 32k and 48k
    name="cifar10-resnet20", model="resnet", model_args={"depth": 20}, steps=64_000,
    lr_schedule="step", hparams={"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
))
register_task(_wrn.with_options(  # Bello et al. 2017: 5 epochs of a small ConvNet
    name="cifar10-nos-convnet", model="nos-convnet", model_args={}, epochs=5,
    lr_schedule="constant", augment="none",
    hparams={"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0},
))
_proxprop = _wrn.with_options(  # Frerix et al. 2018: 50 epochs of batch 500, x/255 only
    name="cifar10-proxprop-mlp", model="proxprop-mlp", model_args={}, data_args={"normalize": False},
    batch_size=500, epochs=50, lr_schedule="constant", augment="none", amp=False,
    channels_last=False, hparams={"lr": 0.05, "momentum": 0.95, "weight_decay": 0.0, "nesterov": 1.0},
)
register_task(_proxprop)  # their MLP baseline: Nesterov SGD, lr 0.05, momentum 0.95
register_task(_proxprop.with_options(  # their ConvNet baseline: Adam, lr 1e-3
    name="cifar10-proxprop-convnet", model="proxprop-convnet", optimizer="adam",
    hparams={"lr": 1e-3, "weight_decay": 0.0},
))

__all__ = ["TASKS", "Diverged", "JobTimeout", "SupervisedTask", "Task", "TrainingState",
           "register_task"]
