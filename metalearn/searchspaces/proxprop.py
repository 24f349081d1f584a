"""ProxProp: proximal steps on the parameters of linear layers.

Frerix, Moellenhoff, Moeller, Cremers. "Proximal Backpropagation", ICLR 2018.
Backprop is a sequence of explicit gradient steps on a penalty energy whose
variables include the activations; ProxProp takes an implicit (proximal) step on
the parameters of each Linear/Conv2d layer instead. For a layer with input ``A``
(plus a column of ones for the bias), parameters ``Z`` and output ``z = A Z``:

1. explicit step on the output: ``y = z - grad_z``;
2. proximal step, ``beta = 1 / tau_prox``:
   ``X = argmin_X 1/2 ||A X - y||^2 + beta/2 ||X - Z||^2``, i.e.
   ``(A^T A + beta I) X = A^T y + beta Z``;
3. the "gradient" handed to the optimizer is ``Z - X``, so SGD with learning rate
   1 takes exactly the proximal step;
4. the layer below receives ordinary backprop of ``grad_z`` with the old parameters.

Writing ``X = Z - delta`` the system becomes ``(A^T A + beta I) delta = A^T grad_z``:
the right-hand side is the plain gradient, which is what we solve for. Modes:

- ``exact``: Linear only, ``torch.linalg.solve``. When the batch has fewer rows
  than the layer has inputs we solve the equivalent smaller system
  ``delta = A^T (A A^T + beta I)^-1 grad_z`` (push-through identity).
- ``cgN``: N conjugate-gradient iterations from ``delta = 0`` (the paper's warm
  start at ``Z``), matrix-free: ``A`` is the layer's own forward, ``A^T`` its
  adjoint (the weight gradient). Each output unit / channel is an independent
  system, so the CG runs column-wise and stops early once the worst squared
  residual is below 1e-4 of the mean initial one (as the authors' code does).
- ``gradient``: ``delta = A^T grad_z`` through the same adjoint, the plain
  gradient at the same overhead: a correctness check.

As in the paper's models, the last Linear/Conv2d in module order (the classifier)
keeps its explicit gradient step; nonlinearities and pooling are autograd's.
Depends on torch and ``backprop_layers`` only (``export_source`` copies both).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .backprop_layers import CONVERTED, conv_input, convertible_layers, swap_class

Params = tuple[torch.Tensor, torch.Tensor | None]

#: relative squared-residual tolerance of the CG's early stop (Frerix et al. 2018)
CG_TOLERANCE = 1e-4
MODES = ("exact", "gradient", "cgN")


def parse_mode(mode: str) -> int:
    """CG iterations of ``mode`` (0 for ``exact`` and ``gradient``); ``ValueError`` if unknown."""
    if mode in ("exact", "gradient"):
        return 0
    match = re.fullmatch(r"cg([1-9][0-9]*)", mode)
    if match is None:
        raise ValueError(f"unknown ProxProp mode {mode!r}; accepted: exact, gradient, cgN (N >= 1)")
    return int(match.group(1))


# --- the linear operator A of one layer, matrix-free ------------------------------------


def _forward(layer: nn.Module, x: torch.Tensor, params: Params, padding: Any) -> torch.Tensor:
    """``A v``: the layer's own forward with parameters ``params``."""
    weight, bias = params
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(x, weight, bias, layer.stride, padding, layer.dilation, layer.groups)
    return F.linear(x, weight, bias)


def _adjoint(layer: nn.Module, x: torch.Tensor, u: torch.Tensor, has_bias: bool,
             weight: torch.Tensor, padding: Any) -> Params:
    """``A^T u``: the weight (and bias) gradient the layer would get for output gradient ``u``."""
    if isinstance(layer, nn.Conv2d):
        _, grad_w, grad_b = torch.ops.aten.convolution_backward(
            u, x, weight, [weight.shape[0]] if has_bias else None, layer.stride, padding,
            layer.dilation, False, [0, 0], layer.groups, [False, True, has_bias])
        return grad_w, grad_b
    u2, x2 = u.reshape(-1, u.shape[-1]), x.reshape(-1, x.shape[-1])
    return u2.t() @ x2, (u2.sum(0) if has_bias else None)


