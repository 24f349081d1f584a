"""``--space backprop`` searches with random search and evolution on the MLP and the ConvNet,
and the named rules learn on MNIST-1D with plain SGD."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

import metalearn as ml
from metalearn.registry import get_space, get_task
from metalearn.tasks import SupervisedTask


@pytest.mark.parametrize("strategy", ["random", "evolution"])
@pytest.mark.parametrize("task", ["mnist1d-mlp", "mnist1d-conv"])
def test_search_over_backprop_rules(strategy: str, task: str, tmp_path: Path) -> None:
    if strategy not in ml.list_strategies():
        pytest.skip(f"strategy {strategy} not available")
    run = ml.search(space="backprop", strategy=strategy, task=task, budget=5, steps=30,
                    run=tmp_path / "run", seed=0, device="cpu", progress=False,
                    init=["backprop", "direct_feedback_alignment"])
    frame = run.to_pandas()
    assert len(frame) == 5 and set(frame["space"]) == {"backprop"}
    space = get_space("backprop")
    texts = list(frame["candidate"])
    assert texts[:2] == ["apply(d, W)", "direct(e, D)"]
    for text in texts:
        space.parse(text)  # every candidate is DSL text of the space
    assert set(frame["status"]) <= {"ok", "diverged"}
    ok = frame[frame["status"] == "ok"]
    assert len(ok) >= 2 and ok["fitness"].between(0, 1).all()


def test_mnist1d_conv_task_uses_strided_padded_convolutions() -> None:
    task = get_task("mnist1d-conv")
    assert isinstance(task, SupervisedTask)
    model = task.build_model(0, (40,), 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3 and any(c.stride != (1, 1) for c in convs)
    assert all(c.padding != (0, 0) for c in convs)
    assert model(torch.randn(4, 40)).shape == (4, 10)


CHANCE = 0.1
RULES = [("backprop", 0.05), ("feedback_alignment", 0.05), ("sign_symmetry", 0.05),
         ("direct_feedback_alignment", 0.05), ("proxprop", 1.0)]


@functools.cache
def accuracy(text: str, lr: float, steps: int) -> float:
    space, task = get_space("backprop"), get_task("mnist1d-mlp")
    recipe = space.fill(task.default_recipe(), space.resolve(text))
    recipe = recipe.replace(hparams={"lr": lr, "momentum": 0.0})
    return task.run(recipe, seed=0, steps=steps)["accuracy"]


@pytest.mark.parametrize("name, lr", RULES)
def test_named_rules_learn_above_chance_with_plain_sgd(name: str, lr: float) -> None:
    # docs/spaces/backprop.md has the full table (2000 steps, 3 seeds)
    assert accuracy(name, lr, steps=400) > 2 * CHANCE


@pytest.mark.slow
@pytest.mark.parametrize("name, lr", RULES)
def test_named_rules_teach_the_hidden_layers(name: str, lr: float) -> None:
    """Better than training the classifier alone (a rule that sends nothing below)."""
    classifier_only = accuracy("sub(apply(d, W), apply(d, W))", 0.05, steps=2000)
    assert accuracy(name, lr, steps=2000) > classifier_only + 0.05
