"""Successive halving spends its evaluations and training steps as its rungs say (read from the ledger)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_strategies_support import drive, ledger_rows

import metalearn as ml
from metalearn.errors import UserError
from metalearn.evaluator import Evaluation, Status
from metalearn.search import search
from metalearn.strategies.halving import SuccessiveHalving

TASK = {"steps": 27, "dim": 16}


def test_rungs_grow_by_eta_up_to_the_longest_and_shrink_by_eta() -> None:
    space = ml.get_space("mini-optimizer")
    assert SuccessiveHalving(space, min_steps=100, eta=3, max_steps=2000).rungs() == [
        (100, 27), (300, 9), (900, 3), (2000, 1)]
    default = SuccessiveHalving(space)
    default.set_default_steps(2000)  # what the search does with the job length
    assert default.rungs() == [(223, 9), (669, 3), (2000, 1)]
    assert SuccessiveHalving(space, min_steps=10, eta=2, max_steps=40, candidates=10).rungs() == [
        (10, 10), (20, 5), (40, 2)]
    with pytest.raises(UserError, match="min_steps below"):
        SuccessiveHalving(space, min_steps=50, max_steps=50).rungs()
    with pytest.raises(UserError, match="eta"):
        SuccessiveHalving(space, eta=1)


def test_halving_spends_evaluations_and_steps_as_the_rungs_say(tmp_path: Path) -> None:
    run = search(space="mini-optimizer", strategy="halving:random", task="synthetic-rule-match",
                 budget=30, run=tmp_path / "r", seed=0, task_options=TASK, progress=False,
                 strategy_options={"min_steps": 3, "eta": 3}, init=["powersign"])
    rows = [r for r in ledger_rows(run.path) if not r["cached"]]
    bracket = [0] * 9 + [1] * 3 + [2]
    assert [r["rung"] for r in rows] == bracket + bracket + [0] * 4, "two brackets, then 4 of rung 0"
    assert all(r["steps"] == {0: 3, 1: 9, 2: 27}[r["rung"]] for r in rows)
    assert sum(r["steps"] for r in rows) == 2 * (9 * 3 + 3 * 9 + 1 * 27) + 4 * 3

    for start in (0, 13):
        rung0, rung1, rung2 = rows[start:start + 9], rows[start + 9:start + 12], rows[start + 12]
        best3 = sorted(rung0, key=lambda r: (-(r["fitness"] or -1), r["proposal"]))[:3]
        assert [r["key"] for r in rung1] == [r["key"] for r in best3], "the top third is promoted"
        assert [r["parent"] for r in rung1] == [r["job_key"] for r in best3]
        best1 = max(rung1, key=lambda r: r["fitness"] or -1)
        assert rung2["key"] == best1["key"] and rung2["parent"] == best1["job_key"]
    assert rows[0]["name"] == "powersign" and rows[12]["name"] == "powersign", \
        "the init point enters rung 0 first and, being the target, wins its bracket"


def test_inner_strategy_proposes_rung_zero_and_is_told_only_its_results() -> None:
    space = ml.get_space("mini-optimizer")
    halving = SuccessiveHalving(space, inner="evolution", min_steps=1, eta=2, max_steps=4,
                                population_size=3, tournament_size=2)
    told: list[Evaluation] = []
    jobs = drive(halving, lambda job: 0.1 * (job.proposal % 7) + job.steps, 21, told)
    rung0 = [j for j in jobs if j.rung == 0]
    assert halving.inner.asked == len(rung0) and halving.inner.told == len(rung0)
    assert [j.steps for j in jobs[:7]] == [1, 1, 1, 1, 2, 2, 4], "rung sizes 4, 2, 1"
    assert len(halving.inner.population) == 3  # type: ignore[attr-defined]


def test_a_cached_rung_result_counts_like_any_other() -> None:
    space = ml.get_space("mini-optimizer")
    halving = SuccessiveHalving(space, min_steps=1, eta=2, max_steps=2, candidates=2)
    first, second = halving.ask_one(), halving.ask_one()
    assert first is not None and second is not None
    halving.tell([Evaluation(job=first, status=Status.OK, fitness=0.3),
                  Evaluation(job=second, status=Status.OK, fitness=0.6, cached=True)])
    promoted = halving.ask_one()
    assert promoted is not None and promoted.rung == 1 and promoted.steps == 2
    assert promoted.candidate == second.candidate
