"""Tasks: what candidates are trained on. Register a task with :func:`register_task`."""

from __future__ import annotations

from .base import Diverged, JobTimeout, Task, TrainingState
from .supervised import SupervisedTask

TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Make ``task`` available by its name to ``get_task`` and the command line."""
    TASKS[task.name] = task
    return task


register_task(SupervisedTask(
    name="mnist1d-mlp", dataset="mnist1d", model="mlp", steps=2000, batch_size=128,
    hparams={"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
))

__all__ = ["TASKS", "Diverged", "JobTimeout", "SupervisedTask", "Task", "TrainingState",
           "register_task"]
