"""Task and TrainingState: what a search trains and how a training run is held.

A task names a dataset, a model and a default training recipe. ``start(recipe,
seed, device)`` gives a :class:`TrainingState` that trains in chunks of steps,
evaluates on the validation split (carved from the training data; the test split
is read only by ``evaluate("test")``, used for retraining and reports), and saves
and loads itself as one checkpoint so population-based training can continue any
member from any interval.
"""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..recipe import Recipe


def replace_fields(task: Any, **options: Any) -> Any:
    """A copy of the dataclass ``task`` with fields replaced; unknown names are a ValueError."""
    fields = {f.name for f in dataclasses.fields(task)}
    unknown = set(options) - fields
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} of task {task.name!r}; "
                         f"accepted: {', '.join(sorted(fields))}")
    return dataclasses.replace(task, **options)


class Diverged(RuntimeError):
    """The loss or the parameters became NaN or infinite."""


class JobTimeout(RuntimeError):
    """Training ran past the job's time limit."""


class TrainingState(ABC):
    """One training run in progress: model, optimizer, step counter, random generators."""

    step: int
    total_steps: int
    curve: list[tuple[int, float]]

    @abstractmethod
    def train(self, steps: int, deadline: float | None = None) -> None:
        """Train ``steps`` more steps; raise :class:`Diverged` at the first NaN/Inf loss,
        :class:`JobTimeout` once ``time.monotonic()`` passes ``deadline``."""

    @abstractmethod
    def evaluate(self, split: str = "val") -> dict[str, float]:
        """Metrics on ``split`` (``"val"`` or ``"test"``): at least ``accuracy`` and ``loss``."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)  # atomic: a checkpoint either exists whole or not at all

    def load(self, path: str | Path) -> None:
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


class Task(ABC):
    """A training problem on which candidates are scored."""

    name: str
    #: default length of a job, in training steps
    steps: int

    @property
    @abstractmethod
    def config(self) -> Mapping[str, Any]:
        """Everything that defines the task, as JSON-able values (part of a job's identity)."""

    def config_json(self) -> str:
        return json.dumps(dict(self.config), sort_keys=True)

    @abstractmethod
    def default_recipe(self) -> Recipe: ...

    @abstractmethod
    def start(self, recipe: Recipe, seed: int, device: str | torch.device = "cpu",
              total_steps: int | None = None) -> TrainingState:
        """A fresh training run; ``total_steps`` is what decay schedules count towards."""

    def run(self, recipe: Recipe | None = None, seed: int = 0, steps: int | None = None,
            device: str | torch.device = "cpu") -> dict[str, float]:
        """Train from scratch for ``steps`` (the task's default) and return validation metrics."""
        steps = self.steps if steps is None else steps
        state = self.start(recipe or self.default_recipe(), seed, device, total_steps=steps)
        state.train(steps)
        return state.evaluate()
