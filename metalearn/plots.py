"""The comparison's figures, drawn with matplotlib's Agg backend (no display needed).

Every figure is saved with the data it shows beside it (``NAME.png`` and
``NAME.json``), so the numbers behind a picture can be checked, re-plotted or
quoted without reading pixels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: one colour per series, in order (matplotlib's tab10, readable on white)
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf")
BASELINE_COLOR = "#555555"


def search_series(frame: pd.DataFrame) -> pd.DataFrame:
    """A run's evaluations in order, with best-so-far fitness and cumulative wall time.

    ``frame`` is ``Run.to_pandas()`` (uncached rows, in tell order). Failed
    evaluations have no fitness; best-so-far is NaN until the first success.
    """
    frame = frame.sort_values("id", kind="stable")
    fitness = frame["fitness"].where(frame["status"] == "ok").astype(float)
    return pd.DataFrame({
        "evaluation": np.arange(1, len(frame) + 1),
        "wall_s": frame["wall_s"].fillna(0.0).astype(float).cumsum().to_numpy(),
        "fitness": fitness.to_numpy(),
        "best_so_far": fitness.cummax().to_numpy(),
        "status": frame["status"].to_numpy(),
    })


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _finite(values: Sequence[float]) -> list[float | None]:
    return [float(v) if v is not None and math.isfinite(float(v)) else None for v in values]


def _save(fig: Any, path: Path, data: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    path.with_suffix(".json").write_text(json.dumps(data, indent=1))
    return path


def best_so_far_plot(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path,
                     xlabel: str, title: str, baseline: float | None = None,
                     points: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None
                     ) -> Path:
    """A step line of best-so-far validation accuracy per space; writes ``path`` and its JSON.

    ``points`` (optional, per label) are every evaluation's own fitness, drawn faintly.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for i, (label, (x, y)) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        if points and label in points:
            ax.scatter(*points[label], color=color, alpha=0.25, s=12, linewidths=0)
        ax.step(x, y, where="post", label=label, color=color, linewidth=2)
    if baseline is not None and math.isfinite(baseline):
        ax.axhline(baseline, color=BASELINE_COLOR, linestyle="--", linewidth=1,
                   label="default recipe, same steps")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    data = {"title": title, "x_label": xlabel, "y_label": "best validation accuracy so far",
            "baseline": baseline,
            "series": {label: {"x": _finite(x), "y": _finite(y)} for label, (x, y) in series.items()},
            "points": {label: {"x": _finite(x), "y": _finite(y)}
                       for label, (x, y) in (points or {}).items()}}
    try:
        return _save(fig, Path(path), data)
    finally:
        plt.close(fig)


def accuracy_spread_plot(groups: Mapping[str, Sequence[float]], path: str | Path, title: str,
                       baseline_label: str | None = "baseline") -> Path:
    """Final test accuracy per space: every seed as a dot, the mean with a +-1 std bar."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    data: dict[str, Any] = {"title": title, "y_label": "test accuracy", "groups": {}}
    for i, (label, values) in enumerate(groups.items()):
        color = BASELINE_COLOR if label == baseline_label else COLORS[i % len(COLORS)]
        values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        mean = float(np.mean(values)) if values else math.nan
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        if values:
            jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(1)
            ax.scatter(i + jitter, values, color=color, alpha=0.6, s=22, zorder=3)
            ax.errorbar([i], [mean], yerr=[std], fmt="_", color=color, markersize=26,
                        capsize=8, elinewidth=2, markeredgewidth=3, zorder=4)
        data["groups"][label] = {"values": values, "mean": mean if values else None,
                                 "std": std if values else None}
    ax.set_xticks(range(len(groups)), list(groups), rotation=0)
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    try:
        return _save(fig, Path(path), data)
    finally:
        plt.close(fig)
