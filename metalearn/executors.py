"""Executors: where jobs run. The driver submits jobs and collects evaluations as they finish.

``inline`` (the default) evaluates in the driver's process, one job at a time.
Other executors (a process pool, a Ray cluster, population batching) implement
the same three methods; they never write the ledger, the driver does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from .errors import unknown
from .evaluator import Evaluation, Evaluator, Job


class Executor(ABC):
    """Runs jobs; ``capacity`` is how many may be in flight at once."""

    capacity: int = 1

    @abstractmethod
    def submit(self, job: Job) -> None: ...

    @abstractmethod
    def wait(self) -> list[Evaluation]:
        """Block until at least one submitted job has finished; return the finished ones."""

    @property
    @abstractmethod
    def in_flight(self) -> int: ...

    def close(self) -> None:
        """Release workers and devices."""


class InlineExecutor(Executor):
    """Evaluates each job in the calling process when ``wait`` is called."""

    capacity = 1

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator
        self._queue: list[Job] = []

    def submit(self, job: Job) -> None:
        self._queue.append(job)

    def wait(self) -> list[Evaluation]:
        return [self.evaluator.evaluate(self._queue.pop(0))] if self._queue else []

    @property
    def in_flight(self) -> int:
        return len(self._queue)


ExecutorFactory = Callable[..., Executor]
EXECUTORS: dict[str, ExecutorFactory] = {"inline": lambda evaluator, **_: InlineExecutor(evaluator)}


def register_executor(name: str, factory: ExecutorFactory) -> None:
    EXECUTORS[name] = factory


def make_executor(name: str, evaluator: Evaluator, **options: Any) -> Executor:
    if name not in EXECUTORS:
        raise unknown("executor", name, EXECUTORS)
    return EXECUTORS[name](evaluator, **options)


def _imported_on_use(target: str) -> ExecutorFactory:
    """A factory for ``"module:Class"``, imported when first used (Ray is an optional dependency)."""
    def make(evaluator: Evaluator, **options: Any) -> Executor:
        import importlib

        module, _, name = target.partition(":")
        executor: Executor = getattr(importlib.import_module(module), name)(evaluator, **options)
        return executor
    return make


register_executor("pool", _imported_on_use("metalearn.pool_executor:PoolExecutor"))
register_executor("ray", _imported_on_use("metalearn.ray_executor:RayExecutor"))
register_executor("batched", _imported_on_use("metalearn.batched_executor:BatchedExecutor"))
