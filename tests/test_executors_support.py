"""A scripted task for the executor tests (no test functions here).

Its "training" sleeps, gets stuck, kills its own worker process or runs out of
memory on request, and its fitness is a fixed function of the learning rate, so
a test can tell exactly which result belongs to which candidate. It lives in an
importable module because worker processes (spawned, or Ray's) unpickle it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metalearn.evaluator import Job
from metalearn.recipe import Recipe
from metalearn.registry import get_space
from metalearn.tasks.base import JobTimeout, Task, TrainingState

TESTS = Path(__file__).resolve().parent


def fitness_of(lr: float) -> float:
    """The scripted task's validation "accuracy" for learning rate ``lr``."""
    return round(1.0 / (1.0 + abs(math.log10(lr) + 1.5)), 9)


def expected_fitness(candidate_text: str) -> float:
    """What the scripted task scores an ``hparams`` candidate, computed here in the test."""
    space = get_space("hparams")
    return fitness_of(space.build(space.parse(candidate_text))["lr"])


def hparams_jobs(task: ScriptedTask, lrs: list[float], first: int = 0) -> list[Job]:
    """One job per learning rate, numbered from ``first`` as a strategy would number them."""
    space = get_space("hparams")
    return [Job(candidate=space.candidate((math.log10(lr), 0.9, -7.0)), steps=task.steps, seed=0,
                task=task, proposal=first + i) for i, lr in enumerate(lrs)]


@dataclass(frozen=True)
class ScriptedTask(Task):
    """Training that does what the test asks.

    Args:
        step_s: seconds each step sleeps (the inner time limit is checked between steps).
        stuck_s: seconds the first step sleeps without looking at the clock.
        die: ``"once"``: the first job of the run kills its worker process mid-job (the
            retry lives); ``"always"``: every attempt of every job does.
        oom: raise CUDA out-of-memory in the first step.
        marks: a folder where every attempt writes ``start-<lr>-<pid>`` (not part of the config).
    """

    name: str = "scripted"
    steps: int = 3
    step_s: float = 0.0
    stuck_s: float = 0.0
    die: str = ""
    oom: bool = False
    marks: str | None = field(default=None, compare=False)

    @property
    def config(self) -> Mapping[str, Any]:
        config = dataclasses.asdict(self)
        config.pop("marks")
        return config

    def with_options(self, **options: Any) -> ScriptedTask:
        return dataclasses.replace(self, **options)

    def default_recipe(self) -> Recipe:
        return Recipe(hparams={"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0})

    def start(self, recipe: Recipe, seed: int, device: str | torch.device = "cpu",
              total_steps: int | None = None) -> ScriptedState:
        return ScriptedState(self, float(recipe.hparams["lr"]))


class ScriptedState(TrainingState):
    def __init__(self, task: ScriptedTask, lr: float) -> None:
        self.task, self.lr = task, lr
        self.step, self.total_steps, self.curve = 0, task.steps, []
        self.weights = torch.zeros(1000)  # what an out-of-memory recovery must free

    def train(self, steps: int, deadline: float | None = None) -> None:
        task = self.task
        if task.marks is not None:
            marks = Path(task.marks)
            (marks / f"start-{self.lr:.9g}-{os.getpid()}").touch()
            if task.die == "always" or (task.die == "once" and _first(marks / "died")):
                time.sleep(0.2)  # mid-job, not at its very start
                os.kill(os.getpid(), signal.SIGKILL)
        for _ in range(steps):
            if task.oom:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            time.sleep(task.stuck_s if self.step == 0 else 0.0)
            time.sleep(task.step_s)
            self.step += 1
            self.curve.append((self.step, 1.0))
            if deadline is not None and time.monotonic() > deadline:
                raise JobTimeout(f"job passed its time limit at step {self.step}")

    def evaluate(self, split: str = "val") -> dict[str, float]:
        return {"accuracy": fitness_of(self.lr), "loss": 1.0}

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Inline runs as a worker runs: one torch thread (results do not depend on it; on a
    busy 2-core machine one thread is also much faster than two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _first(path: Path) -> bool:
    """True for the one process that creates ``path`` (atomically)."""
    try:
        path.open("x").close()
    except FileExistsError:
        return False
    return True


def starts(marks: Path) -> dict[str, list[int]]:
    """Learning rate (as text) -> pids of the attempts that started it."""
    found: dict[str, list[int]] = {}
    for mark in marks.glob("start-*"):
        head, pid = mark.name.rsplit("-", 1)
        found.setdefault(head.removeprefix("start-"), []).append(int(pid))
    return found


def ledger(run: Path) -> list[tuple[int, str, str, float | None, str]]:
    """(proposal, candidate, status, fitness, error) of every uncached evaluation, in tell order."""
    db = sqlite3.connect(run / "ledger.db")
    try:
        return db.execute("SELECT proposal, candidate, status, fitness, error FROM evaluations "
                          "WHERE cached = 0 ORDER BY id").fetchall()
    finally:
        db.close()


def assert_complete(run: Path, budget: int) -> list[tuple[int, str, str, float | None, str]]:
    """Every proposal 0..budget-1 has exactly one result: no duplicate, no gap."""
    rows = ledger(run)
    assert sorted(r[0] for r in rows) == list(range(budget)), [r[:3] for r in rows]
    return rows
