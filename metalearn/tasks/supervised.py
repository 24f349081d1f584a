"""SupervisedTask: a dataset, a model and default training settings, by name."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..recipe import OptimizerFactory, Recipe, sgd
from .base import Task, replace_fields
from .data import load_dataset
from .models import MODELS
from .train import Augment, Trainer, derive_seed

AUGMENTS: dict[str, Augment] = {}


def adam(params: Any, *, lr: float, weight_decay: float = 0.0, **_: Any) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba 2015) with default betas: ProxProp's ConvNet baseline (Frerix et al. 2018)."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


#: a task's default optimizer, by name (a candidate of the optimizer space replaces it)
OPTIMIZERS: dict[str, OptimizerFactory] = {"sgd": sgd, "adam": adam}


@dataclass(frozen=True)
class SupervisedTask(Task):
    """Classification of ``dataset`` with ``model``; a job trains ``steps`` steps.

    Every field but ``data_dir`` and ``epoch_size`` is part of the task's identity
    (``config``). ``epoch_size`` (training examples per epoch) lets a job's length be
    given in epochs: ``with_options(epochs=200)``.
    """

    name: str
    dataset: str
    model: str
    steps: int
    batch_size: int = 128
    hparams: Mapping[str, float] = field(
        default_factory=lambda: {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0})
    model_args: Mapping[str, Any] = field(default_factory=dict)
    data_args: Mapping[str, Any] = field(default_factory=dict)
    lr_schedule: str = "constant"
    #: the default recipe's optimizer, a name in ``OPTIMIZERS``
    optimizer: str = "sgd"
    augment: str = "none"
    amp: bool = False
    channels_last: bool = False
    #: a folder holding the dataset files, for datasets read from disk
    data_dir: str | None = field(default=None, compare=False)
    #: training examples in one epoch, so that ``with_options(epochs=...)`` can convert to steps
    epoch_size: int | None = field(default=None, compare=False)
    #: ``torch.compile`` mode on CUDA ("none", "default", "reduce-overhead", "max-autotune");
    #: a speed knob, not part of the task's identity
    compile: str = field(default="none", compare=False)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r} of task {self.name!r}; "
                             f"accepted: {', '.join(sorted(OPTIMIZERS))}")

    @property
    def config(self) -> Mapping[str, Any]:
        config = dataclasses.asdict(self)
        config.pop("data_dir")
        config.pop("epoch_size")
        config.pop("compile")
        if config["optimizer"] == "sgd":  # only shown when not the default: keeps older job keys
            config.pop("optimizer")
        return {k: dict(v) if isinstance(v, Mapping) else v for k, v in config.items()}

    def with_options(self, **options: Any) -> SupervisedTask:
        """A copy with fields replaced (``steps=500``, ``batch_size=64``, ...).

        ``epochs=E`` sets ``steps = E * ceil(epoch_size / batch_size)`` (with the new
        ``batch_size`` if one is given too), for tasks that know their epoch size.
        """
        if "epochs" in options:
            options = self._epochs_to_steps(dict(options))
        return replace_fields(self, **options)  # type: ignore[no-any-return]

    def _epochs_to_steps(self, options: dict[str, Any]) -> dict[str, Any]:
        epochs = options.pop("epochs")
        if "steps" in options:
            raise ValueError(f"give either steps or epochs for task {self.name!r}, not both")
        if self.epoch_size is None:
            raise ValueError(f"task {self.name!r} has no epoch size; give its length as steps")
        if not isinstance(epochs, int | float) or epochs <= 0:
            raise ValueError(f"epochs must be a positive number, got {epochs!r}")
        batch_size = int(options.get("batch_size", self.batch_size))
        options["steps"] = steps_for_epochs(epochs, self.epoch_size, batch_size)
        return options

    def default_recipe(self) -> Recipe:
        return Recipe(optimizer=OPTIMIZERS[self.optimizer], hparams=dict(self.hparams))

    def load_data(self) -> Any:
        args = dict(self.data_args)
        if self.data_dir is not None:
            args["data_dir"] = self.data_dir
        return load_dataset(self.dataset, **args)

    def build_model(self, seed: int, in_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "model"))
            return MODELS[self.model](in_shape, num_classes, **dict(self.model_args))

    def start(self, recipe: Recipe, seed: int, device: str | torch.device = "cpu",
              total_steps: int | None = None) -> Trainer:
        device = torch.device(device)
        splits = self.load_data()
        data = _on_device(splits, device)
        model = self.build_model(seed, tuple(splits.x_train.shape[1:]), splits.num_classes)
        if self.channels_last and device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
        augment: Callable[..., Any] | None = AUGMENTS[self.augment] if self.augment != "none" else None
        return Trainer(model, data, recipe, seed, total_steps or self.steps, self.batch_size,
                       device, lr_schedule=self.lr_schedule, augment=augment, amp=self.amp,
                       compile_mode=self.compile)


def steps_for_epochs(epochs: float, epoch_size: int, batch_size: int) -> int:
    """Training steps in ``epochs`` passes over ``epoch_size`` examples, ``batch_size`` at a time."""
    return max(1, round(epochs * math.ceil(epoch_size / batch_size)))


_DEVICE_COPIES: dict[tuple[int, str], Any] = {}


def _on_device(splits: Any, device: torch.device) -> Any:
    """One copy of a dataset per device, shared by every job of the process."""
    if device.type == "cpu":
        return splits
    key = (id(splits), str(device))
    if key not in _DEVICE_COPIES:
        _DEVICE_COPIES[key] = splits.to(device)
    return _DEVICE_COPIES[key]
