"""The synthetic rule-matching task: its fitness, its targets, and its place in the search loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_strategies_support import SHORT, MiniOptimizerSpace

import metalearn as ml
from metalearn.evaluator import Evaluator, Job, Status
from metalearn.search import search
from metalearn.tasks.synthetic import TARGETS, gradients

SPACE = MiniOptimizerSpace()


def fitness(text: str, **task_options: object) -> float:
    task = ml.get_task("synthetic-rule-match", **task_options)
    recipe = SPACE.fill(task.default_recipe(), SPACE.parse(text))
    return task.run(recipe)["accuracy"]


def test_powersign_target_matches_reference_formula() -> None:
    g = gradients(3, 30, 5)
    m, expected = np.zeros(5), []
    for row in g.numpy():
        m = 0.9 * m + 0.1 * row  # updated m_t, no bias correction (TF reference)
        expected.append(np.exp(np.sign(row) * np.sign(m)) * row)
    assert torch.allclose(TARGETS["powersign"](g), torch.tensor(np.array(expected)))


def test_gradient_rows_do_not_depend_on_how_many_are_drawn() -> None:
    assert torch.equal(gradients(0, 7, 4), gradients(0, 30, 4)[:7])
    assert not torch.equal(gradients(0, 7, 4), gradients(1, 7, 4))


def test_the_target_rule_scores_one_and_its_negation_zero() -> None:
    powersign = "mul(id(sign_g), id(sign_m)); mul(exp(u), id(g))"
    assert fitness(powersign) == pytest.approx(1.0, abs=1e-6)
    assert fitness("mul(id(sign_g), id(sign_m)); mul(exp(u), neg(g))") == pytest.approx(0.0, abs=1e-6)
    sgd = fitness("left(id(g), id(g)); left(id(u), id(g))")
    sign = fitness("left(sign(g), id(g)); left(id(u), id(g))")
    assert 0.5 < sign < sgd < 0.999, "sign-preserving rules are similar, but not the target"
    assert fitness(powersign, target="signsgd") < fitness("left(sign(g), id(g)); left(id(u), id(g))",
                                                          target="signsgd") == pytest.approx(1.0)


def test_fitness_does_not_depend_on_the_learning_rate() -> None:
    sgd = "left(id(g), id(g)); left(id(u), id(g))"
    assert fitness(sgd, hparams={"lr": 0.001}) == pytest.approx(fitness(sgd, hparams={"lr": 1.0}))


def test_exploding_rule_is_recorded_as_diverged() -> None:
    task = ml.get_task("synthetic-rule-match")
    exploding = SPACE.candidate(SPACE.parse("mul(exp(g2), exp(g2)); mul(exp(u), exp(u))"))
    result = Evaluator("cpu").evaluate(Job(candidate=exploding, task=task, steps=20, seed=0))
    assert result.status is Status.DIVERGED and result.fitness is None


def test_checkpointed_training_continues_exactly(tmp_path: Path) -> None:
    task = ml.get_task("synthetic-rule-match", **SHORT)
    recipe = SPACE.fill(task.default_recipe(), SPACE.named()["powersign"])
    whole = task.start(recipe, seed=0, total_steps=20)
    whole.train(20)
    half = task.start(recipe, seed=0, total_steps=20)
    half.train(8)
    half.save(tmp_path / "c.pt")
    resumed = task.start(recipe, seed=0, total_steps=20)
    resumed.load(tmp_path / "c.pt")
    resumed.train(12)
    assert resumed.evaluate() == whole.evaluate()
    assert torch.equal(resumed.weight, whole.weight)  # type: ignore[attr-defined]


def test_search_on_the_synthetic_task_records_the_tasks_fitness(tmp_path: Path) -> None:
    run = search(space="mini-optimizer", strategy="random", task="synthetic-rule-match", budget=4,
                 run=tmp_path / "r", init=["powersign", "sgd"], task_options=SHORT, progress=False)
    frame = run.to_pandas()
    assert list(frame["name"][:2]) == ["powersign", "sgd"]
    assert frame["fitness"][0] == pytest.approx(1.0)
    assert frame["fitness"][1] == pytest.approx(fitness("left(id(g), id(g)); left(id(u), id(g))",
                                                        **SHORT))
    assert set(frame["task"]) == {"synthetic-rule-match"}
