"""The RNN controller (Bello et al. 2017): it learns, it avoids repeats, and it is deterministic."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from test_strategies_support import drive

import metalearn as ml
from metalearn.errors import UserError
from metalearn.evaluator import Evaluation, Job, Status
from metalearn.strategies.controller import Controller, DecisionPolicy

SPACE = ml.get_space("mini-optimizer")
TARGET = SPACE.to_decisions(SPACE.named()["powersign"])  # type: ignore[attr-defined]


def matching(job: Job) -> float:
    """Reward: the fraction of decisions that agree with PowerSign's."""
    choices = SPACE.to_decisions(SPACE.parse(job.candidate.text))  # type: ignore[attr-defined]
    return sum(a == b for a, b in zip(choices, TARGET)) / len(TARGET)


@pytest.mark.parametrize("algorithm", ["ppo", "reinforce"])
def test_mean_reward_rises_over_the_first_batches(algorithm: str) -> None:
    for seed in range(3):
        controller = Controller(SPACE, seed=seed, algorithm=algorithm, batch_size=10)
        drive(controller, matching, 150)
        rewards = controller.mean_rewards
        assert len(rewards) >= 15
        assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.15, rewards


def test_log_prob_of_sampled_sequences_matches_what_sampling_reported() -> None:
    generator = torch.Generator().manual_seed(0)
    policy = DecisionPolicy([3, 5, 2, 4], 8, generator)
    samples = [policy.sample(generator) for _ in range(6)]
    log_prob, entropy = policy.log_prob(torch.tensor([c for c, _ in samples]))
    assert torch.allclose(log_prob, torch.tensor([lp for _, lp in samples]), atol=1e-5)
    uniform = sum(np.log(n) for n in (3, 5, 2, 4))
    assert bool((entropy > 0).all()) and bool((entropy <= uniform + 1e-5).all())


def test_proposes_each_rule_once_while_new_ones_can_be_found() -> None:
    tiny = ml.get_space("tiny-optimizer")
    controller = Controller(tiny, seed=0, batch_size=2)
    jobs = drive(controller, lambda job: 0.5, 4)
    assert len({j.candidate.key for j in jobs}) == 4
    assert controller.drawn > 4 and controller.redrawn == controller.drawn - 4


def test_init_points_are_evaluated_first_and_not_proposed_again() -> None:
    controller = Controller(SPACE, seed=0, init=["sgd"], batch_size=2)
    first = controller.ask_one()
    assert first is not None and first.candidate.name == "sgd"
    controller.tell([Evaluation(job=first, status=Status.OK, fitness=0.9)])
    later = drive(controller, matching, 20)
    assert first.candidate.key not in {j.candidate.key for j in later}


def test_a_cached_evaluation_rewards_its_sample() -> None:
    controller = Controller(SPACE, seed=0, batch_size=2)
    a, b = controller.ask_one(), controller.ask_one()
    assert a is not None and b is not None
    controller.tell([Evaluation(job=a, status=Status.OK, fitness=0.2)])
    assert controller.batches == 0
    controller.tell([Evaluation(job=b, status=Status.OK, fitness=0.8, cached=True)])
    assert controller.batches == 1 and controller.mean_rewards == [pytest.approx(0.5)]


def test_a_failed_candidate_is_rewarded_failed_reward() -> None:
    controller = Controller(SPACE, seed=0, batch_size=2, failed_reward=-1.0)
    a, b = controller.ask_one(), controller.ask_one()
    assert a is not None and b is not None
    controller.tell([Evaluation(job=a, status=Status.DIVERGED),
                     Evaluation(job=b, status=Status.OK, fitness=0.5)])
    assert controller.mean_rewards == [pytest.approx(-0.25)]


def test_needs_a_space_with_decisions() -> None:
    with pytest.raises(UserError, match="decisions"):
        Controller(ml.get_space("hparams"))
    with pytest.raises(UserError, match="algorithm"):
        Controller(SPACE, algorithm="a2c")


def test_same_seed_same_proposals_other_seed_other_proposals() -> None:
    def keys(seed: int) -> list[Any]:
        return [j.candidate.key for j in drive(Controller(SPACE, seed=seed, batch_size=4),
                                                matching, 24)]

    assert keys(0) == keys(0)
    assert keys(0) != keys(1)
