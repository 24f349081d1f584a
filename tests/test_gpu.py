"""The GPU path: device-resident data, bf16, channels-last, compiled models, DSL rules on CUDA.

Skipped without CUDA (marker ``gpu``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import metalearn as ml
from metalearn.tasks.data import register_dataset
from metalearn.tasks.train import Splits
from metalearn.tasks.vision import CIFAR10_MEAN, CIFAR10_STD

pytestmark = pytest.mark.gpu


@register_dataset("gpu-test-images")
def _images(n: int = 2048, **_: Any) -> Splits:
    generator = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (n,), generator=generator)
    # class-dependent brightness makes the task learnable in a few steps
    x = (torch.rand(n, 3, 32, 32, generator=generator) * 128 + y.view(-1, 1, 1, 1) * 12).to(torch.uint8)
    return Splits(x[:-512], y[:-512], x[-512:], y[-512:], x[-512:], y[-512:], num_classes=10,
                  mean=CIFAR10_MEAN, std=CIFAR10_STD)


def _task() -> Any:
    return ml.get_task("cifar10-wrn-10-1", dataset="gpu-test-images", data_args={})


def test_compiled_search_on_cuda_runs_every_job_without_growing_memory(tmp_path: Path) -> None:
    run = ml.search(space="optimizer", strategy="random", task="cifar10-wrn-10-1", budget=4,
                    steps=60, task_options={"dataset": "gpu-test-images", "data_args": {}},
                    init=["momentum", "adam"], run=tmp_path / "r", device="cuda", progress=False)
    frame = run.to_pandas()
    assert (frame["device"] == "cuda").all()
    assert frame.loc[0, "status"] == "ok" and frame.loc[0, "fitness"] > 0.2
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() < 2 * 2**30


@pytest.mark.parametrize("rule", ["backprop", "feedback_alignment", "sign_symmetry",
                                  "direct_feedback_alignment"])
def test_backprop_rules_train_under_bf16_autocast(rule: str) -> None:
    space = ml.get_space("backprop")
    recipe = space.fill(_task().default_recipe(), space.named()[rule])
    state = _task().start(recipe, seed=0, device="cuda", total_steps=30)
    state.train(30)
    assert state.evaluate()["accuracy"] > 0.15


def test_dsl_adam_matches_torch_adam_on_cuda() -> None:
    torch.manual_seed(0)
    a = torch.nn.Linear(64, 64).cuda()
    b = torch.nn.Linear(64, 64).cuda()
    b.load_state_dict(a.state_dict())
    space = ml.get_space("optimizer")
    ours = space.build(space.named()["adam"])(a.parameters(), lr=1e-3)
    ref = torch.optim.Adam(b.parameters(), lr=1e-3)
    x = torch.randn(32, 64, device="cuda")
    for _ in range(50):
        for model, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-5, atol=1e-6)
