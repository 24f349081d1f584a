"""Every strategy's state is rebuilt from the ledger: resumed runs propose what uninterrupted ones do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import metalearn as ml

CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("loss", "random", {}),
    ("hparams", "evolution", {"population_size": 4, "tournament_size": 2}),
    ("loss", "cmaes", {"population_size": 4}),
    ("hparams+loss", "evolution", {"population_size": 3, "tournament_size": 2}),
]


def keys(run: ml.Run) -> list[tuple[int, str, float | None]]:
    frame = run.to_pandas(include_cached=True)
    return list(zip(frame["proposal"], frame["job_key"], frame["fitness"]))


@pytest.mark.parametrize("space,strategy,options", CASES)
def test_resumed_run_proposes_the_same_candidates(tmp_path: Path, space: str, strategy: str,
                                                 options: dict[str, Any]) -> None:
    common = dict(space=space, strategy=strategy, task="mnist1d-mlp", steps=20, seed=3,
                  strategy_options=options, progress=False)
    ml.search(budget=5, run=tmp_path / "resumed", **common)  # type: ignore[arg-type]
    resumed = ml.search(budget=11, run=tmp_path / "resumed", **common)  # type: ignore[arg-type]
    whole = ml.search(budget=11, run=tmp_path / "whole", **common)  # type: ignore[arg-type]
    assert len(resumed) == 11
    assert keys(resumed) == keys(whole)
    assert len({k for _, k, _ in keys(whole)}) > 5, "proposals should differ from one another"


def test_duplicate_proposals_are_answered_from_the_ledger_and_not_charged(tmp_path: Path) -> None:
    run = ml.search(space="loss", strategy="evolution", task="mnist1d-mlp", budget=3, steps=20,
                    init=["cross_entropy_taylor", "cross_entropy_taylor"],
                    strategy_options={"population_size": 3, "tournament_size": 2},
                    run=tmp_path / "dup", progress=False)
    frame = run.to_pandas(include_cached=True)
    assert len(run) == 3 and len(frame) == 4
    first, repeat = frame.iloc[0], frame.iloc[1]
    assert repeat["cached"] and not first["cached"]
    assert repeat["job_key"] == first["job_key"] and repeat["fitness"] == first["fitness"]
