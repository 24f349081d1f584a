"""The optimizer search space of Neural Optimizer Search (Bello, Zoph, Vasudevan & Le,
"Neural Optimizer Search with Reinforcement Learning", ICML 2017).

An update rule is nested units ``b(u1(op1), u2(op2))`` (see :mod:`.expr`); its value
``U`` updates the weights as ``w <- w - lr * U``. The operands, unary and binary
functions are those of the paper, including the decay schedules of its later
version, plus ``interp`` and Lion's momentum so that Lion (Chen et al. 2023,
"Symbolic Discovery of Optimization Algorithms") is a point of the space. Text is
function-call syntax, e.g. PowerSign is ``mul(exp(mul(sign(g), sign(m))), g)``.

Operands: ``g``, ``g2``, ``g3`` (powers of the gradient); ``m``, ``v``, ``y``
(running averages of g, g^2, g^3 with beta 0.9, 0.999, 0.999, updated before use,
no bias correction); ``sign_g``, ``sign_m``; ``1``, ``2``; ``noise``; ``wd4``,
``wd3``, ``wd2``, ``wd1`` (1e-4*w ... 1e-1*w); ``adam`` (``m_hat / (sqrt(v_hat) +
1e-8)``); ``rmsprop`` (``g / (sqrt(v) + 1e-8)``); ``ld``, ``cd``, ``rd`` (decays);
``m99`` (Lion's momentum). Unary: ``id`` (written by leaving it out), ``neg``,
``exp``, ``log`` (of ``|x|``), ``sqrt`` (of ``|x|``), ``clip5``/``clip4``/``clip3``
(to +-1e-5/1e-4/1e-3), ``drop10``/``drop30``/``drop50`` (zero entries with
probability 0.1/0.3/0.5), ``sign``. Binary: ``add``, ``sub``, ``mul``, ``div``
(``x / (y + 1e-8)``), ``pow``, ``left`` (keep ``x``), ``interp``
(``0.9 * x + 0.1 * y``).

Choices where the reference is marked "check" or silent (implemented as written
where written):

- ``noise`` is N(0, 0.01^2): standard deviation 0.01, drawn fresh every step
  from the optimizer's ``generator``.
- ``drop(x, p)`` zeroes entries with probability p and does not rescale.
- ``t`` of the schedules counts the updates already made (0 at the first step, as
  TensorFlow's ``sign_decay`` functions are called with the global step), capped
  at ``T = total_steps``; ``cd`` uses n = 0.5 and ``rd`` n = 1.
- Betas are fixed by the operand: ``m`` 0.9, ``v`` and ``y`` 0.999, and Lion's
  ``m99`` 0.99, read *before* its update (Lion's ``c = interp(m_{t-1}, g)``), while
  ``m``, ``v``, ``y`` are read after theirs (PowerSign uses the updated ``m_t``).
  ``interp``'s beta is 0.9. One extra operand and one extra binary function keep
  the text free of numeric parameters, and every named point a point of the space.
- The factory's ``weight_decay`` is decoupled, ``w <- w - lr*(U + wd*w)`` (AdamW,
  Lion), so the rule sees the loss gradient alone; ``adam`` with weight decay is
  exactly AdamW. The recipe's ``momentum`` is ignored: a rule fixes its averages.
- The root of a rule may carry a unary function and may be a bare operand, so
  ``sign(g)`` (signSGD) and Lion ``sign(interp(m99, g))`` are rules; ``momentum``
  is ``m``, which is heavy-ball momentum scaled by ``1 - beta`` (equal to
  ``torch.optim.SGD(lr=0.1*lr, momentum=0.9)``).
- Units nest up to ``max_depth`` = 4 deep, the least that writes AddSign with a
  decay, ``mul(add(1, mul(ld, mul(sign(g), sign(m)))), g)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np

from .base import DiscreteSpace
from .expr import BinaryFn, Grammar, Node, Operand, Unary, UnaryFn
from .optimizer_runtime import CLIPS, SCALAR_BINARY, SCALAR_UNARY, RuleFactory

OPERANDS = (
    Operand("g", doc="the gradient"),
    Operand("g2", doc="g^2"),
    Operand("g3", doc="g^3"),
    Operand("m", doc="running average of g, beta 0.9"),
    Operand("v", doc="running average of g^2, beta 0.999"),
    Operand("y", doc="running average of g^3, beta 0.999"),
    Operand("sign_g", doc="sign(g)", alias="sign(g)"),
    Operand("sign_m", doc="sign(m)", alias="sign(m)"),
    Operand("1", doc="the constant 1", value=1.0),
    Operand("2", doc="the constant 2", value=2.0),
    Operand("noise", doc="Gaussian noise, standard deviation 0.01, fresh each step", random=True),
    Operand("wd4", doc="1e-4 * w"),
    Operand("wd3", doc="1e-3 * w"),
    Operand("wd2", doc="1e-2 * w"),
    Operand("wd1", doc="1e-1 * w"),
    Operand("adam", doc="Adam's update m_hat / (sqrt(v_hat) + 1e-8)"),
    Operand("rmsprop", doc="RMSProp's update g / (sqrt(v) + 1e-8)"),
    Operand("ld", doc="linear decay max(0, (T - t) / T)"),
    Operand("cd", doc="cosine decay 0.5 * (1 + cos(2 pi n t / T)), n = 0.5"),
    Operand("rd", doc="restart decay 0.5 * (1 + cos(pi ((n t) mod T) / T)), n = 1"),
    Operand("m99", doc="Lion's momentum: running average of g, beta 0.99, before its update"),
)

_UNSIGNED = frozenset({"neg"})
UNARIES = (
    UnaryFn("id", "x", identity=True),
    UnaryFn("neg", "-x", fold=SCALAR_UNARY["neg"], involution=True),
    UnaryFn("exp", "exp(x)", fold=SCALAR_UNARY["exp"]),
    UnaryFn("log", "log|x|", fold=SCALAR_UNARY["log"], absorbs=_UNSIGNED),
    UnaryFn("sqrt", "sqrt|x|", fold=SCALAR_UNARY["sqrt"], absorbs=_UNSIGNED),
    UnaryFn("clip5", "clip(x, 1e-5): x clipped to [-1e-5, 1e-5]", fold=SCALAR_UNARY["clip5"],
            idempotent=True),
    UnaryFn("clip4", "clip(x, 1e-4)", fold=SCALAR_UNARY["clip4"], idempotent=True),
    UnaryFn("clip3", "clip(x, 1e-3)", fold=SCALAR_UNARY["clip3"], idempotent=True),
    UnaryFn("drop10", "drop(x, 0.1): zero each entry with probability 0.1", random=True),
    UnaryFn("drop30", "drop(x, 0.3)", random=True),
    UnaryFn("drop50", "drop(x, 0.5)", random=True),
    UnaryFn("sign", "sign(x)", fold=SCALAR_UNARY["sign"], idempotent=True),
)

BINARIES = (
    BinaryFn("add", doc="x + y", fold=SCALAR_BINARY["add"], commutative=True, right_identity=0.0),
    BinaryFn("sub", doc="x - y", fold=SCALAR_BINARY["sub"], right_identity=0.0),
    BinaryFn("mul", doc="x * y", fold=SCALAR_BINARY["mul"], commutative=True,
             right_identity=1.0),
    BinaryFn("div", doc="x / (y + 1e-8)", fold=SCALAR_BINARY["div"]),
    BinaryFn("pow", doc="x ^ y", fold=SCALAR_BINARY["pow"]),
    BinaryFn("left", doc="x (keep left)", keep_left=True),
    BinaryFn("interp", doc="0.9 * x + 0.1 * y (Lion)", fold=SCALAR_BINARY["interp"]),
)


def _nested_clips(node: Node) -> Node | None:
    """clip_a(clip_b(x)) = clip_min(a, b)(x), exactly."""
    if isinstance(node, Unary) and node.fn in CLIPS and isinstance(node.arg, Unary) \
            and node.arg.fn in CLIPS:
        tighter = min(node.fn, node.arg.fn, key=CLIPS.__getitem__)
        return Unary(tighter, node.arg.arg)
    return None


def optimizer_grammar(max_depth: int = 4) -> Grammar:
    """The grammar of update rules, with units nested at most ``max_depth`` deep."""
    return Grammar(OPERANDS, UNARIES, BINARIES, result_type="tensor", max_depth=max_depth,
                   constant_type="tensor", rewrites=(_nested_clips,))


_SIGN_AGREE = "mul(sign(g), sign(m))"
NAMED = {
    "sgd": "g",
    "momentum": "m",
    "adam": "adam",
    "rmsprop": "rmsprop",
    "sign_sgd": "sign(g)",
    # PowerSign: e^(f(t) * sign(g) * sign(m)) * g; AddSign: (1 + f(t) * sign(g) * sign(m)) * g
    "powersign": f"mul(exp({_SIGN_AGREE}), g)",
    "addsign": f"mul(add(1, {_SIGN_AGREE}), g)",
    **{f"powersign_{d}": f"mul(exp(mul({d}, {_SIGN_AGREE})), g)" for d in ("ld", "cd", "rd")},
    **{f"addsign_{d}": f"mul(add(1, mul({d}, {_SIGN_AGREE})), g)" for d in ("ld", "cd", "rd")},
    # Lion: sign(beta1 * m_{t-1} + (1 - beta1) * g) with momentum beta2 = 0.99
    "lion": "sign(interp(m99, g))",
}


class OptimizerSpace(DiscreteSpace[Node]):
    """Update rules of Neural Optimizer Search; ``build`` gives an optimizer factory."""

    name = "optimizer"
    slots = ("optimizer",)

    def __init__(self, max_depth: int = 4) -> None:
        self.grammar = optimizer_grammar(max_depth)

    @property
    def max_depth(self) -> int:
        return self.grammar.max_depth

    def sample(self, rng: np.random.Generator) -> Node:
        return self.grammar.sample(rng)

    def mutate(self, genome: Node, rng: np.random.Generator) -> Node:
        return self.grammar.mutate(genome, rng)

    def format(self, genome: Node) -> str:
        return self.grammar.format(genome)

    def parse(self, text: str) -> Node:
        return self.grammar.parse(text)

    def simplify(self, genome: Node) -> Node:
        return self.grammar.simplify(genome)

    @cached_property
    def _named(self) -> dict[str, Node]:
        return {name: self.grammar.parse(text) for name, text in NAMED.items()}

    def named(self) -> dict[str, Node]:
        return dict(self._named)

    def build(self, genome: Node) -> RuleFactory:
        """A factory ``make_opt(params, lr=0.1, weight_decay=0.0, total_steps=None,
        generator=None, **ignored) -> torch.optim.Optimizer``."""
        self.grammar.check(genome)
        return RuleFactory(genome, self.format(genome))

    def decisions(self) -> list[int]:
        return self.grammar.decisions()

    def from_decisions(self, choices: Sequence[int]) -> Node:
        return self.grammar.from_decisions(choices)

    def to_decisions(self, genome: Node) -> list[int]:
        return self.grammar.to_decisions(genome)

    def export_source(self, genome: Node) -> str:
        """A standalone ``.py`` file (only ``import torch``) defining
        ``DiscoveredOptimizer``, a ``torch.optim.Optimizer`` that follows
        ``build(genome)`` step for step."""
        from .optimizer_export import export_source

        self.grammar.check(genome)
        name = next((n for n, g in self._named.items() if self.key(g) == self.key(genome)), "")
        return export_source(genome, self.format(genome), name=name)


__all__ = ["NAMED", "OptimizerSpace", "optimizer_grammar"]
