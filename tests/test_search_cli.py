"""The foundation's acceptance checks, run as a user runs them: through the command line."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, run_cli


def ledger_rows(run: Path) -> list[tuple[int, str, str, float | None]]:
    db = sqlite3.connect(run / "ledger.db")
    try:
        return db.execute("SELECT proposal, job_key, status, fitness FROM evaluations "
                          "WHERE cached = 0 ORDER BY proposal").fetchall()
    finally:
        db.close()


def test_cmaes_loss_search_finishes_records_and_does_not_repeat(tmp_path: Path) -> None:
    run = tmp_path / "R"
    start = time.monotonic()
    result = run_cli("search", "--space", "loss", "--strategy", "cmaes", "--task", "mnist1d-mlp",
                     "--budget", "20", "--run", str(run), check=True)
    elapsed = time.monotonic() - start
    assert elapsed < 180, f"took {elapsed:.0f} s"
    rows = ledger_rows(run)
    assert len(rows) == 20
    best = max(f for *_, f in rows if f is not None)
    assert best > 0.1 + 0.05, f"best validation accuracy {best} is not above chance"
    assert "rank" in result.stdout and f"{best:.4f}" in result.stdout  # the leaderboard

    again = run_cli("search", "--space", "loss", "--strategy", "cmaes", "--task", "mnist1d-mlp",
                    "--budget", "20", "--run", str(run), "--no-progress", check=True)
    assert ledger_rows(run) == rows, "running the same command again must add nothing"
    assert again.returncode == 0


def _search_args(run: Path, budget: int = 20) -> list[str]:
    return ["search", "--space", "loss", "--strategy", "cmaes", "--task", "mnist1d-mlp",
            "--budget", str(budget), "--steps", "300", "--run", str(run), "--no-progress"]


def test_sigkill_midway_then_same_command_gives_exactly_the_budget(tmp_path: Path) -> None:
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    process = subprocess.Popen([sys.executable, "-m", "metalearn.cli", *_search_args(killed)],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (killed / "ledger.db").exists():
            try:
                if len(ledger_rows(killed)) >= 7:
                    break
            except sqlite3.OperationalError:
                pass
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(ledger_rows(killed))
    assert 7 <= done_before < 20, "the kill must land midway"

    run_cli(*_search_args(killed), check=True)
    rows = ledger_rows(killed)
    assert [p for p, *_ in rows] == list(range(20)), "no evaluation lost, none duplicated"
    assert len({key for _, key, *_ in rows}) == 20

    # the resumed run is the uninterrupted run, fitness for fitness
    run_cli(*_search_args(whole), check=True)
    assert [(k, f) for _, k, _, f in ledger_rows(whole)] == [(k, f) for _, k, _, f in rows]


def test_same_command_same_seed_gives_identical_fitness(tmp_path: Path) -> None:
    run_cli(*_search_args(tmp_path / "a", budget=5), check=True)
    run_cli(*_search_args(tmp_path / "b", budget=5), check=True)
    a, b = ledger_rows(tmp_path / "a"), ledger_rows(tmp_path / "b")
    assert [f for *_, f in a] == [f for *_, f in b]
    assert len({f for *_, f in a}) > 1, "different candidates should score differently"


def test_user_mistakes_give_one_clear_line_and_no_trace(tmp_path: Path) -> None:
    cases = {
        ("--space", "nope"): "unknown space 'nope'; accepted: ",
        ("--task", "nope"): "unknown task 'nope'; accepted: ",
        ("--budget", "-3"): "expected a whole number >= 1, got '-3'",
        ("--strategy", "nope"): "unknown strategy 'nope'; accepted: ",
    }
    base = {"--space": "loss", "--strategy": "cmaes", "--task": "mnist1d-mlp", "--budget": "3",
            "--run": str(tmp_path / "x")}
    for (flag, value), message in cases.items():
        args = {**base, flag: value}
        result = run_cli("search", *[t for kv in args.items() for t in kv])
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert message in lines[0] and "Traceback" not in result.stderr
    assert "mnist1d-mlp" in run_cli("search", *[t for kv in {**base, "--task": "nope"}.items()
                                                for t in kv]).stderr
    missing = run_cli("show", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no run at" in missing.stderr


def test_resuming_with_other_options_is_refused(tmp_path: Path) -> None:
    run_cli(*_search_args(tmp_path / "r", budget=2), check=True)
    result = run_cli("search", "--space", "loss", "--strategy", "random", "--task", "mnist1d-mlp",
                     "--budget", "2", "--steps", "300", "--run", str(tmp_path / "r"))
    assert result.returncode == 2 and "strategy='cmaes'" in result.stderr
