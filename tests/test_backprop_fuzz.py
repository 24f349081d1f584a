"""Sampled, mutated and decoded backward rules run on an MLP and a ConvNet, or are recorded
as diverged: the typed DSL never yields a rule that crashes or cannot be built."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from metalearn.evaluator import Evaluator, Job, Status
from metalearn.registry import get_space, get_task
from metalearn.searchspaces.backprop_dsl import BackpropSpace, Genome
from metalearn.tasks import SupervisedTask

_SPACE = get_space("backprop")
assert isinstance(_SPACE, BackpropSpace)
SPACE: BackpropSpace = _SPACE



def rules(count: int, seed: int) -> list[Genome]:
    """A mix of samples, mutation chains and decoded decision vectors."""
    rng = np.random.default_rng(seed)
    sizes = SPACE.decisions()
    found = [SPACE.named()[n] for n in ("backprop", "feedback_alignment", "sign_symmetry",
                                        "direct_feedback_alignment")]
    parent: Genome = SPACE.sample(rng)
    while len(found) < count:
        kind = len(found) % 3
        if kind == 0:
            found.append(SPACE.sample(rng))
        elif kind == 1:
            parent = SPACE.mutate(parent, rng)
            found.append(parent)
        else:
            found.append(SPACE.from_decisions([int(rng.integers(n)) for n in sizes]))
    return found


def check(count: int, seed: int) -> Counter:
    evaluator = Evaluator(device="cpu")
    tasks = [get_task(name) for name in ("mnist1d-mlp", "mnist1d-conv")]
    tasks = [t.with_options(batch_size=32) for t in tasks if isinstance(t, SupervisedTask)]
    assert len(tasks) == 2
    statuses: Counter = Counter()
    for i, genome in enumerate(rules(count, seed)):
        candidate = SPACE.candidate(genome)
        for task in tasks:
            result = evaluator.evaluate(Job(candidate=candidate, steps=2, seed=i, task=task))
            # a typed rule runs on every Linear/Conv2d: never invalid, never an exception
            assert result.status in (Status.OK, Status.DIVERGED), (candidate.text, result.error)
            if result.status is Status.OK:
                assert result.fitness is not None and 0.0 <= result.fitness <= 1.0
            statuses[result.status] += 1
    # most short runs stay finite; a runtime that broke rules would fail this
    assert statuses[Status.OK] > 0.8 * sum(statuses.values()), statuses
    return statuses


def test_hundred_rules_run_or_diverge() -> None:
    check(100, seed=0)


@pytest.mark.slow
def test_thousand_rules_run_or_diverge() -> None:
    check(1000, seed=1)
