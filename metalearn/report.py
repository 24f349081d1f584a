"""Text reports of runs: the leaderboard and status summary of ``metalearn show``.

Reads the ledger with ``sqlite3`` alone (no torch, no pandas), so showing a run
of 100,000 evaluations takes a fraction of a second.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from .errors import UserError

STATUS_MEANING = {
    "ok": "trained and evaluated",
    "diverged": "NaN/Inf loss or parameters",
    "invalid": "cannot be built for this model",
    "error": "exception in candidate code",
    "timeout": "ran past its time limit",
    "oom": "out of device memory",
}


def _open(run: str | Path) -> sqlite3.Connection:
    db = Path(run) / "ledger.db"
    if not db.exists():
        raise UserError(f"no run at {run}: expected a ledger file {db}")
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def show(run: str | Path, top: int = 10, width: int = 100) -> str:
    """The run's options, status counts, leaderboard and failure reasons, as text."""
    db = _open(run)
    try:
        options = {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM run")}
        counts = dict(db.execute(
            "SELECT status, COUNT(*) FROM evaluations WHERE cached = 0 GROUP BY status"))
        cached = db.execute("SELECT COUNT(*) FROM evaluations WHERE cached = 1").fetchone()[0]
        best = db.execute(
            "SELECT fitness, steps, seed, wall_s, name, candidate FROM evaluations "
            "WHERE status = 'ok' AND cached = 0 ORDER BY fitness DESC, id ASC LIMIT ?", (top,)
        ).fetchall()
        failures = db.execute(
            "SELECT status, COUNT(*), MIN(error) FROM evaluations "
            "WHERE status != 'ok' AND cached = 0 GROUP BY status ORDER BY status").fetchall()
    finally:
        db.close()
    done = sum(counts.values())
    lines = [f"run {run}"]
    for key in ("space", "strategy", "task", "seed", "steps", "budget"):
        if key in options:
            lines.append(f"  {key:<9}{options[key]}")
    lines.append(f"  evaluations {done}" + (f" (+{cached} answered from the ledger)" if cached else ""))
    lines.append("  statuses  " + ", ".join(f"{s} {n}" for s, n in sorted(counts.items())))
    lines.append("")
    lines.append(f"{'rank':>4}  {'fitness':>8}  {'steps':>6}  {'seed':>4}  {'wall_s':>7}  candidate")
    for rank, (fitness, steps, seed, wall, name, text) in enumerate(best, 1):
        label = f"{name}: {text}" if name else text
        lines.append(f"{rank:>4}  {fitness:>8.4f}  {steps:>6}  {seed:>4}  {wall:>7.2f}  "
                     f"{_short(label, width)}")
    if not best:
        lines.append("   (no successful evaluation yet)")
    if failures:
        lines.append("")
        lines.append("failures")
        for status, n, error in failures:
            meaning = STATUS_MEANING.get(status, "")
            lines.append(f"  {status:<9}{n:>6}  ({meaning}) e.g. {_short(error or '', width)}")
    return "\n".join(lines)
