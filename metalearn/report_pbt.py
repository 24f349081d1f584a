"""Schedules of population-based training: each member's hyperparameters and loss over training.

PBT and EPBT record every interval of every member as one evaluation with its
``member``, its ``parent`` (the job key whose checkpoint it continued) and its
``rung`` (the interval's index). :func:`schedule` turns those rows into a table,
one row per interval, with the candidate's coordinates in natural units (``lr``
rather than ``log10_lr``); ``lineage=True`` follows each member's final weights
back through the parents instead, which is the schedule those weights were
actually trained with (exploitation copies another member's history).
:func:`plot_schedule` draws it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import UserError
from .strategies.pbt import is_log_coordinate, natural_name

#: the columns before the candidate's values
BASE_COLUMNS = ("member", "interval", "start", "step", "status", "fitness", "source", "slot",
                "job_key", "parent")


def _rows(run: str | Path) -> list[dict[str, Any]]:
    db_path = Path(run) / "ledger.db"
    if not db_path.exists():
        raise UserError(f"no run at {run}: expected a ledger file {db_path}")
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        cursor = db.execute(
            "SELECT id, job_key, member, parent, rung, steps, space, candidate, status, fitness "
            "FROM evaluations WHERE member IS NOT NULL ORDER BY id")
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row)) for row in cursor]
    finally:
        db.close()


def _values(space_name: str, text: str, cache: dict[tuple[str, str], dict[str, float]]
            ) -> dict[str, float]:
    """The candidate's coordinates in natural units (``{"candidate": text}`` for other spaces)."""
    if (space_name, text) not in cache:
        from .registry import get_space
        from .searchspaces.base import is_continuous

        space = get_space(space_name)
        if not is_continuous(space):
            cache[space_name, text] = {}
        else:
            vector = space.to_vector(space.parse(text))  # type: ignore[attr-defined]
            cache[space_name, text] = {
                natural_name(n): float(10.0 ** v if is_log_coordinate(n) else v)
                for n, v in zip(space.names, vector)}  # type: ignore[attr-defined]
    return cache[space_name, text]


def schedule(run: str | Path, lineage: bool = False) -> pd.DataFrame:
    """One row per interval of each member: where it ran and the candidate it trained with.

    Columns: ``member``, ``interval`` (0-based), ``start`` and ``step`` (training
    steps at the interval's start and end), ``status``, ``fitness``, ``source``
    (the member whose checkpoint it continued; -1 from scratch), ``slot`` (the
    member that trained it: ``member`` itself, except in a lineage), ``job_key``,
    ``parent``, ``candidate``, then one column per coordinate in natural units
    (``hparams.lr``, ``loss.t3``, ...); those that came from ``log10_*``
    coordinates are listed in ``frame.attrs["log_columns"]``.
    """
    rows = _rows(run)
    end: dict[str, int] = {}
    member_of: dict[str, int] = {}
    by_key: dict[str, dict[str, Any]] = {}
    cache: dict[tuple[str, str], dict[str, float]] = {}
    counts: dict[int, int] = {}
    records: list[dict[str, Any]] = []
    for row in rows:
        parent = row["parent"]
        start = end.get(parent, 0) if parent else 0
        end.setdefault(row["job_key"], start + int(row["steps"] or 0))
        member = int(row["member"])
        counts[member] = counts.get(member, -1) + 1
        record = {"member": member,
                  "interval": int(row["rung"]) if row["rung"] is not None else counts[member],
                  "start": start, "step": start + int(row["steps"] or 0), "status": row["status"],
                  "fitness": row["fitness"] if row["fitness"] is not None else np.nan,
                  "source": member_of.get(parent, -1) if parent else -1, "slot": member,
                  "job_key": row["job_key"], "parent": parent, "candidate": row["candidate"],
                  **_values(row["space"], row["candidate"], cache)}
        member_of.setdefault(row["job_key"], record["member"])
        by_key.setdefault(row["job_key"], record)
        records.append(record)
    if lineage:
        records = _lineages(records, by_key)
    frame = pd.DataFrame.from_records(records, columns=_columns(records))
    frame.attrs["log_columns"] = sorted(
        {natural_name(n) for s, _ in cache for n in _space_names(s) if is_log_coordinate(n)})
    return frame