def _dot(p: Params, q: Params) -> torch.Tensor:
    """Inner products per output unit (the CG's columns)."""
    out = torch.linalg.vecdot(p[0].flatten(1), q[0].flatten(1))
    if p[1] is not None and q[1] is not None:
        out = out + p[1] * q[1]
    return out


def _per_unit(alpha: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``alpha`` (one value per output unit) shaped to broadcast over ``weight``."""
    return alpha.view(-1, *([1] * (weight.dim() - 1)))


def _add_scaled_(q: Params, alpha: torch.Tensor, p: Params) -> None:
    """``q += alpha * p`` in place, one ``alpha`` per output unit.

    In place because fresh weight-sized tensors cost more than the arithmetic on a CPU
    (every large allocation is new pages), which made CG steps several times slower.
    """
    q[0].addcmul_(_per_unit(alpha, p[0]), p[0])
    if q[1] is not None and p[1] is not None:
        q[1].addcmul_(alpha, p[1])


def _safe_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # a column with zero gradient (a dead unit) has nothing to solve: step 0, not 0/0
    return torch.where(b > 0, a / torch.where(b > 0, b, torch.ones_like(b)), torch.zeros_like(a))


def conjugate_gradient(apply_m: Callable[[Params], Params], rhs: Params, iterations: int
                       ) -> Params:
    """Column-wise CG for ``M delta = rhs`` from ``delta = 0`` (M symmetric positive definite).

    ``rhs`` is used as the residual and overwritten; ``apply_m`` must return fresh tensors.
    """
    r = rhs
    p: Params = (r[0].clone(), None if r[1] is None else r[1].clone())
    delta: Params = (torch.zeros_like(r[0]), None if r[1] is None else torch.zeros_like(r[1]))
    rs = _dot(r, r)
    threshold = CG_TOLERANCE * rs.mean()
    for k in range(iterations):
        mp = apply_m(p)
        alpha = _safe_div(rs, _dot(p, mp))
        _add_scaled_(delta, alpha, p)
        if k == iterations - 1:
            break
        _add_scaled_(r, -alpha, mp)
        rs_new = _dot(r, r)
        if bool(rs_new.max() <= threshold):
            break
        scale = _safe_div(rs_new, rs)
        p[0].mul_(_per_unit(scale, p[0])).add_(r[0])
        if p[1] is not None and r[1] is not None:
            p[1].mul_(scale).add_(r[1])
        rs = rs_new
    return delta


def _exact(x: torch.Tensor, grad_z: torch.Tensor, has_bias: bool, beta: float) -> Params:
    """``(A^T A + beta I)^-1 A^T grad_z`` for a Linear layer, by ``torch.linalg.solve``."""
    a = x.reshape(-1, x.shape[-1])
    g = grad_z.reshape(-1, grad_z.shape[-1]).to(a.dtype)
    if has_bias:
        a = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
    rows, cols = a.shape
    if rows < cols:  # push-through: A^T (A A^T + beta I)^-1 g, a rows x rows system
        eye = torch.eye(rows, dtype=a.dtype, device=a.device)
        delta = a.t() @ torch.linalg.solve(a @ a.t() + beta * eye, g)
    else:
        eye = torch.eye(cols, dtype=a.dtype, device=a.device)
        delta = torch.linalg.solve(a.t() @ a + beta * eye, a.t() @ g)
    if has_bias:
        return delta[:-1].t(), delta[-1]
    return delta.t(), None


class _ProxPropFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                layer: nn.Module, padding: Any) -> torch.Tensor:
        ctx.layer, ctx.padding, ctx.has_bias = layer, padding, bias is not None
        ctx.save_for_backward(x, weight)
        return _forward(layer, x, (weight, bias), padding)

    @staticmethod
    def backward(ctx: Any, grad_z: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        layer, padding, has_bias = ctx.layer, ctx.padding, ctx.has_bias
        grad_x = None
        if ctx.needs_input_grad[0]:  # step 4: plain backprop with the old parameters
            if isinstance(layer, nn.Conv2d):
                grad_x = torch.ops.aten.convolution_backward(
                    grad_z, x, weight, None, layer.stride, padding, layer.dilation, False,
                    [0, 0], layer.groups, [True, False, False])[0]
            else:
                grad_x = grad_z @ weight
        gradient = _adjoint(layer, x, grad_z, has_bias, weight, padding)
        beta = 1.0 / layer.tau_prox
        if layer.mode == "gradient":
            delta = gradient
        elif layer.mode == "exact":
            delta = _exact(x, grad_z, has_bias, beta)
        else:
            def apply_m(p: Params) -> Params:  # (A^T A + beta I) p, matrix-free
                ata = _adjoint(layer, x, _forward(layer, x, p, padding), has_bias, weight, padding)
                ata[0].add_(p[0], alpha=beta)
                if ata[1] is not None and p[1] is not None:
                    ata[1].add_(p[1], alpha=beta)
                return ata

            delta = conjugate_gradient(apply_m, gradient, layer.cg_iterations)
        grad_b = delta[1] if has_bias and ctx.needs_input_grad[2] else None
        grad_w = delta[0] if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, grad_b, None, None


class ProxPropLinear(nn.Linear):
    """An ``nn.Linear`` whose parameter gradient is ``Z - X`` of a proximal step."""

    tau_prox: float
    mode: str
    cg_iterations: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        return _ProxPropFunction.apply(x, self.weight, self.bias, self, None)  # type: ignore[no-any-return]


class ProxPropConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` whose parameter gradient is ``Z - X`` of a proximal step (CG or gradient)."""

    tau_prox: float
    mode: str
    cg_iterations: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, padding = conv_input(self, x)
        if not torch.is_grad_enabled():
            return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation,
                            self.groups)
        return _ProxPropFunction.apply(x, self.weight, self.bias, self, padding)  # type: ignore[no-any-return]


