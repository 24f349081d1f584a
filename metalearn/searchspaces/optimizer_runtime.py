"""Run an optimizer-DSL rule (Bello et al. 2017) as a ``torch.optim.Optimizer``.

:class:`RuleOptimizer` evaluates a rule tree once per step for *all* tensors of a
parameter group with multi-tensor ``torch._foreach_*`` ops, and keeps only the
running averages the rule reads. Values are either Python floats (constants, the
decay schedules; they never become tensors) or lists of tensors; temporaries the
evaluation owns are updated in place. ``w <- w - lr * U`` with the rule's value
``U``; the factory's ``weight_decay`` is decoupled (``w <- w - lr * wd * w``, as in
AdamW and Lion), so the rule sees the pure gradient. A rule whose value is exactly
the ``adam`` operand is applied with the fused ``addcdiv`` of ``torch.optim.Adam``.

The helper functions above the class use only torch and builtins: the exporter
(:mod:`.optimizer_export`) copies their source into standalone files, so an
exported optimizer computes its scalars, random draws and state exactly as here.
Scalars (folded constants, functions of the schedules) are computed in float64 by
the same helpers that constant folding uses, so a rule and its simplified form
agree.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from .expr import Binary, Const, Leaf, Node, Unary

# ------------------------------------------------------------------ constants

BETA_M = 0.9  # m: running average of g (Bello et al. 2017)
BETA_V = 0.999  # v: running average of g^2
BETA_Y = 0.999  # y: running average of g^3
BETA_LION = 0.99  # m99: Lion's momentum (Chen et al. 2023)
INTERP_BETA = 0.9  # interp(x, y) = beta * x + (1 - beta) * y (Lion's beta1)
EPS = 1e-8  # in div, adam and rmsprop
NOISE_STD = 0.01  # noise ~ N(0, 0.01^2)
CD_PERIODS = 0.5  # n of the cosine decay cd
RD_PERIODS = 1.0  # n of the restart decay rd
CLIPS = {"clip5": 1e-5, "clip4": 1e-4, "clip3": 1e-3}
DROPS = {"drop10": 0.1, "drop30": 0.3, "drop50": 0.5}
WEIGHT_DECAYS = {"wd4": 1e-4, "wd3": 1e-3, "wd2": 1e-2, "wd1": 1e-1}
#: state buffers, by the operand that needs them
BUFFERS = {"m": ("m",), "sign_m": ("m",), "v": ("v",), "y": ("y",), "m99": ("m99",),
           "adam": ("m", "v"), "rmsprop": ("v",)}
SCHEDULES = ("ld", "cd", "rd")
CONSTANT_NAMES = ("BETA_M", "BETA_V", "BETA_Y", "BETA_LION", "INTERP_BETA", "EPS", "NOISE_STD",
                  "CD_PERIODS", "RD_PERIODS")


# ------------------------------------------------ helpers shared with exported files


def _f64(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def _s_exp(x: float) -> float:
    return float(torch.exp(_f64(x)))


def _s_log(x: float) -> float:
    return float(torch.log(torch.abs(_f64(x))))


def _s_sqrt(x: float) -> float:
    return float(torch.sqrt(torch.abs(_f64(x))))


def _s_sign(x: float) -> float:
    return float(torch.sign(_f64(x)))


def _s_clip(x: float, c: float) -> float:
    return float(torch.clamp(_f64(x), -c, c))


def _s_div(x: float, y: float) -> float:
    return float(_f64(x) / (y + EPS))


def _s_pow(x: float, y: float) -> float:
    return float(torch.pow(_f64(x), _f64(y)))


def _s_interp(x: float, y: float) -> float:
    return x * INTERP_BETA + y * (1 - INTERP_BETA)


def _decays(t: int, total: int) -> tuple[float, float, float]:
    """Linear, cosine and restart decay at update ``t`` (0 first) of ``total``
    (TensorFlow's ``sign_decay`` functions used with PowerSign/AddSign)."""
    t = min(t, total)
    ld = max(0.0, (total - t) / total)
    cd = 0.5 * (1.0 + float(torch.cos(_f64(torch.pi * 2.0 * CD_PERIODS * t / total))))
    rd = 0.5 * (1.0 + float(torch.cos(_f64(torch.pi * ((RD_PERIODS * t) % total) / total))))
    return ld, cd, rd


def _adam_scalars(step: int) -> tuple[float, float]:
    """Adam's bias corrections ``1 - beta1^t`` and ``sqrt(1 - beta2^t)``."""
    return 1 - BETA_M**step, (1 - BETA_V**step) ** 0.5


def _prepare(state: dict, params: list[torch.Tensor],
             buffers: tuple[str, ...]) -> list[tuple[int, list[torch.Tensor]]]:
    """Create missing state, count the step, and group the parameters that have a
    gradient by device, dtype and step: ``[(step, params), ...]``."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise RuntimeError("optimizer-DSL rules do not support sparse gradients")
        st = state[p]
        if len(st) == 0:
            st["step"] = 0
            for name in buffers:
                st[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
        st["step"] = int(st["step"]) + 1
        groups.setdefault((p.device, p.dtype, st["step"]), []).append(p)
    return [(key[2], ps) for key, ps in groups.items()]


def _uniform(params: list[torch.Tensor], generator: torch.Generator | None) -> torch.Tensor:
    """One flat draw of U[0, 1) covering every parameter (one call, reproducible)."""
    n = sum(p.numel() for p in params)
    device = generator.device if generator is not None else params[0].device
    flat = torch.rand(n, generator=generator, device=device, dtype=params[0].dtype)
    return flat.to(params[0].device)


def _split(flat: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    chunks = flat.split([p.numel() for p in params])
    return [c.view(p.shape) for c, p in zip(chunks, params)]


def _keep_masks(params: list[torch.Tensor], rate: float,
                generator: torch.Generator | None) -> list[torch.Tensor]:
    """Masks that keep each entry with probability ``1 - rate`` (drop, no rescaling)."""
    return _split((_uniform(params, generator) >= rate).to(params[0].dtype), params)


def _noise(params: list[torch.Tensor], generator: torch.Generator | None) -> list[torch.Tensor]:
    """Fresh Gaussian noise with standard deviation ``NOISE_STD`` for every parameter."""
    n = sum(p.numel() for p in params)
    device = generator.device if generator is not None else params[0].device
    flat = torch.randn(n, generator=generator, device=device, dtype=params[0].dtype)
    return _split(flat.to(params[0].device).mul_(NOISE_STD), params)


HELPERS: tuple[Callable[..., Any], ...] = (
    _f64, _s_exp, _s_log, _s_sqrt, _s_sign, _s_clip, _s_div, _s_pow, _s_interp,
    _decays, _adam_scalars, _prepare, _uniform, _split, _keep_masks, _noise,
)

# ------------------------------------------------------------------ scalar meaning

SCALAR_UNARY: dict[str, Callable[[float], float]] = {
    "neg": lambda x: -x,
    "exp": _s_exp,
    "log": _s_log,
    "sqrt": _s_sqrt,
    "sign": _s_sign,
}
for _name, _c in CLIPS.items():
    SCALAR_UNARY[_name] = functools.partial(_s_clip, c=_c)
SCALAR_BINARY: dict[str, Callable[[float, float], float]] = {
    "add": lambda x, y: x + y,
    "sub": lambda x, y: x - y,
    "mul": lambda x, y: x * y,
    "div": _s_div,
    "pow": _s_pow,
    "interp": _s_interp,
}
OPERAND_VALUES = {"1": 1.0, "2": 2.0}


def effective(node: Node) -> Node:
    """``node`` without identity unaries and ignored ``left`` arguments at its top."""
    while True:
        if isinstance(node, Unary) and node.fn == "id":
            node = node.arg
        elif isinstance(node, Binary) and node.fn == "left":
            node = node.left
        else:
            return node


def operands_read(node: Node) -> set[str]:
    """Operands that evaluating ``node`` reads (``left`` ignores its right side)."""
    if isinstance(node, Leaf):
        return {node.name}
    if isinstance(node, Unary):
        return operands_read(node.arg)
    if isinstance(node, Binary):
        found = operands_read(node.left)
        return found if node.fn == "left" else found | operands_read(node.right)
    return set()


def buffers_for(node: Node) -> tuple[str, ...]:
    needed = {b for name in operands_read(node) for b in BUFFERS.get(name, ())}
    return tuple(b for b in ("m", "v", "y", "m99") if b in needed)


# ------------------------------------------------------------------ foreach evaluation


@dataclass
class _Tensors:
    """A value that is one tensor per parameter; ``owned`` temporaries may be overwritten."""

    ts: list[torch.Tensor]
    owned: bool


Value = float | _Tensors


def _map(x: _Tensors, inplace: Callable[..., Any], outplace: Callable[..., Any],
         *args: Any) -> _Tensors:
    if x.owned:
        inplace(x.ts, *args)
        return x
    return _Tensors(list(outplace(x.ts, *args)), True)


class _Step:
    """Evaluation of one rule for one group of parameters at one step."""

    def __init__(self, params: list[torch.Tensor], grads: list[torch.Tensor],
                 buffers: dict[str, list[torch.Tensor]], step: int, total_steps: int | None,
                 generator: torch.Generator | None) -> None:
        self.params, self.grads, self.buffers = params, grads, buffers
        self.step, self.total_steps, self.generator = step, total_steps, generator
        self._decays: tuple[float, float, float] | None = None

    def value(self, node: Node) -> Value:
        if isinstance(node, Leaf):
            return self.leaf(node.name)
        if isinstance(node, Const):
            return node.value
        if isinstance(node, Unary):
            x = self.value(node.arg)
            return x if node.fn == "id" else self.unary(node.fn, x)
        left = self.value(node.left)
        if node.fn == "left":
            return left
        return self.binary(node.fn, left, self.value(node.right))

    def adam_denominator(self) -> list[torch.Tensor]:
        _, bc2_sqrt = _adam_scalars(self.step)
        denom = torch._foreach_sqrt(self.buffers["v"])
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, EPS)
        return list(denom)

    def leaf(self, name: str) -> Value:
        g = self.grads
        if name in OPERAND_VALUES:
            return OPERAND_VALUES[name]
        if name in SCHEDULES:
            if self._decays is None:
                if not self.total_steps:
                    raise ValueError(f"operand {name} needs total_steps")
                self._decays = _decays(self.step - 1, self.total_steps)
            return self._decays[SCHEDULES.index(name)]
        if name == "g":
            return _Tensors(g, False)
        if name == "g2":
            return _Tensors(list(torch._foreach_mul(g, g)), True)
        if name == "g3":
            cube = list(torch._foreach_mul(g, g))
            torch._foreach_mul_(cube, g)
            return _Tensors(cube, True)
        if name in ("m", "v", "y", "m99"):
            return _Tensors(self.buffers[name], False)
        if name == "sign_g":
            return _Tensors(list(torch._foreach_sign(g)), True)
        if name == "sign_m":
            return _Tensors(list(torch._foreach_sign(self.buffers["m"])), True)
        if name == "noise":
            return _Tensors(_noise(self.params, self.generator), True)
        if name in WEIGHT_DECAYS:
            return _Tensors(list(torch._foreach_mul(self.params, WEIGHT_DECAYS[name])), True)
        if name == "adam":
            bc1, _ = _adam_scalars(self.step)
            out = list(torch._foreach_div(self.buffers["m"], bc1))
            torch._foreach_div_(out, self.adam_denominator())
            return _Tensors(out, True)
        if name == "rmsprop":
            denom = list(torch._foreach_sqrt(self.buffers["v"]))
            torch._foreach_add_(denom, EPS)
            return _Tensors(list(torch._foreach_div(g, denom)), True)
        raise KeyError(f"unknown operand {name!r}")

    def unary(self, fn: str, x: Value) -> Value:
        if fn in DROPS:
            masks = _keep_masks(self.params, DROPS[fn], self.generator)
            if isinstance(x, float):
                torch._foreach_mul_(masks, x)
                return _Tensors(masks, True)
            return _map(x, torch._foreach_mul_, torch._foreach_mul, masks)
        if isinstance(x, float):
            return SCALAR_UNARY[fn](x)
        if fn == "neg":
            return _map(x, torch._foreach_neg_, torch._foreach_neg)
        if fn == "exp":
            return _map(x, torch._foreach_exp_, torch._foreach_exp)
        if fn in ("log", "sqrt"):
            y = _map(x, torch._foreach_abs_, torch._foreach_abs)
            (torch._foreach_log_ if fn == "log" else torch._foreach_sqrt_)(y.ts)
            return y
        if fn == "sign":
            return _map(x, torch._foreach_sign_, torch._foreach_sign)
        if fn in CLIPS:
            y = _map(x, torch._foreach_clamp_min_, torch._foreach_clamp_min, -CLIPS[fn])
            torch._foreach_clamp_max_(y.ts, CLIPS[fn])
            return y
        raise KeyError(f"unknown unary function {fn!r}")

    def binary(self, fn: str, x: Value, y: Value) -> Value:
        if isinstance(x, float) and isinstance(y, float):
            return SCALAR_BINARY[fn](x, y)
        if fn in ("add", "mul"):
            inplace = torch._foreach_add_ if fn == "add" else torch._foreach_mul_
            outplace = torch._foreach_add if fn == "add" else torch._foreach_mul
            if isinstance(x, float):
                x, y = y, x  # exact: both are commutative
            assert isinstance(x, _Tensors)
            if isinstance(y, _Tensors) and y.owned and not x.owned:
                x, y = y, x
            return _map(x, inplace, outplace, y if isinstance(y, float) else y.ts)
        if fn == "sub":
            if isinstance(x, float):  # x - y as -y + x
                assert isinstance(y, _Tensors)
                out = _map(y, torch._foreach_neg_, torch._foreach_neg)
                torch._foreach_add_(out.ts, x)
                return out
            return _map(x, torch._foreach_sub_, torch._foreach_sub,
                        y if isinstance(y, float) else y.ts)
        if fn == "div":  # x / (y + eps)
            if isinstance(y, float):
                assert isinstance(x, _Tensors)
                return _map(x, torch._foreach_div_, torch._foreach_div, y + EPS)
            denom = _map(y, torch._foreach_add_, torch._foreach_add, EPS)
            if isinstance(x, float):  # reciprocal(y + eps) * x
                torch._foreach_reciprocal_(denom.ts)
                torch._foreach_mul_(denom.ts, x)
                return denom
            return _map(x, torch._foreach_div_, torch._foreach_div, denom.ts)
        if fn == "pow":
            if isinstance(x, float):
                assert isinstance(y, _Tensors)
                return _Tensors(list(torch._foreach_pow(x, y.ts)), True)
            return _map(x, torch._foreach_pow_, torch._foreach_pow,
                        y if isinstance(y, float) else y.ts)
        if fn == "interp":  # x * beta + y * (1 - beta)
            if isinstance(x, float):
                assert isinstance(y, _Tensors)
                out = _map(y, torch._foreach_mul_, torch._foreach_mul, 1 - INTERP_BETA)
                torch._foreach_add_(out.ts, x * INTERP_BETA)
                return out
            out = _map(x, torch._foreach_mul_, torch._foreach_mul, INTERP_BETA)
            if isinstance(y, float):
                torch._foreach_add_(out.ts, y * (1 - INTERP_BETA))
            else:
                scaled = _map(y, torch._foreach_mul_, torch._foreach_mul, 1 - INTERP_BETA)
                torch._foreach_add_(out.ts, scaled.ts)
            return out
        raise KeyError(f"unknown binary function {fn!r}")


class RuleOptimizer(torch.optim.Optimizer):
    """``w <- w - lr * (U + weight_decay * w)`` with ``U`` an optimizer-DSL rule.

    Args:
        params: parameters or parameter groups.
        rule: the rule's tree (type-checked by the space).
        lr: learning rate (per group; LR schedulers may change it).
        weight_decay: decoupled weight decay (per group).
        total_steps: ``T`` of the decay schedules ``ld``, ``cd``, ``rd``; required
            when the rule reads one of them.
        generator: the source of the ``noise`` operand and of ``drop`` masks.
        text: the rule's DSL text, for ``repr``.
    """

    def __init__(self, params: Iterable[Any], rule: Node, lr: float = 0.1,
                 weight_decay: float = 0.0, total_steps: int | None = None,
                 generator: torch.Generator | None = None, text: str = "") -> None:
        if not lr >= 0.0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        reads = operands_read(rule)
        if reads & set(SCHEDULES) and (total_steps is None or total_steps <= 0):
            raise ValueError(f"rule {text or rule} uses a decay schedule (ld, cd, rd) and needs "
                             f"total_steps > 0, got {total_steps}")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay,
                                  "total_steps": total_steps})
        self.rule = rule
        self.text = text
        self.generator = generator
        self.root = effective(rule)
        self.buffer_names = buffers_for(rule)

    def __repr__(self) -> str:
        return f"RuleOptimizer({self.text or self.rule}, lr={self.defaults['lr']})"

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for step, params in _prepare(self.state, group["params"], self.buffer_names):
                self._update(group, step, params)
        return loss

    def _update(self, group: dict[str, Any], step: int, params: list[torch.Tensor]) -> None:
        lr, wd = float(group["lr"]), float(group["weight_decay"])
        grads = [p.grad for p in params if p.grad is not None]
        states = [self.state[p] for p in params]
        buffers = {name: [s[name] for s in states] for name in self.buffer_names}
        if "m" in buffers:
            torch._foreach_lerp_(buffers["m"], grads, 1 - BETA_M)
        if "v" in buffers:
            torch._foreach_mul_(buffers["v"], BETA_V)
            torch._foreach_addcmul_(buffers["v"], grads, grads, value=1 - BETA_V)
        if "y" in buffers:
            torch._foreach_mul_(buffers["y"], BETA_Y)
            torch._foreach_addcmul_(buffers["y"], torch._foreach_mul(grads, grads), grads,
                                    value=1 - BETA_Y)
        run = _Step(params, grads, buffers, step, group["total_steps"], self.generator)
        if self.root == Leaf("adam"):  # the fused update of torch.optim.Adam
            bc1, _ = _adam_scalars(step)
            denom = run.adam_denominator()
            if wd != 0:
                torch._foreach_mul_(params, 1 - lr * wd)
            torch._foreach_addcdiv_(params, buffers["m"], denom, value=-(lr / bc1))
        else:
            update = run.value(self.rule)
            if wd != 0:
                torch._foreach_mul_(params, 1 - lr * wd)
            if isinstance(update, float):
                torch._foreach_add_(params, -lr * update)
            else:
                torch._foreach_add_(params, update.ts, alpha=-lr)
        if "m99" in buffers:  # Lion reads its momentum before updating it
            torch._foreach_mul_(buffers["m99"], BETA_LION)
            torch._foreach_add_(buffers["m99"], grads, alpha=1 - BETA_LION)


@dataclass(frozen=True)
class RuleFactory:
    """``make_opt(params, lr=0.1, weight_decay=0.0, total_steps=None, generator=None)``.

    Picklable (a tree and its text), so it travels to worker processes; the
    recipe's other keywords (``momentum``, ...) are accepted and ignored: the
    rule fixes its own averages.
    """

    rule: Node
    text: str = ""

    def __call__(self, params: Iterable[Any], lr: float = 0.1, weight_decay: float = 0.0,
                 total_steps: int | None = None, generator: torch.Generator | None = None,
                 **ignored: Any) -> torch.optim.Optimizer:
        return RuleOptimizer(params, self.rule, lr=lr, weight_decay=weight_decay,
                             total_steps=total_steps, generator=generator, text=self.text)
