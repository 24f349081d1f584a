"""CUDA out-of-memory: recorded as ``oom``, and the device is freed for the next job.

No GPU is needed: the scripted task raises ``torch.cuda.OutOfMemoryError`` itself,
and ``torch.cuda.empty_cache`` is replaced by a probe that checks whether the
failed job's training state was already released when the cache was emptied.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import pytest
import torch
from test_executors_support import (
    ScriptedState,
    ScriptedTask,
    expected_fitness,
    hparams_jobs,
    starts,
)

from metalearn.evaluator import Evaluator, Status


def test_out_of_memory_is_oom_and_the_state_is_freed_before_the_cache_is_emptied(
        monkeypatch: pytest.MonkeyPatch) -> None:
    states: list[weakref.ref[ScriptedState]] = []
    original = ScriptedTask.start

    def start(self: ScriptedTask, *args: object, **kwargs: object) -> ScriptedState:
        state = original(self, *args, **kwargs)  # type: ignore[arg-type]
        states.append(weakref.ref(state))
        return state

    emptied: list[bool] = []  # at each call: was the failed job's state already gone?
    monkeypatch.setattr(ScriptedTask, "start", start)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(states[0]() is None))

    evaluator = Evaluator("cpu")
    failed = evaluator.evaluate(hparams_jobs(ScriptedTask(oom=True), [0.01])[0])
    assert failed.status is Status.OOM and failed.fitness is None
    assert "OutOfMemoryError" in failed.error and "2.00 GiB" in failed.error
    assert emptied == [True], "the cache must be emptied once, after the job's tensors are released"

    after = evaluator.evaluate(hparams_jobs(ScriptedTask(), [0.01])[0])
    assert after.status is Status.OK
    assert after.fitness == expected_fitness(after.job.candidate.text)


def test_pool_worker_survives_out_of_memory_and_serves_the_next_job(tmp_path: Path) -> None:
    from metalearn.pool_executor import PoolExecutor

    pool = PoolExecutor(Evaluator("cpu"), workers=1)
    try:
        first, second = (hparams_jobs(ScriptedTask(oom=True, marks=str(tmp_path)), [0.01])
                         + hparams_jobs(ScriptedTask(marks=str(tmp_path)), [0.02], first=1))
        pool.submit(first)
        pool.submit(second)
        results = pool.wait() + pool.wait()
    finally:
        pool.close()
    assert [(r.job.proposal, r.status) for r in results] == [(0, Status.OOM), (1, Status.OK)]
    assert results[1].fitness == expected_fitness(second.candidate.text)
    pids = starts(tmp_path)
    assert len({pid for attempts in pids.values() for pid in attempts}) == 1, pids