def _space_names(space_name: str) -> tuple[str, ...]:
    from .registry import get_space

    return tuple(getattr(get_space(space_name), "names", ()))


def _columns(records: list[dict[str, Any]]) -> list[str]:
    columns = [*BASE_COLUMNS, "candidate"]
    for record in records:
        columns += [k for k in record if k not in columns]
    return columns


def _lineages(records: list[dict[str, Any]], by_key: dict[str, dict[str, Any]]
              ) -> list[dict[str, Any]]:
    """For each member, the chain of intervals behind its last one, relabelled as that member."""
    last: dict[int, dict[str, Any]] = {}
    for record in records:
        last[record["member"]] = record
    chains = []
    for member in sorted(last):
        chain, record = [], last[member]
        while True:
            chain.append({**record, "member": member})
            parent = record["parent"]
            if not parent or parent not in by_key:
                break
            record = by_key[parent]
        chains.extend(reversed(chain))
    return chains


def value_columns(frame: pd.DataFrame) -> list[str]:
    """The candidate's coordinates among ``frame``'s columns."""
    return [c for c in frame.columns if c not in (*BASE_COLUMNS, "candidate")]


def plot_schedule(run: str | Path, path: str | Path, columns: list[str] | None = None,
                  lineage: bool = False) -> pd.DataFrame:
    """Draw each member's schedule (one panel per value, one line per member) into ``path``.

    Returns the table that was drawn (:func:`schedule`'s). A value is drawn from
    its interval's start to its end; fitness at the interval's end. By default the
    panels are the coordinates that vary, then fitness.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    frame = schedule(run, lineage=lineage)
    if frame.empty:
        raise UserError(f"run {run} has no population-based intervals to draw (strategy pbt or epbt)")
    varying = [c for c in value_columns(frame) if frame[c].nunique(dropna=False) > 1]
    panels = list(columns) if columns is not None else [*varying, "fitness"]
    unknown = [c for c in panels if c not in frame.columns]
    if unknown:
        raise UserError(f"no column(s) {unknown} in the schedule; columns are "
                        f"{', '.join(value_columns(frame))}, fitness")
    figure = Figure(figsize=(8, 1.5 * len(panels) + 0.8))
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for axis, column in zip(axes, panels):
        for member, series in frame.groupby("member", sort=True):
            if column == "fitness":  # measured at the end of each interval
                axis.plot(series["step"], series[column], marker=".", linewidth=1,
                          label=f"member {member}")
                continue
            # a value holds from its interval's start to its end (the last one drawn to the end)
            x = [*series["start"], series["step"].iloc[-1]]
            y = [*series[column], series[column].iloc[-1]]
            axis.plot(x, y, drawstyle="steps-post", linewidth=1, label=f"member {member}")
            axis.plot(series["start"], series[column], ".", color=axis.lines[-1].get_color())
        axis.set_ylabel(column, fontsize=8)
        if column in frame.attrs.get("log_columns", ()):
            axis.set_yscale("log")
    axes[-1].set_xlabel("training step")
    axes[0].legend(fontsize=6, ncol=4, loc="best")
    title = "lineage of each member's final weights" if lineage else "each member's schedule"
    figure.suptitle(f"{Path(run).name}: {title}", fontsize=9)
    figure.tight_layout()
    figure.savefig(str(path), dpi=100)
    return frame


def format_schedule(frame: pd.DataFrame, width: int = 100) -> str:
    """The schedule as text: per member, one line per interval."""
    if frame.empty:
        return "no population-based intervals in this run (strategy pbt or epbt)"
    values = value_columns(frame)
    lines = ["schedule: steps, validation accuracy, whose checkpoint it continued, candidate"]
    for member, series in frame.groupby("member", sort=True):
        lines.append(f"member {member}")
        for row in series.to_dict("records"):
            fitness = f"{row['fitness']:.4f}" if row["fitness"] == row["fitness"] else row["status"]
            source = "scratch" if row["source"] < 0 else f"member {row['source']}"
            label = (" ".join(f"{c.rpartition('.')[2]}={row[c]:.4g}" for c in values)
                     if values else row["candidate"])
            lines.append(f"  {row['start']:>7}-{row['step']:<7} {fitness:>8}  {source:<10} "
                         f"{label[:width]}")
    return "\n".join(lines)
