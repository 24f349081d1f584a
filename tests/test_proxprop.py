"""ProxProp (Frerix et al. 2018): its steps solve the proximal problem the paper defines."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metalearn.evaluator import Evaluator, Job, Status
from metalearn.registry import get_space, get_task
from metalearn.searchspaces import proxprop
from metalearn.searchspaces.proxprop import ProxPropConv2d, ProxPropLinear, ProxPropRule

TAU = 0.05



def grad(t: torch.Tensor) -> torch.Tensor:
    assert t.grad is not None
    return t.grad


def mlp(seed: int = 0) -> Any:  # Any: tests read the layers' attributes
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(),
                         nn.Linear(16, 4))


def convnet(seed: int = 0) -> Any:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(4, 3, 3, padding=1, bias=False), nn.ReLU(),
                         nn.Flatten(), nn.Linear(3 * 3 * 3, 4))


def step_inputs(model: Any, x: torch.Tensor, y: torch.Tensor, index: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The input of layer ``index`` and the gradient at its output, by plain autograd."""
    model = copy.deepcopy(model)
    seen: dict[str, torch.Tensor] = {}
    layer = model[index]
    layer.register_forward_hook(lambda m, a, out: seen.update(a=a[0].detach(), z=out))
    out = model(x)
    seen["z"].retain_grad()
    F.cross_entropy(out, y).backward()
    return seen["a"], grad(seen["z"])


def proximal_solution(a: torch.Tensor, grad_z: torch.Tensor, layer: Any, tau: float
                      ) -> torch.Tensor:
    """argmin_X 1/2||A X - y||^2 + 1/(2 tau)||X - Z||^2 as least squares of the stacked system."""
    a1 = torch.cat([a, torch.ones(len(a), 1)], 1).double()
    z = torch.cat([layer.weight.t(), layer.bias[None]]).detach().double()
    y = a1 @ z - grad_z.double()
    beta = 1 / tau
    stacked = torch.cat([a1, beta ** 0.5 * torch.eye(a1.shape[1], dtype=torch.float64)])
    target = torch.cat([y, beta ** 0.5 * z])
    return torch.linalg.lstsq(stacked, target).solution


def converted(mode: str, make: Callable[[], Any] = mlp, tau: float = TAU) -> Any:
    model = make()
    ProxPropRule(mode, tau).apply(model)
    return model


def backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_()
    F.cross_entropy(model(x), y).backward()
    return grad(x)


X, Y = torch.randn(32, 10, generator=torch.Generator().manual_seed(0)), torch.arange(32) % 4
XC = torch.randn(16, 2, 6, 6, generator=torch.Generator().manual_seed(0))


def test_exact_mode_solves_the_normal_equations() -> None:
    model = converted("exact")
    backward(model, X, Y)
    reference = mlp()
    for index in (0, 2):
        layer = model[index]
        a, grad_z = step_inputs(reference, X, Y, index)
        a1 = torch.cat([a, torch.ones(len(a), 1)], 1).double()
        z = torch.cat([reference[index].weight.t(), reference[index].bias[None]]).detach().double()
        x_new = z - torch.cat([layer.weight.grad.t(), layer.bias.grad[None]]).double()
        beta = 1 / TAU
        lhs = (a1.t() @ a1 + beta * torch.eye(a1.shape[1], dtype=torch.float64)) @ x_new
        rhs = a1.t() @ (a1 @ z - grad_z.double()) + beta * z
        assert float((lhs - rhs).norm() / rhs.norm()) < 1e-5
        # and the step is not the plain gradient (that would fail the equations above too,
        # but say so plainly): with tau = 0.05 the prox step is about tau times shorter
        plain = torch.cat([a1.t() @ grad_z.double()]).norm()
        assert float((z - x_new).norm()) < 0.5 * float(plain)


