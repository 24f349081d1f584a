"""The ledger: every proposal and evaluation of a run, in one SQLite database.

``runs/NAME/ledger.db`` is written through the standard library's ``sqlite3`` in
WAL mode by the driver alone. Three tables:

- ``run``: the command and options the run was made with (key/value JSON);
- ``proposals``: every job a strategy proposed, with the number of evaluations it
  had been told before (``told_before``), written when it is asked;
- ``evaluations``: one row per result, in the order the strategy was told.

Those two orders are all a resume needs: a fresh strategy replays the asks and
tells exactly as they happened, so its state is rebuilt without pickling, and the
proposals without a result are the jobs that were in flight. Checkpoints live
beside the database in ``runs/NAME/checkpoints/``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .candidate import Candidate
from .evaluator import Evaluation, Job, Status
from .tasks.base import Task

SCHEMA = """
CREATE TABLE IF NOT EXISTS run (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS proposals (
    proposal INTEGER PRIMARY KEY, job_key TEXT NOT NULL, told_before INTEGER NOT NULL,
    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    proposal INTEGER, job_key TEXT NOT NULL,
    candidate TEXT NOT NULL, name TEXT, key TEXT NOT NULL, space TEXT NOT NULL,
    task TEXT, task_config TEXT, steps INTEGER, total_steps INTEGER, seed INTEGER,
    status TEXT NOT NULL, fitness REAL, metrics TEXT, curve TEXT,
    resume_from TEXT, checkpoint INTEGER, parent TEXT, rung INTEGER, member INTEGER,
    device TEXT, wall_s REAL, error TEXT, cached INTEGER NOT NULL DEFAULT 0, created REAL);
CREATE INDEX IF NOT EXISTS evaluations_job_key ON evaluations (job_key);
CREATE INDEX IF NOT EXISTS evaluations_fitness ON evaluations (fitness);
"""

COLUMNS = ("id", "proposal", "job_key", "candidate", "name", "key", "space", "task",
           "task_config", "steps", "total_steps", "seed", "status", "fitness", "metrics",
           "curve", "resume_from", "checkpoint", "parent", "rung", "member", "device",
           "wall_s", "error", "cached", "created")

#: statuses that a repeated identical job would meet again (the others may be passing faults)
REPEATABLE = (Status.OK, Status.DIVERGED, Status.INVALID, Status.ERROR)


@dataclass(frozen=True)
class Proposal:
    proposal: int
    job_key: str
    told_before: int


class Ledger:
    """The run's database; one writer (the search driver), any number of readers."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly:
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- the run's options
    def options(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM run")}

    def set_options(self, options: Mapping[str, Any]) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO run (key, value) VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in options.items()])

    # -- writing
    def add_proposal(self, job: Job, told_before: int) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO proposals (proposal, job_key, told_before, created) "
                "VALUES (?, ?, ?, ?)", (job.proposal, job.key, told_before, time.time()))

    def record(self, evaluations: list[Evaluation]) -> None:
        """Append results in the order the strategy is told them (one transaction)."""
        rows = [_row(e) for e in evaluations]
        with self.db:
            cursor = self.db.executemany(
                f"INSERT INTO evaluations ({', '.join(COLUMNS[1:])}) "
                f"VALUES ({', '.join('?' * (len(COLUMNS) - 1))})", rows)
        last = cursor.lastrowid or 0
        for offset, evaluation in enumerate(reversed(evaluations)):
            evaluation.id = last - offset

    # -- reading
    def proposals(self) -> list[Proposal]:
        return [Proposal(*row) for row in self.db.execute(
            "SELECT proposal, job_key, told_before FROM proposals ORDER BY proposal")]

    def rows(self, where: str = "", params: tuple[Any, ...] = ()) -> Iterator[dict[str, Any]]:
        query = f"SELECT {', '.join(COLUMNS)} FROM evaluations {where}"
        for row in self.db.execute(query, params):
            yield dict(zip(COLUMNS, row))

    def evaluations(self, task: Task | None = None) -> list[Evaluation]:
        """Every evaluation, in tell order, as objects (``task`` is attached to their jobs)."""
        return [evaluation_from_row(r, task) for r in self.rows("ORDER BY id")]

    def lookup(self, job_key: str) -> dict[str, Any] | None:
        """An earlier uncached result of the same job whose outcome would repeat."""
        statuses = ", ".join(f"'{s.value}'" for s in REPEATABLE)
        found = list(self.rows(f"WHERE job_key = ? AND cached = 0 AND status IN ({statuses}) "
                               "ORDER BY id LIMIT 1", (job_key,)))
        return found[0] if found else None

    def count(self, cached: bool | None = False) -> int:
        if cached is None:
            return int(self.db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0])
        return int(self.db.execute("SELECT COUNT(*) FROM evaluations WHERE cached = ?",
                                   (int(cached),)).fetchone()[0])

    def status_counts(self) -> dict[str, int]:
        return dict(self.db.execute(
            "SELECT status, COUNT(*) FROM evaluations WHERE cached = 0 GROUP BY status"))

    def best_rows(self, k: int) -> list[dict[str, Any]]:
        return list(self.rows("WHERE status = 'ok' AND cached = 0 "
                              "ORDER BY fitness DESC, id ASC LIMIT ?", (k,)))


def _row(e: Evaluation) -> tuple[Any, ...]:
    job, task = e.job, e.job.task
    return (
        job.proposal, job.key, job.candidate.text, job.candidate.name, job.candidate.key,
        job.candidate.space, task.name if task else None, task.config_json() if task else None,
        job.steps, job.total_steps, job.seed, e.status.value, e.fitness,
        json.dumps(e.metrics), json.dumps(e.curve), job.resume_from, int(job.checkpoint),
        job.parent, job.rung, job.member, e.device, e.wall_s, e.error, int(e.cached), time.time(),
    )


def evaluation_from_row(row: Mapping[str, Any], task: Task | None = None) -> Evaluation:
    candidate = Candidate(space=row["space"], text=row["candidate"], key=row["key"],
                          name=row["name"] or "")
    job = Job(candidate=candidate, steps=row["steps"], seed=row["seed"], task=task,
              total_steps=row["total_steps"], resume_from=row["resume_from"],
              checkpoint=bool(row["checkpoint"]), parent=row["parent"], rung=row["rung"],
              member=row["member"], proposal=row["proposal"] if row["proposal"] is not None else -1)
    return Evaluation(
        job=job, status=Status(row["status"]), fitness=row["fitness"],
        metrics=json.loads(row["metrics"] or "{}"),
        curve=[tuple(p) for p in json.loads(row["curve"] or "[]")],  # type: ignore[misc]
        wall_s=row["wall_s"] or 0.0, device=row["device"] or "", error=row["error"] or "",
        cached=bool(row["cached"]), id=row["id"])