CONVERTED.update({ProxPropLinear, ProxPropConv2d})


class ProxPropRule:
    """ProxProp as a backward rule (metalearn's ``BackwardRule`` protocol).

    Args:
        mode: ``"exact"`` (Linear layers only), ``"cgN"`` (N >= 1) or ``"gradient"``.
        tau_prox: the proximal step size; ``beta = 1 / tau_prox``.
        explicit_classifier: keep the last Linear/Conv2d on plain backprop, as the paper does.
    """

    def __init__(self, mode: str = "cg3", tau_prox: float = 0.05,
                 explicit_classifier: bool = True) -> None:
        self.cg_iterations = parse_mode(mode)
        if not tau_prox > 0 or tau_prox == float("inf"):
            raise ValueError(f"tau_prox must be a positive finite number, got {tau_prox!r}")
        self.mode, self.tau_prox = mode, float(tau_prox)
        self.explicit_classifier = explicit_classifier

    def __repr__(self) -> str:
        return f"ProxPropRule(mode={self.mode!r}, tau_prox={self.tau_prox!r})"

    def apply(self, model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
        """Convert the model's Linear/Conv2d layers in place (no randomness is used)."""
        layers = [layer for _, layer in convertible_layers(model)]
        if self.explicit_classifier and layers:
            swap_class(layers.pop(), nn.Linear, nn.Conv2d)
        if self.mode == "exact" and any(isinstance(layer, nn.Conv2d) for layer in layers):
            raise ValueError("ProxProp's exact mode solves the normal equations of Linear layers "
                             "only; use a cgN mode for models with Conv2d layers")
        for module in layers:
            swap_class(module, ProxPropLinear, ProxPropConv2d)
            layer: Any = module
            layer.tau_prox, layer.mode, layer.cg_iterations = (
                self.tau_prox, self.mode, self.cg_iterations)
        return model

    def observe_output(self, logits: torch.Tensor) -> None:
        """ProxProp needs no output error."""
