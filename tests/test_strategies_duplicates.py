"""Duplicate control: a repeated job is answered from the ledger and not charged to the budget.

On a space of four rules with a budget of four, every strategy must end with exactly
the four rules evaluated once each, however often it proposed them again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_strategies_support import SHORT, ledger_rows

from metalearn.search import search

STRATEGIES: dict[str, dict[str, Any]] = {
    "random": {},
    "evolution": {"population_size": 2, "tournament_size": 1},
    "backprop-evolution": {"top_n": 2},
    "controller": {"batch_size": 2},
    "tpe": {},
    "optuna:RandomSampler": {},
}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_repeats_are_answered_from_the_ledger_and_not_charged(tmp_path: Path, strategy: str) -> None:
    run = search(space="tiny-optimizer", strategy=strategy, task="synthetic-rule-match", budget=4,
                 run=tmp_path / "r", seed=1, strategy_options=STRATEGIES[strategy],
                 task_options=SHORT, progress=False)
    rows = ledger_rows(run.path)
    charged = [r for r in rows if not r["cached"]]
    cached = [r for r in rows if r["cached"]]
    assert len(charged) == 4, "the budget buys four evaluations"
    assert len({r["key"] for r in charged}) == 4, "of four different rules: none charged twice"
    assert {r["job_key"] for r in cached} <= {r["job_key"] for r in charged}
    for row in cached:  # a repeat carries the fitness of the evaluation it repeats
        first = next(r for r in charged if r["job_key"] == row["job_key"])
        assert (row["status"], row["fitness"]) == (first["status"], first["fitness"])
    if strategy == "random":
        assert cached, "random search repeats itself on four rules (seed 1 does)"
