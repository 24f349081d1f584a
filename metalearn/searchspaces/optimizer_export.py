"""Write an optimizer-DSL rule (Bello et al. 2017) as a standalone PyTorch file.

The file imports torch and nothing else. It copies the runtime's helpers (state
creation, step counting, schedules, random draws, scalar functions) from
:mod:`.optimizer_runtime` verbatim, and writes the rule itself as one readable
per-tensor expression, e.g. ``u = torch.exp(torch.sign(g) * torch.sign(m)) * g``.
Every operation mirrors the runtime's multi-tensor one (same op, same operand
order, random numbers drawn in the same order), so on CPU the exported optimizer
follows ``OptimizerSpace.build(rule)`` bit for bit; on CUDA the fused multi-tensor
kernels may round differently in the last place.
"""

from __future__ import annotations

import inspect
import math
import re
import textwrap

from . import optimizer_runtime as rt
from .expr import Binary, Const, Leaf, Node, Unary

_TENSOR_LEAVES = {
    "g": "g",
    "g2": "(g * g)",
    "g3": "(g * g * g)",
    "m": "m",
    "v": "v",
    "y": "y",
    "m99": "m99",
    "sign_g": "torch.sign(g)",
    "sign_m": "torch.sign(m)",
    "adam": "(m / bc1 / (torch.sqrt(v) / bc2_sqrt + EPS))",
    "rmsprop": "(g / (torch.sqrt(v) + EPS))",
    **{name: f"(p * {c!r})" for name, c in rt.WEIGHT_DECAYS.items()},
}
_TENSOR_UNARY = {
    "neg": "(-{})",
    "exp": "torch.exp({})",
    "log": "torch.log(torch.abs({}))",
    "sqrt": "torch.sqrt(torch.abs({}))",
    "sign": "torch.sign({})",
    **{name: f"torch.clamp({{}}, {-c!r}, {c!r})" for name, c in rt.CLIPS.items()},
}
_SCALAR_UNARY = {
    "neg": "(-{})",
    "exp": "_s_exp({})",
    "log": "_s_log({})",
    "sqrt": "_s_sqrt({})",
    "sign": "_s_sign({})",
    **{name: f"_s_clip({{}}, {c!r})" for name, c in rt.CLIPS.items()},
}
_SCALAR_BINARY = {
    "add": "({} + {})",
    "sub": "({} - {})",
    "mul": "({} * {})",
    "div": "_s_div({}, {})",
    "pow": "_s_pow({}, {})",
    "interp": "_s_interp({}, {})",
}
# (tensor x, tensor y), (tensor x, scalar s), (scalar s, tensor y), as the runtime computes them
_TENSOR_BINARY = {
    "add": ("({x} + {y})", "({x} + {y})", "({x} + {y})"),
    "sub": ("({x} - {y})", "({x} - {y})", "(-{y} + {x})"),
    "mul": ("({x} * {y})", "({x} * {y})", "({x} * {y})"),
    "div": ("({x} / ({y} + EPS))", "({x} / ({y} + EPS))", "(torch.reciprocal({y} + EPS) * {x})"),
    "pow": ("torch.pow({x}, {y})", "torch.pow({x}, {y})", "torch.pow({x}, {y})"),
    "interp": ("({x} * INTERP_BETA + {y} * (1 - INTERP_BETA))",
               "({x} * INTERP_BETA + {y} * (1 - INTERP_BETA))",
               "({y} * (1 - INTERP_BETA) + {x} * INTERP_BETA)"),
}


def _bare(source: str) -> str:
    """``source`` without one pair of parentheses around all of it."""
    if not (source.startswith("(") and source.endswith(")")):
        return source
    depth = 0
    for i, char in enumerate(source):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and i < len(source) - 1:
            return source
    return source[1:-1]


def _call(template: str, *args: str) -> str:
    """Fill ``template``; arguments of function calls lose their outer parentheses."""
    return template.format(*(_bare(a) if template[0] != "(" else a for a in args))


def _literal(value: float) -> str:
    if math.isfinite(value):
        return repr(value) if value >= 0 else f"({value!r})"
    return f"float({str(value)!r})"


class _Code:
    """Per-tensor source of a rule; ``draws`` lists random draws in evaluation order."""

    def __init__(self) -> None:
        self.draws: list[str] = []

    def draw(self, call: str, prefix: str) -> str:
        name = f"{prefix}{len(self.draws)}"
        self.draws.append(f"{name} = {call}")
        return f"{name}[i]"

    def expr(self, node: Node) -> tuple[str, str, float | None]:
        """``(source, kind, value)``: kind is ``tensor``, ``scalar`` or ``const``."""
        if isinstance(node, Const):
            return _literal(node.value), "const", node.value
        if isinstance(node, Leaf):
            name = node.name
            if name in rt.OPERAND_VALUES:
                number = rt.OPERAND_VALUES[name]
                return _literal(number), "const", number
            if name in rt.SCHEDULES:
                return name, "scalar", None
            if name == "noise":
                return self.draw("_noise(params, self.generator)", "noise"), "tensor", None
            return _TENSOR_LEAVES[name], "tensor", None
        if isinstance(node, Unary):
            x, kind, value = self.expr(node.arg)
            if node.fn == "id":
                return x, kind, value
            if node.fn in rt.DROPS:
                keep = self.draw(f"_keep_masks(params, {rt.DROPS[node.fn]!r}, self.generator)",
                                 "keep")
                return (f"({x} * {keep})" if kind == "tensor" else f"({keep} * {x})"), "tensor", None
            if value is not None:
                folded = rt.SCALAR_UNARY[node.fn](value)
                return _literal(folded), "const", folded
            table = _TENSOR_UNARY if kind == "tensor" else _SCALAR_UNARY
            return _call(table[node.fn], x), kind, None
        assert isinstance(node, Binary)
        left = self.expr(node.left)
        if node.fn == "left":
            return left
        right = self.expr(node.right)
        (x, xk, xv), (y, yk, yv) = left, right
        if xv is not None and yv is not None:
            folded = rt.SCALAR_BINARY[node.fn](xv, yv)
            return _literal(folded), "const", folded
        if xk != "tensor" and yk != "tensor":
            return _call(_SCALAR_BINARY[node.fn], x, y), "scalar", None
        tt, ts, st = _TENSOR_BINARY[node.fn]
        template = tt if xk == yk == "tensor" else ts if xk == "tensor" else st
        if template.startswith("torch.pow"):
            x, y = _bare(x), _bare(y)
        return template.format(x=x, y=y), "tensor", None


