"""Runtime of backward rules: Linear/Conv2d layers whose backward sends a rule's signal below.

Backprop Evolution (Alber, Bello, Zoph, Kindermans, Ramachandran, Le; 2018) keeps
each layer's weight update ``dW = d^T h`` and searches for a new way to compute the
signal ``g_hat`` that the layer passes to the layer below. A rule here is a small
*program*: a nested tuple such as ``("apply", ("d",), ("sign", ("W",)))`` over the
operands

- ``W`` the layer's weight, ``G`` a fixed Gaussian and ``S`` a fixed Bernoulli +-1
  matrix of W's shape and W's initial scale, ``R`` a fresh Gaussian of that shape
  drawn every backward pass;
- ``d`` the gradient arriving at the layer's output, ``h`` the layer's input;
- ``e`` the gradient at the network output and ``D`` a fixed Gaussian
  ``classes x input`` matrix (direct feedback alignment, Nokland 2016);

and the functions ``apply`` (``d @ V`` for Linear, a transposed convolution for
Conv2d), ``direct`` (``e @ D``), elementwise binaries and type-keeping unaries
(:data:`UNARY`, :data:`ELEMENTWISE`). Typing lives in ``backprop_dsl``; this module
only runs programs it is given.

Layers are converted in place by swapping the class of every exact ``nn.Linear``
and ``nn.Conv2d`` (parameters, hooks and weight sharing stay as they are) and
registering the fixed matrices as buffers, so they are saved with the model's
state. The layer calls a custom ``torch.autograd.Function`` whose backward
computes the usual weight gradient and the rule's input signal; the program
``apply(d, W)`` takes a fast path that is autograd's own computation.

This module depends on torch alone: ``BackpropSpace.export_source`` copies it
verbatim into standalone files.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: a rule as a nested tuple: ``(function, *arguments)`` or ``(operand,)``
Program = tuple[Any, ...]

BACKPROP: Program = ("apply", ("d",), ("W",))

#: fixed random operands and the buffer each is kept in
FIXED_BUFFERS = {"G": "feedback_G", "S": "feedback_S", "D": "feedback_D"}
OPERANDS = ("W", "G", "S", "R", "d", "h", "e", "D")

#: relative standard deviation of the ``noise`` unary, and the drop rate of ``dropout``
NOISE_STD = 0.1
DROP_RATE = 0.1


# --- the functions of the DSL -------------------------------------------------------


def _like(t: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    # under autocast the output gradient is in the low precision the forward ran in
    return t if t.dtype == d.dtype else t.to(d.dtype)


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.square().mean().sqrt()


def _noise(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    z = torch.randn(x.shape, generator=g, device=g.device, dtype=x.dtype).to(x.device)
    return x + z * (NOISE_STD * _rms(x))


def _dropout(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    keep = torch.rand(x.shape, generator=g, device=g.device).to(x.device) >= DROP_RATE
    return x * keep / (1.0 - DROP_RATE)


def _normalize(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    # an all-zero signal stays zero instead of becoming 0/0
    return x * torch.rsqrt(x.square().mean() + 1e-20)


def _batchnorm(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    # over dim 0: the batch for signals, the output units for weight-like values
    mean = x.mean(0, keepdim=True)
    var = x.var(0, unbiased=False, keepdim=True) if x.shape[0] > 1 else torch.zeros_like(mean)
    return (x - mean) * torch.rsqrt(var + 1e-5)


UNARY: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "neg": lambda x, g: -x,
    "abs": lambda x, g: x.abs(),
    "square": lambda x, g: x.square(),
    "sign": lambda x, g: x.sign(),
    "clip": lambda x, g: x.clamp(-1.0, 1.0),
    "normalize": _normalize,
    "batchnorm": _batchnorm,
    "noise": _noise,
    "dropout": _dropout,
}

ELEMENTWISE: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "max": torch.maximum,
    "min": torch.minimum,
    "left": lambda a, b: a,  # compiled to its left argument alone
}

TYPED_BINARY = ("apply", "direct")


def operands_of(program: Program) -> set[str]:
    """The operand names a program reads."""
    if len(program) == 1:
        return {program[0]}
    args = program[1:2] if program[0] == "left" else program[1:]
    return set().union(*(operands_of(arg) for arg in args))


def check_program(program: Program) -> None:
    """Raise ``ValueError`` unless ``program`` is a well-formed nested tuple of known names."""
    if not isinstance(program, tuple) or not program or not isinstance(program[0], str):
        raise ValueError(f"a program is a non-empty tuple starting with a name, got {program!r}")
    head, args = program[0], program[1:]
    arity = (0 if head in OPERANDS else 1 if head in UNARY
             else 2 if head in ELEMENTWISE or head in TYPED_BINARY else -1)
    if arity < 0:
        raise ValueError(f"unknown name {head!r} in program; accepted: "
                         f"{', '.join(OPERANDS + tuple(UNARY) + tuple(ELEMENTWISE) + TYPED_BINARY)}")
    if len(args) != arity:
        raise ValueError(f"{head!r} takes {arity} argument(s), got {len(args)}")
    for arg in args:
        check_program(arg)


# --- evaluating a program in one layer's backward -------------------------------------


class _Context:
    """What a program sees in one layer's backward pass."""

    __slots__ = ("layer", "h", "d", "weight", "padding", "_random")

    def __init__(self, layer: Any, h: torch.Tensor, d: torch.Tensor,
                 weight: torch.Tensor, padding: Any = None) -> None:
        self.layer, self.h, self.d, self.weight, self.padding = layer, h, d, weight, padding
        self._random: torch.Tensor | None = None

    @property
    def state(self) -> RuleState:
        return self.layer._rule_state  # type: ignore[no-any-return]

    def fixed(self, name: str) -> torch.Tensor:
        value = getattr(self.layer, FIXED_BUFFERS[name])
        if value.numel() == 0:
            raise RuntimeError(
                "the rule uses direct feedback: call rule.observe_output(logits) on every "
                "step's logits before backward(), as metalearn's training loop does")
        return _like(value, self.d)

    def random(self) -> torch.Tensor:
        # one R per layer and backward pass, however often the program reads it
        if self._random is None:
            g = self.state.generator
            z = torch.randn(self.weight.shape, generator=g, device=g.device)
            self._random = (z * self.layer.feedback_std).to(self.weight)
        return self._random

    def error(self) -> torch.Tensor:
        e = self.state.error
        if e is None:
            raise RuntimeError("the rule uses the output error e: call rule.observe_output(logits) "
                               "on every step's logits before backward()")
        return e

    def apply(self, signal: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """The signal sent below by a layer whose weight were ``matrix`` (Linear or Conv2d)."""
        if isinstance(self.layer, nn.Conv2d):
            layer = self.layer
            return torch.ops.aten.convolution_backward(
                signal, _like(self.h, signal), _like(matrix, signal), None, layer.stride,
                self.padding, layer.dilation, False, [0, 0], layer.groups, [True, False, False])[0]
        return signal @ _like(matrix, signal)

    def direct(self, error: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """``e @ D`` reshaped to this layer's input (direct feedback alignment, Nokland 2016)."""
        if error.shape[0] != self.h.shape[0]:
            raise RuntimeError(f"direct feedback needs the output error per sample: error has "
                               f"{error.shape[0]} rows, the layer's input {self.h.shape[0]}")
        return (error.to(matrix.dtype) @ matrix.flatten(1)).view(self.h.shape).to(self.h.dtype)


Signal = Callable[[_Context], torch.Tensor]


def compile_program(program: Program) -> Signal:
    """A closure computing ``program`` in a layer's backward (checked, then compiled once)."""
    check_program(program)
    return _compile(program)


def _compile(program: Program) -> Signal:
    head, args = program[0], program[1:]
    if not args:
        return _OPERAND[head]
    parts = [_compile(arg) for arg in args]
    if head in UNARY:
        unary, (x,) = UNARY[head], parts
        return lambda c: unary(x(c), c.state.generator)
    a, b = parts
    if head == "left":  # the right argument is never evaluated (it may draw random numbers)
        return a
    if head in ELEMENTWISE:
        binary = ELEMENTWISE[head]
        return lambda c: binary(a(c), b(c))
    if head == "apply":
        return lambda c: c.apply(a(c), b(c))
    return lambda c: c.direct(a(c), b(c))


_OPERAND: dict[str, Signal] = {
    "W": lambda c: c.weight,
    "G": lambda c: c.fixed("G"),
    "S": lambda c: c.fixed("S"),
    "D": lambda c: c.fixed("D"),
    "R": lambda c: c.random(),
    "d": lambda c: c.d,
    "h": lambda c: c.h,
    "e": lambda c: c.error(),
}


class RuleState:
    """What every converted layer of one model shares: the compiled rule, the generator, e."""

    def __init__(self, program: Program, generator: torch.Generator) -> None:
        self.program = program
        self.signal = compile_program(program)
        self.is_backprop = program == BACKPROP
        # D's shape is the layer input's: layers note it only when the rule needs D
        self.record_input = "D" in operands_of(program)
        self.generator = generator
        self.error: torch.Tensor | None = None

    def store_error(self, grad: torch.Tensor) -> None:
        self.error = grad.detach()


# --- autograd Functions and layers ---------------------------------------------------


class _RuleLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                layer: nn.Module) -> torch.Tensor:
        ctx.layer = layer
        ctx.save_for_backward(x, weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, d: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        x, weight = _like(x, d), _like(weight, d)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if need_x:
            state: RuleState = ctx.layer._rule_state
            if state.is_backprop:
                grad_x = d @ weight
            else:
                grad_x = state.signal(_Context(ctx.layer, x, d, weight))
        if need_w or need_b:
            d2 = d.reshape(-1, d.shape[-1])
            if need_w:  # the weight update stays backprop's d^T h (Alber et al. 2018)
                grad_w = d2.t() @ x.reshape(-1, x.shape[-1])
            if need_b:
                grad_b = d2.sum(0)
        return grad_x, grad_w, grad_b, None


class _RuleConv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                layer: nn.Conv2d, padding: tuple[int, int]) -> torch.Tensor:
        ctx.layer, ctx.padding, ctx.has_bias = layer, padding, bias is not None
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, bias, layer.stride, padding, layer.dilation, layer.groups)

    @staticmethod
    def backward(ctx: Any, d: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        x, weight = _like(x, d), _like(weight, d)
        layer: nn.Conv2d = ctx.layer
        state: RuleState = layer._rule_state  # type: ignore[assignment]
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        fused = need_x and state.is_backprop  # one call computes all three, as autograd does
        bias_sizes = [weight.shape[0]] if ctx.has_bias else None
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            d, x, weight, bias_sizes, layer.stride, ctx.padding, layer.dilation, False, [0, 0],
            layer.groups, [bool(fused), bool(need_w), bool(need_b and ctx.has_bias)])
        if need_x and not fused:
            grad_x = state.signal(_Context(layer, x, d, weight, ctx.padding))
        return grad_x, grad_w, grad_b, None, None