def test_exact_mode_with_more_rows_than_inputs_solves_them_too() -> None:
    torch.manual_seed(1)
    layer = nn.Linear(5, 3)
    reference = copy.deepcopy(layer)
    ProxPropRule("exact", 0.3, explicit_classifier=False).apply(layer)
    a = torch.randn(40, 5)
    grad_z = torch.randn(40, 3) * 0.1
    layer(a).backward(grad_z)
    want = reference.weight.detach().double().t() - proximal_solution(a, grad_z, reference, 0.3)[:5]
    torch.testing.assert_close(grad(layer.weight).double(), want.t(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("make, x", [(mlp, X), (convnet, XC)])
def test_gradient_mode_equals_the_plain_gradient(make: Callable[[], Any], x: torch.Tensor
                                                ) -> None:
    reference, model = make(), converted("gradient", make)
    assert isinstance(model[0], (ProxPropLinear, ProxPropConv2d))
    gx_ref, gx = backward(reference, x, Y[:len(x)]), backward(model, x, Y[:len(x)])
    torch.testing.assert_close(gx, gx_ref, atol=1e-6, rtol=0)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=0)


def test_cg_approaches_the_exact_solution_as_iterations_grow(
        monkeypatch: pytest.MonkeyPatch) -> None:
    exact = converted("exact")
    backward(exact, X, Y)

    def error(n: int) -> float:
        model = converted(f"cg{n}")
        backward(model, X, Y)
        return float((model[0].weight.grad - exact[0].weight.grad).norm()
                     / exact[0].weight.grad.norm())

    # the paper's early stop: squared residual below 1e-4 of the initial one
    assert error(30) == error(60) < 1e-2
    monkeypatch.setattr(proxprop, "CG_TOLERANCE", 0.0)
    errors = [error(n) for n in (1, 2, 4, 8, 30)]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[0] > 1e-2 and errors[-1] < 1e-5, errors


def test_cg_on_convolutions_approaches_the_dense_proximal_step(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The matrix-free CG of a strided, padded Conv2d against a dense solve built by im2col."""
    tau = 0.5
    reference = convnet(2)
    a, grad_z = step_inputs(reference, XC, Y[:16], 0)
    cols = F.unfold(a, 3, padding=1, stride=2).transpose(1, 2).reshape(-1, 2 * 9)  # rows x in*k*k
    a1 = torch.cat([cols, torch.ones(len(cols), 1)], 1).double()
    g = grad_z.permute(0, 2, 3, 1).reshape(-1, 4).double()
    system = a1.t() @ a1 + torch.eye(a1.shape[1], dtype=torch.float64) / tau
    delta = torch.linalg.solve(system, a1.t() @ g)  # Z - X, (in*k*k + 1) x out
    want_w = delta[:-1].t().reshape(4, 2, 3, 3)
    monkeypatch.setattr(proxprop, "CG_TOLERANCE", 0.0)
    errors = []
    for n in (1, 3, 40):
        model = converted(f"cg{n}", lambda: convnet(2), tau=tau)
        backward(model, XC, Y[:16])
        errors.append(float((model[0].weight.grad.double() - want_w).norm() / want_w.norm()))
        if n == 40:
            torch.testing.assert_close(model[0].bias.grad.double(), delta[-1], atol=1e-5, rtol=1e-3)
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-4, errors


@pytest.mark.parametrize("mode", ["exact", "cg3"])
def test_sgd_with_learning_rate_one_takes_the_proximal_step(mode: str) -> None:
    model, reference = converted(mode), mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    F.cross_entropy(model(X), Y).backward()
    optimizer.step()
    a, grad_z = step_inputs(reference, X, Y, 0)
    solution = proximal_solution(a, grad_z, reference[0], TAU)
    tolerance = 1e-6 if mode == "exact" else 2e-3  # three CG iterations are close, not exact
    scale = float(solution.abs().max())
    torch.testing.assert_close(model[0].weight.detach().double(), solution[:-1].t(),
                               atol=tolerance * scale, rtol=0)
    torch.testing.assert_close(model[0].bias.detach().double(), solution[-1],
                               atol=tolerance * scale, rtol=0)
    # the classifier took a plain SGD step: W - grad
    ref_opt = torch.optim.SGD(reference.parameters(), lr=1.0)
    F.cross_entropy(reference(X), Y).backward()
    ref_opt.step()
    assert type(model[4]) is nn.Linear
    torch.testing.assert_close(model[4].weight, reference[4].weight, atol=1e-6, rtol=0)


def test_signal_below_is_plain_backprop_with_the_old_parameters() -> None:
    reference, model = mlp(), converted("cg3")
    torch.testing.assert_close(backward(model, X, Y), backward(reference, X, Y), atol=1e-6, rtol=0)


def test_tau_controls_the_step_length() -> None:
    lengths = []
    for tau in (0.01, 0.1, 1.0):
        model = converted("exact", tau=tau)
        backward(model, X, Y)
        lengths.append(float(model[0].weight.grad.norm()))
    assert lengths[0] < lengths[1] < lengths[2]
    # small tau: the step approaches tau times the gradient (the explicit limit)
    model = converted("exact", tau=1e-4)
    backward(model, X, Y)
    plain = mlp()
    backward(plain, X, Y)
    explicit = 1e-4 * plain[0].weight.grad
    assert float((model[0].weight.grad - explicit).norm() / explicit.norm()) < 1e-2


def test_exact_mode_on_convolutions_is_an_invalid_candidate() -> None:
    with pytest.raises(ValueError, match="cgN"):
        converted("exact", convnet)
    space = get_space("backprop")
    task = get_task("mnist1d-conv")
    job = Job(candidate=space.candidate(space.parse("proxprop(exact, tau=0.05)")), steps=1,
              seed=0, task=task)
    assert Evaluator(device="cpu").evaluate(job).status is Status.INVALID


def test_bad_modes_and_taus_are_refused() -> None:
    for mode in ("cg0", "cg", "prox_exact", "newton"):
        with pytest.raises(ValueError, match="mode"):
            ProxPropRule(mode)
    for tau in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="tau"):
            ProxPropRule("cg3", tau)