def export_source(rule: Node, text: str, name: str = "") -> str:
    """Source of a module defining ``DiscoveredOptimizer`` for ``rule`` (DSL ``text``)."""
    reads = rt.operands_read(rule)
    buffers = rt.buffers_for(rule)
    fused = rt.effective(rule) == Leaf("adam")
    code = _Code()
    lines: list[str] = ["state = self.state[p]"] if buffers else []
    if "m" in buffers:
        lines.append('m = state["m"].lerp_(g, 1 - BETA_M)')
    if "v" in buffers:
        lines.append('v = state["v"].mul_(BETA_V).addcmul_(g, g, value=1 - BETA_V)')
    if "y" in buffers:
        lines.append('y = state["y"].mul_(BETA_Y).addcmul_(g * g, g, value=1 - BETA_Y)')
    if "m99" in buffers:
        lines.append('m99 = state["m99"]')
    if fused:
        lines += ["denom = torch.sqrt(v) / bc2_sqrt + EPS",
                  "if wd != 0:", "    p.mul_(1 - lr * wd)",
                  "p.addcdiv_(m, denom, value=-(lr / bc1))"]
    else:
        source, kind, _ = code.expr(rule)
        lines += [f"u = {_bare(source)}", "if wd != 0:", "    p.mul_(1 - lr * wd)",
                  "p.add_(u, alpha=-lr)" if kind == "tensor" else "p.add_(-lr * u)"]
    if "m99" in buffers:
        lines.append("m99.mul_(BETA_LION).add_(g, alpha=1 - BETA_LION)")
    per_step: list[str] = []
    if reads & set(rt.SCHEDULES):
        per_step.append('ld, cd, rd = _decays(step - 1, group["total_steps"])')
    if fused or "adam" in reads:
        per_step.append("bc1, bc2_sqrt = _adam_scalars(step)")
    per_step += code.draws
    uses_schedule = bool(reads & set(rt.SCHEDULES))
    check = ("        if total_steps is None or total_steps <= 0:\n"
             "            raise ValueError('this rule uses a decay schedule and needs total_steps > 0')\n"
             if uses_schedule else "")
    title = f"the {name!r} rule" if name else "a rule"
    loop = textwrap.indent("\n".join(lines), " " * 20)
    step_lines = textwrap.indent("\n".join(per_step), " " * 16) + "\n" if per_step else ""
    helpers, constants = _used_helpers("\n".join(lines + per_step))
    each = "for i, p in enumerate(params):" if code.draws else "for p in params:"
    return f'''"""An optimizer exported by metalearn: {title} of the optimizer DSL of Neural
Optimizer Search (Bello, Zoph, Vasudevan & Le, ICML 2017).

Rule (DSL text):

    {text}

Update: w <- w - lr * (U + weight_decay * w), U the rule's value. Operands: g the
gradient; m, v, y running averages of g, g^2, g^3 (beta 0.9, 0.999, 0.999, read
after their update, no bias correction); m99 Lion's momentum (beta 0.99, read
before its update); ld, cd, rd decay schedules over total_steps; noise ~
N(0, 0.01^2) and drop masks drawn from ``generator``. Depends on torch only.
"""

import torch

{constants}
BUFFERS = {buffers!r}


{helpers}


class DiscoveredOptimizer(torch.optim.Optimizer):
    """U = {text}"""

    def __init__(self, params, lr=0.1, weight_decay=0.0, total_steps=None, generator=None):
{check}        defaults = {{"lr": lr, "weight_decay": weight_decay, "total_steps": total_steps}}
        super().__init__(params, defaults)
        self.generator = generator

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = float(group["lr"]), float(group["weight_decay"])
            for step, params in _prepare(self.state, group["params"], BUFFERS):
{step_lines}                {each}
                    g = p.grad
{loop}
        return loss
'''


def _used_helpers(body: str) -> tuple[str, str]:
    """Source of the runtime helpers and constants that ``body`` needs, transitively."""
    sources = {fn.__name__: inspect.getsource(fn).rstrip() for fn in rt.HELPERS}
    needed: set[str] = {"_prepare"}
    while True:
        text = "\n".join([body, *(sources[n] for n in needed)])
        found = {n for n in sources if re.search(rf"\b{n}\(", text)} | needed
        if found == needed:
            break
        needed = found
    helpers = "\n\n\n".join(src for n, src in sources.items() if n in needed)
    constants = "\n".join(f"{c} = {getattr(rt, c)!r}" for c in rt.CONSTANT_NAMES
                          if re.search(rf"\b{c}\b", text))
    return helpers, constants