def conv_input(layer: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """``x`` padded as ``layer`` pads it, with the integer padding left for the convolution.

    Non-zero padding modes and ``padding="same"`` are done by ``F.pad`` (its backward,
    a crop, is left to autograd) so the Function only sees symmetric integer padding.
    """
    padding = layer.padding
    if layer.padding_mode != "zeros":
        return F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode), (0, 0)
    if isinstance(padding, str):
        if padding == "valid":
            return x, (0, 0)
        return F.pad(x, layer._reversed_padding_repeated_twice), (0, 0)
    return x, (int(padding[0]), int(padding[1]))


class RuleLinear(nn.Linear):
    """An ``nn.Linear`` whose backward sends its rule's signal to the layer below."""

    _rule_state: RuleState

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        if self._rule_state.record_input:
            self._last_input = (tuple(x.shape), x.requires_grad)
        return _RuleLinearFunction.apply(x, self.weight, self.bias, self)  # type: ignore[no-any-return]


class RuleConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` whose backward sends its rule's signal to the layer below."""

    _rule_state: RuleState

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, padding = conv_input(self, x)
        if not torch.is_grad_enabled():
            return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation,
                            self.groups)
        if self._rule_state.record_input:
            self._last_input = (tuple(x.shape), x.requires_grad)
        return _RuleConv2dFunction.apply(x, self.weight, self.bias, self, padding)  # type: ignore[no-any-return]


# --- converting a model ----------------------------------------------------------------


#: converted layer classes, by the base class they convert; other modules may add theirs
CONVERTED: set[type[nn.Module]] = {RuleLinear, RuleConv2d}
_OWN_BUFFERS = ("feedback_G", "feedback_S", "feedback_D", "feedback_std")


def convertible_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, layer)`` of every exact ``nn.Linear``/``nn.Conv2d`` (or one converted before).

    Subclasses with a forward of their own are left alone: swapping their class
    would lose it.
    """
    for name, module in model.named_modules():
        if type(module) in (nn.Linear, nn.Conv2d) or type(module) in CONVERTED:
            yield name, module


def swap_class(layer: nn.Module, linear_cls: type[nn.Module], conv_cls: type[nn.Module]) -> None:
    """Turn ``layer`` into ``linear_cls``/``conv_cls`` in place, dropping an earlier rule's buffers."""
    for buffer in _OWN_BUFFERS:
        layer._buffers.pop(buffer, None)
    if not getattr(layer, "_reconciles_feedback", False):
        layer.register_load_state_dict_pre_hook(_reconcile_buffers)
        layer.__dict__["_reconciles_feedback"] = True
    layer.__class__ = conv_cls if isinstance(layer, nn.Conv2d) else linear_cls


def _reconcile_buffers(module: nn.Module, state_dict: dict[str, Any], prefix: str,
                       *_: Any) -> None:
    """Let a checkpoint made under another rule load (population-based training continues a
    member with a mutated rule): the weights load, fixed matrices both rules use load, the
    others keep this rule's draws. ``load_state_dict`` hands hooks its own copy to edit."""
    for name in _OWN_BUFFERS:
        key, current = prefix + name, module._buffers.get(name)
        if current is None:
            state_dict.pop(key, None)
        elif key not in state_dict:
            state_dict[key] = current
        elif name == "feedback_D" and current.shape != state_dict[key].shape:
            # D is drawn at the first step (it needs the input size and the class count);
            # a checkpoint may hold it before this model has run a step
            module._buffers[name] = torch.empty_like(state_dict[key], device=current.device)


def default_generator(model: nn.Module) -> torch.Generator:
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    return torch.Generator(device=device).manual_seed(0)


class BackpropRule:
    """A backward rule given by a program; ``apply`` converts a model, ``observe_output`` feeds e.

    Implements metalearn's ``BackwardRule`` protocol. One rule object serves the
    last model it was applied to.
    """

    def __init__(self, program: Program) -> None:
        check_program(program)
        self.program = program
        self.uses = operands_of(program)
        self.state: RuleState | None = None
        self.layers: list[Any] = []  # converted layers carry the rule's attributes

    def __repr__(self) -> str:
        return f"BackpropRule({self.program!r})"

    def apply(self, model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
        """Convert every ``nn.Linear``/``nn.Conv2d`` of ``model`` in place; returns ``model``.

        G and S are drawn here, layer by layer in module order, from ``generator``;
        D is drawn at the first ``observe_output`` (it needs the class count).
        """
        generator = generator if generator is not None else default_generator(model)
        self.state = RuleState(self.program, generator)
        self.layers = []
        for _, module in convertible_layers(model):
            swap_class(module, RuleLinear, RuleConv2d)
            layer: Any = module
            layer._rule_state = self.state
            layer._last_input = None
            self._add_buffers(layer, generator)
            self.layers.append(layer)
        return model

    def _add_buffers(self, layer: Any, generator: torch.Generator) -> None:
        weight: torch.Tensor = layer.weight
        # "scaled like W's init": the std of W as the model initialised it
        std = float(weight.detach().float().std()) if weight.numel() > 1 else 0.0
        if not math.isfinite(std) or std == 0.0:
            std = 1.0 / math.sqrt(3.0 * max(weight[0].numel(), 1))
        layer.register_buffer("feedback_std", torch.tensor(std, device=weight.device))
        if "G" in self.uses:
            z = torch.randn(weight.shape, generator=generator, device=generator.device)
            layer.register_buffer("feedback_G", (z * std).to(weight))
        if "S" in self.uses:
            coin = torch.rand(weight.shape, generator=generator, device=generator.device) < 0.5
            layer.register_buffer("feedback_S", ((coin.float() * 2 - 1) * std).to(weight))
        if "D" in self.uses:
            layer.register_buffer("feedback_D", torch.empty(0, device=weight.device))

    @property
    def needs_error(self) -> bool:
        return "e" in self.uses or "D" in self.uses

    def observe_output(self, logits: torch.Tensor) -> None:
        """Hook the network output so its gradient ``e`` reaches direct-feedback rules."""
        if self.state is None or not self.needs_error or not logits.requires_grad:
            return
        self.state.error = None
        if "D" in self.uses:
            self._draw_direct_matrices(logits.shape[-1])
        logits.register_hook(self.state.store_error)

    def _draw_direct_matrices(self, classes: int) -> None:
        assert self.state is not None
        generator = self.state.generator
        for layer in self.layers:
            seen = layer._last_input
            if seen is None or not seen[1] or layer.feedback_D.numel() > 0:
                continue  # not run yet, first layer (no signal needed), or drawn already
            shape = (classes, *seen[0][1:])
            z = torch.randn(shape, generator=generator, device=generator.device)
            # std 1/sqrt(classes): e @ D then has the RMS of e per entry
            layer.feedback_D = (z / math.sqrt(classes)).to(layer.weight)
