"""SIGKILL of the driver during a Ray search; the same command then finishes the run."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_cli
from test_executors_support import assert_complete, one_torch_thread

from metalearn.search import search

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

BUDGET = 8


def results_in(run: Path) -> int:
    try:
        db = sqlite3.connect(f"file:{run / 'ledger.db'}?mode=ro", uri=True)
        try:
            return int(db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return 0  # not created yet


@pytest.mark.slow
def test_driver_killed_mid_search_resumes_on_ray_with_exactly_the_budget(tmp_path: Path) -> None:
    run = tmp_path / "R"
    args = ["search", "--space", "hparams", "--strategy", "random", "--task", "mnist1d-mlp",
            "--steps", "300", "--budget", str(BUDGET), "--seed", "5", "--run", str(run),
            "--executor", "ray", "--workers", "2", "--device", "cpu", "--no-progress"]
    with open(tmp_path / "first.log", "w") as log:
        driver = subprocess.Popen([sys.executable, "-m", "metalearn.cli", *args], cwd=ROOT,
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        give_up = time.monotonic() + 300
        while results_in(run) < 2 and driver.poll() is None and time.monotonic() < give_up:
            time.sleep(0.1)
        ray_processes = psutil.Process(driver.pid).children(recursive=True)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        killed_at = results_in(run)
    finally:
        if driver.poll() is None:
            driver.kill()
    # the cluster the driver started dies with it; its agents may linger: end those we started
    _, alive = psutil.wait_procs(ray_processes, timeout=10)
    for process in alive:
        os.kill(process.pid, signal.SIGKILL)
    assert 2 <= killed_at < BUDGET, (killed_at, (tmp_path / "first.log").read_text()[-2000:])

    run_cli(*args, check=True)
    rows = assert_complete(run, BUDGET)
    assert [status for _, _, status, _, _ in rows] == ["ok"] * BUDGET
    db = sqlite3.connect(run / "ledger.db")
    try:
        proposals = [p for (p,) in db.execute("SELECT proposal FROM proposals ORDER BY proposal")]
    finally:
        db.close()
    assert proposals == list(range(BUDGET)), "the resumed run proposes no job twice"

    with one_torch_thread():  # and the results are those of a run that was never interrupted
        search(space="hparams", strategy="random", task="mnist1d-mlp", steps=300,
                  budget=BUDGET, seed=5, run=tmp_path / "inline", device="cpu", progress=False)
    inline = {r[0]: r[1:4] for r in assert_complete(tmp_path / "inline", BUDGET)}
    assert {r[0]: r[1:4] for r in rows} == inline
