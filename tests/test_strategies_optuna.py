"""Optuna's samplers behind ask/tell: the space mapping, seeding, init points, failures."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from test_strategies_support import drive

import metalearn as ml
from metalearn.errors import UserError
from metalearn.evaluator import Evaluation, Status
from metalearn.searchspaces.product import ProductSpace
from metalearn.strategies.optuna import TPE, Encoding, OptunaStrategy

MINI = ml.get_space("mini-optimizer")
HPARAMS = ml.get_space("hparams")


def test_decisions_become_categoricals_and_vectors_bounded_floats() -> None:
    discrete = Encoding(MINI)
    sizes = MINI.decisions()  # type: ignore[attr-defined]
    assert list(discrete.distributions.values()) == [
        CategoricalDistribution(list(range(n))) for n in sizes]
    powersign = MINI.named()["powersign"]
    params = discrete.encode(powersign)
    assert params is not None and discrete.decode(params) == powersign

    continuous = Encoding(HPARAMS)
    lower, upper = HPARAMS.bounds  # type: ignore[attr-defined]
    assert list(continuous.distributions.values()) == [
        FloatDistribution(float(lo), float(hi)) for lo, hi in zip(lower, upper)]
    assert continuous.encode((-1.0, 0.5, -3.0)) == {
        "log10_lr": -1.0, "momentum": 0.5, "log10_weight_decay": -3.0}
    assert continuous.encode((1.0, 0.5, -3.0)) is None, "outside the box"

    product = Encoding(ProductSpace([HPARAMS, MINI]))
    assert len(product.distributions) == 3 + len(sizes)
    genome = ((-2.0, 0.9, -5.0), powersign)
    encoded = product.encode(genome)
    assert encoded is not None and product.decode(encoded) == genome


def test_seeded_sampler_repeats_itself_and_other_seeds_differ() -> None:
    def keys(seed: int) -> list[str]:
        jobs = drive(TPE(MINI, seed=seed, n_startup_trials=5), lambda j: float(j.proposal % 5), 15)
        return [j.candidate.key for j in jobs]

    assert keys(0) == keys(0)
    assert keys(0) != keys(1)


def test_init_points_are_taught_to_the_sampler() -> None:
    strategy = OptunaStrategy(MINI, seed=0, init=["powersign"], inner="RandomSampler")
    job = strategy.ask_one()
    assert job is not None and job.candidate.name == "powersign"
    strategy.tell([Evaluation(job=job, status=Status.OK, fitness=0.75)])
    (trial,) = strategy.study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 0.75
    assert trial.params == Encoding(MINI).encode(MINI.named()["powersign"])


def test_failed_candidates_are_told_as_failed_fitness_or_as_failures() -> None:
    for failed_fitness, state, value in ((0.0, "COMPLETE", 0.0), (None, "FAIL", None),
                                         ("none", "FAIL", None)):
        strategy = TPE(MINI, seed=0, failed_fitness=failed_fitness)
        job = strategy.ask_one()
        assert job is not None
        strategy.tell([Evaluation(job=job, status=Status.DIVERGED)])
        (trial,) = strategy.study.trials
        assert trial.state == getattr(optuna.trial.TrialState, state) and trial.value == value


def test_a_cached_evaluation_completes_its_trial() -> None:
    strategy = TPE(MINI, seed=0)
    job = strategy.ask_one()
    assert job is not None
    strategy.tell([Evaluation(job=job, status=Status.OK, fitness=0.4, cached=True)])
    assert [t.value for t in strategy.study.trials] == [0.4]


def test_samplers_by_name_and_a_clear_error_for_unknown_ones() -> None:
    strategy = ml.get_strategy("optuna:QMCSampler", HPARAMS, seed=3)
    assert isinstance(strategy, OptunaStrategy)
    assert isinstance(strategy.study.sampler, optuna.samplers.QMCSampler)
    with pytest.raises(UserError, match="accepted: .*TPESampler"):
        ml.get_strategy("optuna:NoSuchSampler", HPARAMS)
    with pytest.raises(UserError, match="TPESampler"):
        ml.get_strategy("tpe", HPARAMS, no_such_option=1)


def test_cmaes_sampler_improves_on_a_bowl() -> None:
    pytest.importorskip("cmaes")
    optimum = np.array([-2.0, 0.5, -4.0])

    def bowl(job: object) -> float:
        x = np.array(HPARAMS.parse(job.candidate.text))  # type: ignore[attr-defined]
        return float(-np.sum((x - optimum) ** 2))

    strategy = ml.get_strategy("optuna:CmaEsSampler", HPARAMS, seed=0)
    told: list[Evaluation] = []
    drive(strategy, bowl, 80, told)
    first = max(e.fitness for e in told[:10] if e.fitness is not None)
    last = max(e.fitness for e in told[-10:] if e.fitness is not None)
    assert last > first and last > -0.2


def test_trials_of_known_candidates_are_finished_with_their_fitness_and_redrawn() -> None:
    tiny = ml.get_space("tiny-optimizer")
    strategy = TPE(tiny, seed=0, n_startup_trials=2)
    jobs = drive(strategy, lambda job: 0.1 * (1 + job.proposal), 4)
    assert len({j.candidate.key for j in jobs}) == 4, "four rules, each proposed once"
    assert strategy.redrawn > 0
    assert len(strategy.study.trials) == 4 + strategy.redrawn
    repeat = drive(strategy, lambda job: 0.7, 1)  # all known: 20 redraws, then the repeat
    assert repeat[0].candidate.key in {j.candidate.key for j in jobs}
    trials = strategy.study.trials
    assert trials[-1].state == optuna.trial.TrialState.COMPLETE
    first_value: dict[str, float | None] = {}
    for trial in trials:
        key = tiny.key(Encoding(tiny).decode(trial.params))
        first_value.setdefault(key, trial.value)
        if trial is not trials[-1]:
            assert trial.value == first_value[key], "a redrawn trial is told its rule's fitness"
