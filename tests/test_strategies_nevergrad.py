"""nevergrad optimizers by name (``ng:NAME``) over continuous spaces; ``cmaes`` stays the default CMA-ES."""

from __future__ import annotations

import numpy as np
import pytest
from test_strategies_support import drive

import metalearn as ml
from metalearn.errors import UserError
from metalearn.evaluator import Evaluation, Job
from metalearn.strategies.nevergrad import CMAES, DEFAULT_NGOPT_BUDGET, NevergradStrategy

HPARAMS = ml.get_space("hparams")
OPTIMUM = np.array([-2.0, 0.5, -4.0])


def bowl(job: Job) -> float:
    x = np.array(HPARAMS.parse(job.candidate.text))
    return float(-np.sum((x - OPTIMUM) ** 2))


@pytest.mark.parametrize("name", ["ng:DE", "ng:NGOpt", "ng:TwoPointsDE", "cmaes"])
def test_nevergrad_optimizers_by_name_improve_on_a_bowl(name: str) -> None:
    strategy = ml.get_strategy(name, HPARAMS, seed=0)
    told: list[Evaluation] = []
    drive(strategy, bowl, 120, told)
    fitness = [e.fitness for e in told if e.fitness is not None]
    assert max(fitness[-20:]) > max(fitness[:20]), "later proposals are better"
    assert max(fitness) > -0.3


def test_names_map_to_the_nevergrad_registry() -> None:
    de = ml.get_strategy("ng:DE", HPARAMS)
    assert isinstance(de, NevergradStrategy) and type(de.optimizer).__name__ == "_DE"
    ngopt = ml.get_strategy("ng", HPARAMS)
    assert ngopt.optimizer.budget == DEFAULT_NGOPT_BUDGET, "NGOpt needs a budget to choose"  # type: ignore[attr-defined]
    assert ml.get_strategy("ng:NGOpt", HPARAMS, budget=40).optimizer.budget == 40  # type: ignore[attr-defined]
    assert isinstance(ml.get_strategy("cmaes", HPARAMS), CMAES)
    with pytest.raises(UserError, match="unknown nevergrad optimizer"):
        ml.get_strategy("ng:NoSuchOptimizer", HPARAMS)
    with pytest.raises(UserError, match="continuous"):
        ml.get_strategy("ng:DE", ml.get_space("mini-optimizer"))


def test_init_points_are_told_to_optimizers_that_accept_them() -> None:
    strategy = ml.get_strategy("ng:DE", HPARAMS, seed=0, init=["default"])
    job = strategy.ask_one()
    assert job is not None and job.candidate.name == "default"
    strategy.tell([Evaluation(job=job, status=ml.Status.OK, fitness=0.5)])
    assert strategy.optimizer.num_tell_not_asked == 1  # type: ignore[attr-defined]
