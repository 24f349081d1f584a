"""The backprop search space of Backprop Evolution (Alber, Bello, Zoph, Kindermans,
Ramachandran & Le, "Backprop Evolution", ICML 2018 AutoML workshop), plus ProxProp
(Frerix, Moellenhoff, Moeller & Cremers, ICLR 2018) as points outside the DSL.

A rule computes the signal ``g_hat`` a layer sends to the layer below; the
layer's own weight gradient stays ``d^T h`` (the usual convolution weight gradient
for Conv2d). Rules are nested units ``b(u1(o1), u2(o2))`` (see :mod:`.expr`) with
1 to 3 binary operations: the root is always a unit and units nest at most two
deep. The DSL is typed so that every rule runs on every Linear/Conv2d layer:

========== ==================== ==================================================
type       shape (Linear)       operands
========== ==================== ==================================================
weight     out x in             ``W`` the weight, ``G`` fixed Gaussian, ``S`` fixed
                                Bernoulli +-1 (both at W's initial std), ``R``
                                fresh Gaussian every backward pass
out        batch x out          ``d`` the gradient at the layer's output
in         batch x in           ``h`` the layer's input; a rule has this type
error      batch x classes      ``e`` the gradient at the network's output
direct     classes x in         ``D`` fixed Gaussian (direct feedback)
========== ==================== ==================================================

Binary: ``apply(out, weight) -> in`` (``d @ V``; for Conv2d the transposed
convolution with the layer's stride, padding and dilation), ``direct(error,
direct) -> in`` (``e @ D``), and on two values of one type ``add``, ``sub``,
``mul``, ``max``, ``min``, ``left`` (keeps its left argument). Unary (type-keeping):
``neg``, ``abs``, ``square``, ``sign``, ``clip`` (to +-1), ``normalize`` (divide by
the root mean square), ``batchnorm`` (zero mean, unit variance over dim 0),
``noise`` (add Gaussian noise of std 0.1 x RMS), ``dropout`` (rate 0.1, rescaled);
the identity is written by leaving it out.

Named points: ``backprop`` = ``apply(d, W)``, ``feedback_alignment`` (Lillicrap et
al. 2016) = ``apply(d, G)``, ``sign_symmetry`` (Liao, Leibo & Poggio 2016) =
``apply(d, sign(W))``, ``direct_feedback_alignment`` (Nokland 2016) =
``direct(e, D)``, and ``proxprop`` = ``proxprop(cg3, tau=0.05)``.

ProxProp is not an expression: its text is ``proxprop(MODE, tau=TAU)`` with MODE
``exact`` (Linear layers only), ``cgN`` or ``gradient``, parsed by this space.
Sampling and decisions produce DSL rules only; mutating a ProxProp point changes
its ``tau`` (x2 or /2) or its CG iterations, so evolution seeded with ``proxprop``
explores ProxProp's settings. See docs/spaces/backprop.md.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import re
from collections.abc import Callable, Sequence
from functools import cached_property

import numpy as np

from ..errors import ParseError, UserError
from . import backprop_layers, proxprop
from .backprop_layers import BackpropRule, Program
from .base import DiscreteSpace
from .expr import (
    Binary,
    BinaryFn,
    Grammar,
    Leaf,
    Node,
    Operand,
    UnaryFn,
    elementwise,
    operands_used,
)
from .proxprop import ProxPropRule, parse_mode

TYPES = ("weight", "out", "in", "error", "direct")

OPERANDS = (
    Operand("W", "weight", "the layer's weight"),
    Operand("G", "weight", "fixed Gaussian matrix of W's shape and initial std (feedback alignment)"),
    Operand("S", "weight", "fixed Bernoulli +-1 matrix times W's initial std"),
    Operand("R", "weight", "Gaussian matrix of W's shape and initial std, fresh every backward pass",
            random=True),
    Operand("d", "out", "the gradient arriving at the layer's output"),
    Operand("h", "in", "the layer's input (its forward activations)"),
    Operand("e", "error", "the gradient at the network's output (dL/dlogits)"),
    Operand("D", "direct", "fixed Gaussian classes x input matrix, std 1/sqrt(classes)"),
)

UNARIES = (
    UnaryFn("id", "x", identity=True),
    UnaryFn("neg", "-x", involution=True),
    UnaryFn("abs", "|x|", idempotent=True, absorbs=frozenset({"neg"})),
    UnaryFn("square", "x^2", absorbs=frozenset({"neg", "abs"})),
    UnaryFn("sign", "sign(x)", idempotent=True, absorbs=frozenset({"clip"})),
    UnaryFn("clip", "x clipped to [-1, 1]", idempotent=True),
    UnaryFn("normalize", "x / RMS(x)"),
    UnaryFn("batchnorm", "(x - mean) / sqrt(var + 1e-5) over dim 0 (the batch for signals)"),
    UnaryFn("noise", "x + N(0, (0.1 RMS(x))^2)", random=True),
    UnaryFn("dropout", "x * Bernoulli(0.9) / 0.9", random=True),
)

_ALL = elementwise(*TYPES)
BINARIES = (
    BinaryFn("apply", (("out", "weight", "in"),),
             "d @ V (Linear) or the transposed convolution of d with V (Conv2d)"),
    BinaryFn("direct", (("error", "direct", "in"),), "e @ D, reshaped to the layer's input"),
    BinaryFn("add", _ALL, "x + y", commutative=True),
    BinaryFn("sub", _ALL, "x - y"),
    BinaryFn("mul", _ALL, "x * y", commutative=True),
    BinaryFn("max", _ALL, "elementwise maximum", commutative=True),
    BinaryFn("min", _ALL, "elementwise minimum", commutative=True),
    BinaryFn("left", _ALL, "x (the right argument is ignored)", keep_left=True),
)

#: the most nested units; a complete tree of depth 2 holds the paper's at most 3 binary operations
MAX_DEPTH = 2

NAMED_RULES = {
    "backprop": "apply(d, W)",
    "feedback_alignment": "apply(d, G)",
    "sign_symmetry": "apply(d, sign(W))",
    "direct_feedback_alignment": "direct(e, D)",
}

CG_STEPS = (1, 2, 3, 5, 10, 20)
TAU_RANGE = (1e-4, 1e4)


@dataclasses.dataclass(frozen=True)
class ProxPropPoint:
    """ProxProp (Frerix et al. 2018) with a mode (``exact``, ``cgN``, ``gradient``) and tau_prox."""

    mode: str = "cg3"
    tau: float = 0.05

    def __post_init__(self) -> None:
        parse_mode(self.mode)
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise ValueError(f"tau must be a positive finite number, got {self.tau!r}")


Genome = Node | ProxPropPoint

NAMED_PROXPROP = {"proxprop": ProxPropPoint("cg3", 0.05)}

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_PROXPROP = re.compile(rf"\s*proxprop\s*\(\s*(?P<mode>[A-Za-z0-9_]+)\s*"
                       rf"(?:,\s*tau\s*=\s*(?P<tau>{_NUMBER})\s*)?\)\s*")


def _same_non_random(grammar: Grammar) -> Callable[[Node], Node | None]:
    def rewrite(node: Node) -> Node | None:
        # max(x, x) = min(x, x) = x exactly, unless x draws fresh numbers on each side
        if isinstance(node, Binary) and node.fn in ("max", "min") and node.left == node.right \
                and not grammar.is_random(node.left):
            return node.left
        return None
    return rewrite


def backprop_grammar(max_depth: int = MAX_DEPTH) -> Grammar:
    """The typed grammar of backward rules, units nested at most ``max_depth`` deep."""
    grammar = Grammar(OPERANDS, UNARIES, BINARIES, result_type="in", max_depth=max_depth,
                      constant_type=None)
    return dataclasses.replace(grammar, rewrites=(_same_non_random(grammar),))


def to_program(grammar: Grammar, node: Node) -> Program:
    """The runtime program of a rule: identities dropped, the ignored side of ``left`` dropped."""
    program: Program = grammar.evaluate(
        node,
        leaf=lambda name: (name,),
        const=lambda value: ("const", value),
        unary=lambda fn, x: (fn, x),
        binary=lambda fn, a, b: (fn, a, b),
    )
    return program


class BackpropSpace(DiscreteSpace[Genome]):
    """Backward rules of Backprop Evolution and ProxProp; ``build`` gives a rule that
    converts a model's Linear/Conv2d layers (metalearn's ``BackwardRule``)."""

    name = "backprop"
    slots = ("backward",)

    def __init__(self, max_depth: int = MAX_DEPTH) -> None:
        if max_depth < 1:
            raise ValueError(f"a backward rule needs at least one unit, so max_depth >= 1, got {max_depth}")
        self.grammar = backprop_grammar(max_depth)

    # ------------------------------------------------------------ sampling and mutation

    def sample(self, rng: np.random.Generator) -> Node:
        """A random DSL rule with 1 to 3 binary operations that reads ``d`` or ``e``."""
        while True:
            rule = self.grammar.sample(rng)
            if self.is_searchable(rule):
                return rule

    def mutate(self, genome: Genome, rng: np.random.Generator) -> Genome:
        """A type-correct variant (retried until it keeps a binary operation and reads
        ``d`` or ``e``); a ProxProp point changes its tau or CG iterations."""
        if isinstance(genome, ProxPropPoint):
            return self._mutate_proxprop(genome, rng)
        for _ in range(100):
            child = self.grammar.mutate(genome, rng)
            if self.is_searchable(child):
                return child
        raise ValueError(f"no mutation of {self.format(genome)!r} keeps a rule that reads an error")

    def is_searchable(self, rule: Node) -> bool:
        """Whether sampling and mutation may propose ``rule``: it has a binary operation and
        reads the error (``d`` or ``e``); a rule that ignores both cannot carry the loss
        below the layer. (Decisions may still decode to one: it runs, it just learns little.)"""
        return not isinstance(self._core(rule), Leaf) and \
            bool(operands_used(self.grammar, rule) & {"d", "e"})

    @staticmethod
    def _core(rule: Node) -> Node:
        while hasattr(rule, "arg"):
            rule = rule.arg  # type: ignore[union-attr]
        return rule

    @staticmethod
    def _mutate_proxprop(point: ProxPropPoint, rng: np.random.Generator) -> ProxPropPoint:
        """Halve or double tau, or move the CG iterations one step along ``CG_STEPS``."""
        if point.mode == "gradient":  # tau does not matter in the check mode
            return ProxPropPoint("cg3", point.tau)
        options: list[ProxPropPoint] = []
        for factor in (0.5, 2.0):
            tau = point.tau * factor
            if TAU_RANGE[0] <= tau <= TAU_RANGE[1]:
                options.append(ProxPropPoint(point.mode, tau))
        steps = parse_mode(point.mode)
        if steps:
            nearest = min(range(len(CG_STEPS)), key=lambda i: abs(CG_STEPS[i] - steps))
            for i in (nearest - 1, nearest + 1):
                if 0 <= i < len(CG_STEPS) and CG_STEPS[i] != steps:
                    options.append(ProxPropPoint(f"cg{CG_STEPS[i]}", point.tau))
        return options[int(rng.integers(len(options)))]

    # ------------------------------------------------------------ text

    def format(self, genome: Genome) -> str:
        if isinstance(genome, ProxPropPoint):
            return f"proxprop({genome.mode}, tau={float(genome.tau)!r})"
        return self.grammar.format(genome)

    def parse(self, text: str) -> Genome:
        """DSL text (``apply(d, sign(W))``) or ``proxprop(MODE, tau=TAU)`` (tau 0.05 if left out)."""
        if text.lstrip().startswith("proxprop"):
            return self._parse_proxprop(text)
        rule = self.grammar.parse(text)
        if isinstance(self._core(rule), Leaf):
            raise ParseError(text, 0, "a rule with at least one binary operation, "
                                      "e.g. apply(d, W)")
        return rule

    @staticmethod
    def _parse_proxprop(text: str) -> ProxPropPoint:
        match = _PROXPROP.fullmatch(text)
        if match is None:
            raise ParseError(text, 0, "proxprop(MODE, tau=NUMBER) with MODE exact, gradient or cgN")
        tau = float(match["tau"]) if match["tau"] is not None else 0.05
        try:
            parse_mode(match["mode"])
        except ValueError:
            raise ParseError(text, match.start("mode"), "a mode exact, gradient or cgN (N >= 1)") \
                from None
        if not (math.isfinite(tau) and tau > 0):
            raise ParseError(text, match.start("tau"), "a positive finite tau")
        return ProxPropPoint(match["mode"], tau)

    def simplify(self, genome: Genome) -> Genome:
        if isinstance(genome, ProxPropPoint):
            # the check mode ignores tau: one key for all of them
            return ProxPropPoint("gradient", 1.0) if genome.mode == "gradient" else genome
        return self.grammar.simplify(genome)

    # ------------------------------------------------------------ named points and runtime

    @cached_property
    def _named(self) -> dict[str, Genome]:
        named: dict[str, Genome] = {n: self.grammar.parse(t) for n, t in NAMED_RULES.items()}
        named.update(NAMED_PROXPROP)
        return named

    def named(self) -> dict[str, Genome]:
        return dict(self._named)

    def program(self, genome: Node) -> Program:
        """The runtime program (nested tuples) of a DSL rule."""
        self.grammar.check(genome)
        return to_program(self.grammar, genome)

    def build(self, genome: Genome) -> BackpropRule | ProxPropRule:
        """The backward rule: ``rule.apply(model, generator)`` converts the model in place."""
        if isinstance(genome, ProxPropPoint):
            return ProxPropRule(genome.mode, genome.tau)
        return BackpropRule(self.program(genome))

    # ------------------------------------------------------------ decisions

    def decisions(self) -> list[int]:
        """The grammar's decisions without the root's operand-or-unit choice (always a unit)."""
        sizes = self.grammar.decisions()
        return sizes[:1] + sizes[2:]

    def _root_unit(self) -> int:
        # the index of "a unit here" among the root slot's options (its operands come first)
        return len(self.grammar.operands_of(self.grammar.result_type))

    def from_decisions(self, choices: Sequence[int]) -> Node:
        choices = list(choices)
        if len(choices) != len(self.decisions()):
            raise ValueError(f"need {len(self.decisions())} decisions, got {len(choices)}")
        return self.grammar.from_decisions([*choices[:1], self._root_unit(), *choices[1:]])

    def to_decisions(self, genome: Genome) -> list[int]:
        if isinstance(genome, ProxPropPoint):
            raise UserError(f"{self.format(genome)} is a ProxProp point, not a DSL rule: "
                            "it has no decisions (use random search or evolution)")
        full = self.grammar.to_decisions(genome)
        return full[:1] + full[2:]

    # ------------------------------------------------------------ export

    def export_source(self, genome: Genome) -> str:
        """A standalone ``.py`` file (only ``import torch``) defining ``convert(model)``,
        which converts a model in place to this rule and returns the rule object."""
        text = self.format(genome)
        name = next((n for n, g in self._named.items() if self.key(g) == self.key(genome)), "")
        title = f"{name} = {text}" if name else text
        parts = [
            f'"""Backward rule {title}, exported by metalearn (space "backprop").\n\n'
            "Depends on torch only. Usage::\n\n"
            "    rule = convert(model)          # converts nn.Linear / nn.Conv2d in place\n"
            "    ...\n"
            "    logits = model(x)\n"
            "    rule.observe_output(logits)    # each step, before backward()\n"
            "    loss_fn(logits, y).backward()\n\n"
            "The runtime below is metalearn's backprop_layers"
            + (" and proxprop" if isinstance(genome, ProxPropPoint) else "") + " module.\n"
            '"""\n\nfrom __future__ import annotations\n',
            _module_body(backprop_layers),
        ]
        if isinstance(genome, ProxPropPoint):
            parts.append(_module_body(proxprop))
            parts.append(
                f"\nRULE_TEXT = {text!r}\n\n\n"
                "def convert(model: nn.Module, generator: torch.Generator | None = None"
                ") -> ProxPropRule:\n"
                '    """Convert ``model`` in place to ProxProp; returns the rule."""\n'
                f"    rule = ProxPropRule({genome.mode!r}, {float(genome.tau)!r})\n"
                "    rule.apply(model, generator)\n"
                "    return rule\n")
        else:
            parts.append(
                f"\nRULE_TEXT = {text!r}\n"
                f"PROGRAM: Program = {self.program(genome)!r}\n\n\n"
                "def convert(model: nn.Module, generator: torch.Generator | None = None"
                ") -> BackpropRule:\n"
                '    """Convert ``model`` in place to this rule; returns the rule (call its\n'
                '    ``observe_output(logits)`` every step if the rule reads ``e``)."""\n'
                "    rule = BackpropRule(PROGRAM)\n"
                "    rule.apply(model, generator)\n"
                "    return rule\n")
        return "\n".join(parts)


def _module_body(module: object) -> str:
    """A module's source without its docstring, ``__future__`` and package-relative imports."""
    source = inspect.getsource(module)  # type: ignore[arg-type]
    lines = source.splitlines()
    drop: set[int] = set()
    tree = ast.parse(source)
    for i, node in enumerate(tree.body):
        is_docstring = i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        is_future = isinstance(node, ast.ImportFrom) and node.module == "__future__"
        is_relative = isinstance(node, ast.ImportFrom) and node.level > 0
        if is_docstring or is_future or is_relative:
            assert node.end_lineno is not None
            drop.update(range(node.lineno - 1, node.end_lineno))
    return "\n".join(line for i, line in enumerate(lines) if i not in drop).strip("\n") + "\n"


__all__ = ["NAMED_RULES", "BackpropSpace", "ProxPropPoint", "backprop_grammar", "to_program"]
