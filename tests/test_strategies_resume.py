"""Every strategy, interrupted and resumed, proposes what an uninterrupted run with its seed proposes.

A run resumes by replaying its ledger into a fresh strategy (metalearn.search), so
each strategy must be a deterministic function of its seed and of the asks and tells.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_strategies_support import SHORT, drive, ledger_keys

import metalearn as ml
from metalearn.evaluator import Evaluation, Status
from metalearn.search import search
from metalearn.strategies.controller import Controller

DISCRETE = ["random", "evolution", "backprop-evolution", "controller", "tpe",
            "optuna:RandomSampler", "halving:evolution", "halving:controller"]
CONTINUOUS = ["cmaes", "ng:DE", "ng:NGOpt", "tpe", "optuna:CmaEsSampler", "halving:cmaes"]
OPTIONS: dict[str, dict[str, Any]] = {
    "controller": {"batch_size": 4},
    "halving:evolution": {"min_steps": 5, "population_size": 4},
    "halving:controller": {"min_steps": 5, "batch_size": 3},
    "halving:cmaes": {"min_steps": 5, "population_size": 4},
    "evolution": {"population_size": 6},
    "backprop-evolution": {"top_n": 4},
}


def run_search(folder: Path, space: str, strategy: str, budget: int, **kwargs: Any) -> ml.Run:
    return search(space=space, strategy=strategy, task="synthetic-rule-match", budget=budget,
                  run=folder, seed=3, strategy_options=OPTIONS.get(strategy, {}),
                  task_options=SHORT, progress=False, **kwargs)


def check_resume(tmp_path: Path, space: str, strategy: str, first: int = 9, total: int = 22,
                 **kwargs: Any) -> None:
    interrupted, whole = tmp_path / "interrupted", tmp_path / "whole"
    run_search(interrupted, space, strategy, first, **kwargs)
    assert len(ledger_keys(interrupted)) == first
    run_search(interrupted, space, strategy, total, **kwargs)
    run_search(whole, space, strategy, total, **kwargs)
    resumed, straight = ledger_keys(interrupted), ledger_keys(whole)
    assert len(straight) == total
    assert resumed == straight
    assert len({key for _, key in straight}) > total // 2, "the runs explored"


@pytest.mark.parametrize("strategy", DISCRETE)
def test_resumed_discrete_search_proposes_what_an_uninterrupted_one_does(
        tmp_path: Path, strategy: str) -> None:
    check_resume(tmp_path, "mini-optimizer", strategy, init=["sgd"])


@pytest.mark.parametrize("strategy", CONTINUOUS)
def test_resumed_continuous_search_proposes_what_an_uninterrupted_one_does(
        tmp_path: Path, strategy: str) -> None:
    if strategy == "optuna:CmaEsSampler":
        pytest.importorskip("cmaes")
    check_resume(tmp_path, "hparams", strategy)


def test_replayed_controller_has_identical_weights() -> None:
    """Asks running ahead of tells (three in flight), replayed into a fresh controller."""
    space = ml.get_space("mini-optimizer")
    target = space.to_decisions(space.named()["powersign"])  # type: ignore[attr-defined]

    def reward(job: Any) -> float:
        choices = space.to_decisions(space.parse(job.candidate.text))  # type: ignore[attr-defined]
        return sum(a == b for a, b in zip(choices, target)) / len(target)

    live = Controller(space, seed=5, batch_size=4)
    events: list[tuple[str, Any]] = []
    in_flight = [live.ask_one() for _ in range(3)]
    events += [("ask", None)] * 3
    for _ in range(30):
        job = in_flight.pop(0)
        assert job is not None
        evaluation = Evaluation(job=job, status=Status.OK, fitness=reward(job))
        live.tell([evaluation])
        events.append(("tell", evaluation))
        in_flight.append(live.ask_one())
        events.append(("ask", None))
    assert live.batches >= 6

    replayed = Controller(space, seed=5, batch_size=4)
    for kind, evaluation in events:
        if kind == "ask":
            replayed.ask_one()
        else:
            replayed.tell([evaluation])
    weights, again = live.state_dict(), replayed.state_dict()
    assert all(torch_equal(weights[k], again[k]) for k in weights)
    untrained = Controller(space, seed=5, batch_size=4).state_dict()
    assert not all(torch_equal(weights[k], untrained[k]) for k in weights), "the policy learned"
    other_seed = Controller(space, seed=6, batch_size=4)
    drive(other_seed, reward, 30)
    assert not torch_equal(other_seed.state_dict()["head.bias"], weights["head.bias"])


def torch_equal(a: Any, b: Any) -> bool:
    import torch

    return bool(torch.equal(a, b))
