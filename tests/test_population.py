"""Population layers: P members of a model as one model, members in channels."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import stack_module_state

from metalearn.recipe import Recipe
from metalearn.tasks import TASKS, SupervisedTask
from metalearn.tasks.batched import BatchedTrainer, Member
from metalearn.tasks.models import MODELS
from metalearn.tasks.population import (
    agrees,
    channels_last_kernels,
    members_in_channels,
    population_forward,
    refusal,
    to_population,
)

CPU = torch.device("cpu")

MODELS_TO_CHECK = [  # (model, its options, input shape): every architecture the tasks use
    ("mlp", {}, (40,)),
    ("signal-convnet", {}, (40,)),
    ("wrn", {"depth": 10, "width": 1}, (3, 32, 32)),
    ("resnet", {"depth": 20}, (3, 32, 32)),
    ("nos-convnet", {}, (3, 32, 32)),
    ("proxprop-mlp", {}, (3, 32, 32)),
    ("proxprop-convnet", {}, (3, 32, 32)),
]


def members(name: str, options: dict, in_shape: tuple[int, ...], count: int = 3) -> list[nn.Module]:
    models = []
    for seed in range(count):
        torch.manual_seed(seed)
        models.append(MODELS[name](in_shape, 10, **options))
    return models


@pytest.mark.parametrize("name,options,in_shape", MODELS_TO_CHECK, ids=[m[0] for m in MODELS_TO_CHECK])
def test_population_layers_train_each_member_as_its_own_model(name, options, in_shape):
    models = members(name, options, in_shape)
    population = to_population(copy.deepcopy(models[0]).to("meta"))
    assert agrees(population, models, in_shape, CPU)
    # training mode: batch statistics, running buffers and gradients, member by member, in
    # float64 (in float32 a ReLU input within rounding of 0 may flip its mask and its gradient)
    alone = [copy.deepcopy(m).double().train() for m in models]
    params, buffers = stack_module_state(alone)  # type: ignore[arg-type]
    params = {k: v.detach().requires_grad_() for k, v in params.items()}
    x = torch.randn(len(models), 8, *in_shape, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    population.train()
    logits = population_forward(population, params, buffers, members_in_channels(x))
    logits.square().sum().backward()
    for i, model in enumerate(alone):
        expected = model(x[i])
        expected.square().sum().backward()
        torch.testing.assert_close(logits[i], expected, rtol=1e-9, atol=1e-12)
        for key, value in model.named_parameters():
            assert value.grad is not None
            torch.testing.assert_close(params[key].grad[i], value.grad, rtol=1e-9, atol=1e-12,
                                       msg=f"{name} member {i} gradient of {key}")
        for key, value in model.named_buffers():
            torch.testing.assert_close(buffers[key][i], value, msg=f"{name} member {i} {key}")


def test_a_shared_input_equals_each_member_given_its_own_copy():
    models = members("wrn", {"depth": 10, "width": 1}, (3, 32, 32), count=4)
    population = to_population(copy.deepcopy(models[0]).to("meta")).eval()
    params, buffers = stack_module_state([m.eval() for m in models])  # type: ignore[arg-type]
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        shared = population_forward(population, params, buffers, x)
        copies = population_forward(population, params, buffers,
                                    members_in_channels(x.expand(4, *x.shape)))
    torch.testing.assert_close(shared, copies, rtol=1e-5, atol=1e-6)


def test_layers_that_mix_members_are_refused_by_name():
    norm = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    reason = refusal(norm)
    assert reason is not None and "LayerNorm" in reason
    assert "dimension 2" in (refusal(nn.Sequential(nn.Flatten(2), nn.Linear(4, 2))) or "")
    with pytest.raises(ValueError, match="LayerNorm"):
        to_population(norm)


class ChannelConcat(nn.Module):
    """A forward that mixes channels in code (a concatenation on dimension 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(40, 8)
        self.b = nn.Linear(40, 8)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(torch.cat([self.a(x), self.b(x)], dim=1)))


def test_a_forward_that_mixes_channels_fails_the_check_and_trains_by_vmap(monkeypatch):
    models = [ChannelConcat() for _ in range(2)]
    assert refusal(models[0]) is None  # nothing in its layers says so ...
    assert not agrees(to_population(copy.deepcopy(models[0]).to("meta")), models, (40,), CPU)
    monkeypatch.setitem(MODELS, "test-concat", lambda in_shape, num_classes, **_: ChannelConcat())
    base = TASKS["mnist1d-mlp"]
    assert isinstance(base, SupervisedTask)
    task = base.with_options(name="test-concat", model="test-concat", steps=5)
    recipe: Recipe = task.default_recipe()
    trainer = BatchedTrainer(task, [Member(recipe, 0), Member(recipe, 1)], total_steps=5,
                             vectorise="layers")
    assert trainer.population is None  # ... so the population is vmapped instead
    trainer.train(5)
    state = task.start(recipe, 1, "cpu", total_steps=5)
    state.train(5)
    for key, value in state.model.state_dict().items():  # type: ignore[attr-defined]
        torch.testing.assert_close(trainer.member_state(1)[key], value, rtol=1e-5, atol=1e-6)


def test_channels_last_kernels_keep_values_and_view_as_channels_last():
    stacked = torch.randn(3, 8, 4, 3, 3)
    laid = channels_last_kernels(stacked)
    assert torch.equal(laid, stacked)
    flat = laid.reshape(24, 4, 3, 3)
    assert flat.data_ptr() == laid.data_ptr()  # a view, not a copy
    assert flat.is_contiguous(memory_format=torch.channels_last)
    linear = torch.randn(3, 8, 4)
    assert channels_last_kernels(linear) is linear


def test_the_cpu_vmaps_by_default_and_layers_are_asked_for_by_name():
    base = TASKS["mnist1d-mlp"]
    assert isinstance(base, SupervisedTask)
    task = base.with_options(steps=2)
    members = [Member(task.default_recipe(), 0), Member(task.default_recipe(), 1)]
    assert BatchedTrainer(task, members, total_steps=2).population is None
    assert BatchedTrainer(task, members, total_steps=2, vectorise="layers").population is not None
    with pytest.raises(ValueError, match="accepted: auto, layers, vmap"):
        BatchedTrainer(task, members, total_steps=2, vectorise="grouped")
