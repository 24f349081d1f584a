"""The ``pool`` executor: same results as inline, stuck jobs stopped, dead workers cost one job."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from test_executors_support import (
    ScriptedTask,
    assert_complete,
    expected_fitness,
    hparams_jobs,
    ledger,
    one_torch_thread,
    starts,
)

from metalearn.errors import UserError
from metalearn.evaluator import Evaluator, Status
from metalearn.executors import make_executor
from metalearn.pool_executor import PoolExecutor, worker_devices
from metalearn.search import search
from metalearn.tasks import TASKS


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TASKS, "scripted", ScriptedTask())


def test_pool_search_gives_the_inline_candidates_and_fitnesses(tmp_path: Path) -> None:
    common = dict(space="hparams", strategy="random", task="mnist1d-mlp", budget=4, steps=30,
                  seed=3, device="cpu", progress=False)
    with one_torch_thread():
        search(run=tmp_path / "inline", **common)  # type: ignore[arg-type]
    search(run=tmp_path / "pool", executor="pool", executor_options={"workers": 2},
              **common)  # type: ignore[arg-type]
    inline = {r[0]: r[1:4] for r in assert_complete(tmp_path / "inline", 4)}
    pool = {r[0]: r[1:4] for r in assert_complete(tmp_path / "pool", 4)}
    assert pool == inline  # proposal -> (candidate, status, fitness), to the last bit
    assert len({fitness for _, _, fitness in inline.values()}) > 1  # the jobs really differ


def test_pool_worker_killed_mid_job_costs_only_that_job_which_is_run_again(
        tmp_path: Path, scripted: None) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    search(space="hparams", strategy="random", task="scripted", budget=4, run=tmp_path / "R",
              executor="pool", executor_options={"workers": 2}, device="cpu", progress=False,
              task_options={"die": "once", "step_s": 0.05, "marks": str(marks)})
    rows = assert_complete(tmp_path / "R", 4)
    assert [status for _, _, status, _, _ in rows] == ["ok"] * 4
    assert all(fitness == expected_fitness(text) for _, text, _, fitness, _ in rows)
    attempts = sorted(len(set(pids)) for pids in starts(marks).values())
    assert attempts == [1, 1, 1, 2], "exactly one job ran twice, in two different processes"


@pytest.mark.slow
def test_pool_job_whose_worker_dies_twice_is_recorded_as_error(tmp_path: Path,
                                                                scripted: None) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    search(space="hparams", strategy="random", task="scripted", budget=1, run=tmp_path / "R",
              executor="pool", executor_options={"workers": 2}, device="cpu", progress=False,
              task_options={"die": "always", "marks": str(marks)})
    [(_, _, status, fitness, error)] = ledger(tmp_path / "R")
    assert (status, fitness) == ("error", None)
    assert "died (signal SIGKILL)" in error and "tried 2 times" in error
    [pids] = starts(marks).values()
    assert len(set(pids)) == 2


def test_pool_kills_a_job_stuck_inside_one_step_and_the_next_job_runs(tmp_path: Path) -> None:
    stuck = ScriptedTask(stuck_s=120.0, marks=str(tmp_path))
    fine = ScriptedTask(step_s=0.05, marks=str(tmp_path))
    jobs = hparams_jobs(stuck, [0.01]) + hparams_jobs(fine, [0.02], first=1)
    pool = PoolExecutor(Evaluator("cpu", job_timeout=1.0), workers=1, grace=0.5)
    try:
        for job in jobs:
            pool.submit(job)
        start = time.monotonic()
        results = pool.wait() + pool.wait()
        elapsed = time.monotonic() - start
    finally:
        pool.close()
    assert [(r.job.proposal, r.status) for r in results] == [(0, Status.TIMEOUT), (1, Status.OK)]
    assert 1.5 <= results[0].wall_s < 5.0 and "stopped from the outside" in results[0].error
    assert results[1].fitness == expected_fitness(jobs[1].candidate.text)
    assert elapsed < 60, "the stuck job must not be waited for"
    pids = starts(tmp_path)
    assert len({pid for attempts in pids.values() for pid in attempts}) == 2  # a fresh worker


def test_pool_assigns_workers_to_gpus_in_turn_and_rejects_cluster_options() -> None:
    assert worker_devices("cpu", 3) == ["cpu", "cpu", "cpu"]
    assert worker_devices("cuda:1", 2) == ["cuda:1", "cuda:1"]
    with pytest.raises(UserError, match="workers must be a whole number"):
        worker_devices("cpu", 0)
    with pytest.raises(UserError, match="--address is for --executor ray"):
        make_executor("pool", Evaluator("cpu"), address="head:6379")


@pytest.mark.gpu
def test_pool_pins_one_worker_per_gpu() -> None:
    import torch

    count = torch.cuda.device_count()
    assert worker_devices("cuda") == [f"cuda:{i}" for i in range(count)]
    assert worker_devices("cuda", 2 * count)[count:] == [f"cuda:{i}" for i in range(count)]


class _DriverCrash(Exception):
    pass


@pytest.mark.slow
def test_asynchronous_evolution_on_the_pool_resumes_after_a_driver_crash(
        tmp_path: Path, scripted: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from metalearn.ledger import Ledger

    record = Ledger.record
    recorded: list[Any] = []

    def crash_after_five(self: Ledger, evaluations: list[Any]) -> None:
        if len(recorded) == 5:
            raise _DriverCrash  # the driver dies with jobs in flight
        recorded.extend(evaluations)
        record(self, evaluations)

    options: dict[str, Any] = dict(
        space="hparams", strategy="evolution", task="scripted", budget=12, run=tmp_path / "R",
        executor="pool", executor_options={"workers": 2}, device="cpu", progress=False,
        strategy_options={"population_size": 4, "tournament_size": 2},
        task_options={"step_s": 0.05})
    monkeypatch.setattr(Ledger, "record", crash_after_five)
    with pytest.raises(_DriverCrash):
        search(**options)
    monkeypatch.setattr(Ledger, "record", record)
    assert len(ledger(tmp_path / "R")) == 5
    db = sqlite3.connect(tmp_path / "R" / "ledger.db")
    asked = db.execute("SELECT COUNT(*) FROM proposals").fetchone()[0]
    db.close()
    assert asked >= 6, "jobs were in flight when the driver died; the resume must run them"
    search(**options)  # replays the asks and tells in their recorded order, then goes on
    rows = assert_complete(tmp_path / "R", 12)
    assert all(fitness == expected_fitness(text) for _, text, _, fitness, _ in rows)
