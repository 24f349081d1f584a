"""What running a job elsewhere costs, and how busy asynchronous evolution keeps the workers.

1. Scheduling overhead per job, on a trivial task (no training: the job is pure
   bookkeeping), for the ``pool`` and ``ray`` executors against the baseline
   ``inline``: one job at a time (latency), and as many in flight as there are
   workers (throughput, jobs refilled as they finish).
2. Worker utilisation of an asynchronous ``evolution`` search on mnist1d-mlp:
   busy time (the workers' summed job wall time) / (workers x wall time).

    python benchmarks/executor_overhead.py [--jobs 200] [--workers 2] [--executors pool,ray]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

import metalearn as ml
from metalearn.evaluator import Evaluator, Job
from metalearn.executors import Executor, make_executor
from metalearn.recipe import Recipe
from metalearn.tasks.base import Task, TrainingState


@dataclasses.dataclass(frozen=True)
class TrivialTask(Task):
    """A task whose training does nothing: a job's time is all overhead."""

    name: str = "trivial"
    steps: int = 1

    @property
    def config(self) -> Mapping[str, Any]:
        return {"name": self.name}

    def default_recipe(self) -> Recipe:
        return Recipe()

    def start(self, recipe: Recipe, seed: int, device: str | torch.device = "cpu",
              total_steps: int | None = None) -> TrainingState:
        return _Nothing()


class _Nothing(TrainingState):
    step, total_steps, curve = 0, 1, []

    def train(self, steps: int, deadline: float | None = None) -> None:
        self.step += steps

    def evaluate(self, split: str = "val") -> dict[str, float]:
        return {"accuracy": 0.5, "loss": 1.0}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def trivial_jobs(n: int) -> list[Job]:
    space, rng, task = ml.get_space("hparams"), np.random.default_rng(0), TrivialTask()
    return [Job(candidate=space.candidate(space.sample(rng)), steps=1, seed=0, task=task,
                proposal=i) for i in range(n)]


def per_job(executor: Executor, jobs: list[Job], in_flight: int, repeats: int = 3) -> float:
    """Seconds per job with at most ``in_flight`` submitted: the best of ``repeats`` rounds,
    after a warm-up round (workers started, imports and caches done)."""
    times = []
    for _ in range(repeats + 1):
        start, pending, done = time.perf_counter(), list(jobs), 0
        while done < len(jobs):
            while pending and executor.in_flight < in_flight:
                executor.submit(pending.pop())
            done += len(executor.wait())
        times.append((time.perf_counter() - start) / len(jobs))
    return min(times[1:])


def overhead(n: int, workers: int, names: list[str], job_timeout: float | None) -> None:
    jobs = trivial_jobs(n)
    torch.set_num_threads(1)
    inline = per_job(make_executor("inline", Evaluator("cpu", job_timeout=job_timeout)), jobs, 1)
    print(f"\n== scheduling overhead per job, trivial task, {n} jobs, job_timeout={job_timeout}")
    print(f"{'executor':<10}{'in flight':>10}{'ms/job':>10}{'overhead ms':>13}{'x inline':>10}")
    print(f"{'inline':<10}{1:>10}{1e3 * inline:>10.2f}{0:>13.2f}{1:>10.1f}   (baseline)")
    for name in names:
        executor = make_executor(name, Evaluator("cpu", job_timeout=job_timeout), workers=workers)
        try:
            for in_flight in (1, workers):
                seconds = per_job(executor, jobs, in_flight)
                print(f"{name:<10}{in_flight:>10}{1e3 * seconds:>10.2f}"
                      f"{1e3 * (seconds - inline):>13.2f}{seconds / inline:>10.1f}")
        finally:
            executor.close()


def utilisation(workers: int, names: list[str], budget: int, steps: int) -> None:
    print(f"\n== worker utilisation: evolution on mnist1d-mlp, {workers} workers, budget {budget}, "
          f"{steps} steps a job")
    print(f"{'executor':<10}{'wall s':>9}{'busy s':>9}{'whole run':>11}{'jobs span':>11}")
    for name in names:
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            ml.search(space="hparams", strategy="evolution", task="mnist1d-mlp", budget=budget,
                      steps=steps, seed=0, run=Path(folder) / "R", executor=name, device="cpu",
                      executor_options={"workers": workers}, progress=False,
                      strategy_options={"population_size": 8, "tournament_size": 3})
            wall = time.perf_counter() - start
            db = sqlite3.connect(Path(folder) / "R" / "ledger.db")
            rows = db.execute("SELECT created, wall_s FROM evaluations WHERE cached = 0").fetchall()
            db.close()
        busy = sum(w for _, w in rows)
        # from the first job's start to the last result: what is left once workers are up
        span = max(c for c, _ in rows) - min(c - w for c, w in rows)
        print(f"{name:<10}{wall:>9.1f}{busy:>9.1f}{busy / (workers * wall):>11.0%}"
              f"{busy / (workers * span):>11.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--executors", default="pool,ray")
    parser.add_argument("--budget", type=int, default=32)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--skip-utilisation", action="store_true")
    args = parser.parse_args()
    names = args.executors.split(",")
    overhead(args.jobs, args.workers, names, job_timeout=None)
    overhead(args.jobs, args.workers, names, job_timeout=60.0)
    if not args.skip_utilisation:
        utilisation(args.workers, names, args.budget, args.steps)


if __name__ == "__main__":
    # run as the module ``executor_overhead``, not ``__main__``: workers then import
    # TrivialTask by reference, as they import a real task, instead of unpickling its code
    here = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    sys.path.insert(0, here)
    import executor_overhead

    executor_overhead.main()
