"""The Backprop Evolution controller (Alber et al. 2018): parent selection, k mutations, restarts, seeding."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from test_strategies_support import drive

import metalearn as ml
from metalearn.errors import UserError
from metalearn.evaluator import Evaluation, Job, Status
from metalearn.strategies.backprop_evolution import BackpropEvolution, parse_probabilities

SPACE = ml.get_space("mini-optimizer")


def told_population(strategy: BackpropEvolution, fitnesses: list[float | None]) -> list[str]:
    """Tell one distinct random rule per fitness (``None``: failed); return their keys in order."""
    rng = np.random.default_rng(123)
    keys: list[str] = []
    while len(keys) < len(fitnesses):
        candidate = SPACE.candidate(SPACE.sample(rng))
        if candidate.key in keys:
            continue
        fitness = fitnesses[len(keys)]
        status = Status.OK if fitness is not None else Status.DIVERGED
        strategy.tell([Evaluation(job=Job(candidate=candidate, proposal=len(keys)),
                                  status=status, fitness=fitness)])
        keys.append(candidate.key)
    return keys


def test_parent_is_from_the_top_n_with_probability_p_and_uniform_within() -> None:
    strategy = BackpropEvolution(SPACE, seed=0, top_n=3, exploit_probability=0.7)
    keys = told_population(strategy, [0.1 * i for i in range(10)])  # keys[9] is the fittest
    picks = Counter(strategy.parent().key for _ in range(6000))
    top = keys[7:]
    assert sum(picks[k] for k in top) / 6000 == pytest.approx(0.7, abs=0.025)
    for key in top:
        assert picks[key] / 6000 == pytest.approx(0.7 / 3, abs=0.025)
    for key in keys[:7]:
        assert picks[key] / 6000 == pytest.approx(0.3 / 7, abs=0.015)


def test_failed_members_are_parents_only_while_nothing_succeeded() -> None:
    strategy = BackpropEvolution(SPACE, seed=0, top_n=1, exploit_probability=0.5)
    keys = told_population(strategy, [None, None, 0.2, None, 0.1])
    assert {strategy.parent().key for _ in range(300)} == {keys[2], keys[4]}
    only_failed = BackpropEvolution(SPACE, seed=0, top_n=1)
    failed = told_population(only_failed, [None, None])
    assert {only_failed.parent().key for _ in range(100)} == set(failed)


def test_number_of_mutations_follows_the_categorical_distribution() -> None:
    strategy = BackpropEvolution(SPACE, seed=1, mutation_counts="0.5,0.2,0.3")
    counts = Counter(strategy.mutations() for _ in range(6000))
    assert set(counts) == {1, 2, 3}
    for k, p in ((1, 0.5), (2, 0.2), (3, 0.3)):
        assert counts[k] / 6000 == pytest.approx(p, abs=0.025)
    assert parse_probabilities([2, 2]) == (0.5, 0.5)
    with pytest.raises(UserError, match="mutation_counts"):
        BackpropEvolution(SPACE, mutation_counts="a,b")


def test_children_are_new_and_differ_from_their_parent_in_at_most_k_decisions() -> None:
    strategy = BackpropEvolution(SPACE, seed=2, top_n=2, initial_population=4,
                                 mutation_counts=(0.0, 0.0, 1.0))  # always k = 3
    told: list[Evaluation] = []
    jobs = drive(strategy, lambda job: float(np.random.default_rng(job.proposal).random()), 60, told)
    keys = [j.candidate.key for j in jobs]
    assert len(set(keys)) == 60, "a child equal to its parent or to a known rule is restarted"
    decisions = {j.candidate.key: SPACE.to_decisions(SPACE.parse(j.candidate.text))  # type: ignore[attr-defined]
                 for j in jobs}
    distances = []
    for job in jobs[4:]:
        child = decisions[job.candidate.key]
        nearest = min(sum(a != b for a, b in zip(child, decisions[k])) for k in keys[:job.proposal])
        distances.append(nearest)
    assert max(distances) <= 3 and Counter(distances)[3] > 10, "k = 3 mutations per child"


def test_init_points_come_first_then_random_initial_population() -> None:
    strategy = BackpropEvolution(SPACE, seed=0, init=["powersign", "sgd"], initial_population=5)
    jobs = [strategy.ask_one() for _ in range(5)]
    assert [j.candidate.name for j in jobs[:2] if j] == ["powersign", "sgd"]
    assert strategy.ask_one() is None, "waits for the initial population's results"


def test_a_repeat_told_again_is_not_a_new_member() -> None:
    strategy = BackpropEvolution(SPACE, seed=0)
    keys = told_population(strategy, [0.5, 0.4])
    first = strategy.ranked[0]
    again = Evaluation(job=Job(candidate=SPACE.candidate(first.genome), proposal=7),
                       status=Status.OK, fitness=0.5, cached=True)
    strategy.tell([again])
    assert [m.key for m in strategy.ranked] == keys
