"""The time limit in the inline executor: checked between training steps."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_executors_support import ScriptedTask, assert_complete

from metalearn.search import search
from metalearn.tasks import TASKS


def test_inline_job_that_sleeps_past_its_limit_is_timeout(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TASKS, "scripted", ScriptedTask())
    search(space="hparams", strategy="random", task="scripted", budget=1, run=tmp_path / "R",
              steps=100, job_timeout=0.5, device="cpu", progress=False,
              task_options={"step_s": 0.2})
    [(_, _, status, fitness, error)] = assert_complete(tmp_path / "R", 1)
    assert (status, fitness) == ("timeout", None)
    step = int(error.rsplit(" ", 1)[1])  # "JobTimeout: job passed its time limit at step N"
    assert error.startswith("JobTimeout") and 3 <= step <= 6, error  # 0.5 s of 0.2 s steps, not 100
