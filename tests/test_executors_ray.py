"""The ``ray`` executor on a real local Ray cluster of 2 CPUs.

Same results as inline, a killed worker costs one re-run, a job stuck inside one
step is cancelled as ``timeout``, a job whose worker always dies is an ``error``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_executors_support import (
    TESTS,
    ScriptedTask,
    assert_complete,
    expected_fitness,
    ledger,
    one_torch_thread,
    starts,
)

from metalearn.search import search
from metalearn.tasks import TASKS

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """One local cluster for the module; its workers import the scripted task from tests/."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), before) if p)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = before
    yield
    ray.shutdown()


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TASKS, "scripted", ScriptedTask())


def test_ray_search_gives_the_inline_candidates_and_fitnesses(tmp_path: Path, cluster: None) -> None:
    common = dict(space="hparams", strategy="random", task="mnist1d-mlp", budget=4, steps=30,
                  seed=3, device="cpu", progress=False)
    with one_torch_thread():
        search(run=tmp_path / "inline", **common)  # type: ignore[arg-type]
    search(run=tmp_path / "ray", executor="ray", **common)  # type: ignore[arg-type]
    inline = {r[0]: r[1:4] for r in assert_complete(tmp_path / "inline", 4)}
    on_ray = {r[0]: r[1:4] for r in assert_complete(tmp_path / "ray", 4)}
    assert on_ray == inline  # proposal -> (candidate, status, fitness), to the last bit
    assert len({fitness for _, _, fitness in inline.values()}) > 1


def test_ray_worker_killed_mid_job_costs_only_that_job_which_is_run_again(
        tmp_path: Path, cluster: None, scripted: None) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    search(space="hparams", strategy="random", task="scripted", budget=4, run=tmp_path / "R",
              executor="ray", device="cpu", progress=False,
              task_options={"die": "once", "step_s": 0.05, "marks": str(marks)})
    rows = assert_complete(tmp_path / "R", 4)
    assert [status for _, _, status, _, _ in rows] == ["ok"] * 4
    assert all(fitness == expected_fitness(text) for _, text, _, fitness, _ in rows)
    attempts = sorted(len(set(pids)) for pids in starts(marks).values())
    assert attempts == [1, 1, 1, 2], "exactly one job ran twice, in two different processes"


@pytest.mark.slow
def test_ray_job_whose_worker_dies_twice_is_recorded_as_error(tmp_path: Path, cluster: None,
                                                              scripted: None) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    search(space="hparams", strategy="random", task="scripted", budget=1, run=tmp_path / "R",
              executor="ray", device="cpu", progress=False,
              task_options={"die": "always", "marks": str(marks)})
    [(_, _, status, fitness, error)] = ledger(tmp_path / "R")
    assert (status, fitness) == ("error", None)
    assert "WorkerCrashedError" in error and "tried 2 times" in error
    [pids] = starts(marks).values()
    assert len(set(pids)) == 2


@pytest.mark.slow
def test_ray_cancels_a_job_stuck_inside_one_step_as_timeout(tmp_path: Path, cluster: None,
                                                            scripted: None) -> None:
    start = time.monotonic()
    search(space="hparams", strategy="random", task="scripted", budget=2, run=tmp_path / "R",
              executor="ray", executor_options={"grace": 0.5}, job_timeout=1.0, device="cpu",
              progress=False, task_options={"stuck_s": 120.0})
    elapsed = time.monotonic() - start
    rows = assert_complete(tmp_path / "R", 2)
    assert [(status, fitness) for _, _, status, fitness, _ in rows] == [("timeout", None)] * 2
    assert all("stopped from the outside" in error for *_, error in rows)
    assert elapsed < 60, "the stuck jobs must not be waited for"
