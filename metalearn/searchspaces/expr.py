"""Typed expression trees shared by the rule DSLs (optimizer and backprop rules).

Both Neural Optimizer Search (Bello, Zoph, Vasudevan & Le, ICML 2017) and Backprop
Evolution (Alber, Bello, Zoph, Kindermans, Ramachandran & Le, 2018) write a rule
as nested *units* ``b(u1(op1), u2(op2))``: two operands, a unary function on each,
a binary function joining them, where the result of one unit may be an operand of
the next. This module holds everything about such trees that does not depend on
what the operands mean: node types, a type system, the printer (whose text is the
canonical form), a recursive-descent parser for that text (no ``eval``), type
checking, random sampling, type-correct mutation, simplification, a structural key,
and the fixed sequence of categorical decisions that encodes a rule.

Declaring a DSL
---------------
A DSL is a :class:`Grammar`: lists of :class:`Operand`, :class:`UnaryFn` and
:class:`BinaryFn` declarations, the type of the result and the maximum nesting
depth::

    grammar = Grammar(
        operands=[Operand("W", "weight"), Operand("d", "out"), Operand("h", "in")],
        unaries=[UnaryFn("id", identity=True), UnaryFn("neg", involution=True),
                 UnaryFn("sign", idempotent=True)],
        binaries=[BinaryFn("apply", signatures=(("out", "weight", "in"),)),
                  BinaryFn("add", signatures=elementwise("weight", "out", "in"),
                           commutative=True)],
        result_type="in",
        max_depth=3,
    )

Types are plain names. An operand has one type; a unary function keeps the type of
its argument (``types`` restricts which it accepts); a binary function lists its
signatures ``(left, right, result)``, at most one per result type. The grammar
never evaluates anything: a DSL evaluates trees itself (:meth:`Grammar.evaluate`
is a helper) and gives the simplifier the scalar meaning of its functions
(``fold``) so constant subtrees can be folded.

Trees and text
--------------
Nodes are immutable and hashable: :class:`Leaf` (an operand), :class:`Const` (a
number, produced by constant folding), :class:`Unary` and :class:`Binary`. The text
of a tree is function-call syntax, e.g. ``mul(exp(mul(sign(g), sign(m))), g)``:
an identity unary is written by leaving it out, numbers are written with ``repr``
so they parse back bit for bit. ``parse(format(t)) == t`` for every tree.

Unit form, depth and decisions
------------------------------
A *slot* is the root or an argument of a binary node; it holds an optional unary
over an operand or over a unit (a binary node). Trees where every slot has this
shape are in *unit form*; sampling, mutation and decisions produce only those. The
*depth* of a tree is its largest number of nested binary nodes (units); the root
may be a bare operand (depth 0). Parsing accepts any well-typed tree (simplified
trees need not be in unit form).

The decision sequence lays out a complete tree of units of depth ``max_depth`` in
pre-order: every slot contributes ``[unary, choice]`` (choice: an operand, or "a
unit here" where depth allows), every unit ``[binary]`` followed by its two slots.
Decisions under a slot that holds an operand are ignored. For typed grammars each
decision indexes the options valid in its place (modulo their number), so every
sequence decodes to a well-typed rule.

Simplification
--------------
:meth:`Grammar.simplify` removes what cannot affect the result (identity unaries,
the ignored argument of ``keep_left`` functions, neutral constants), expands
operand aliases, cancels involutions and idempotent repeats, folds constant
subtrees whose value is finite, applies the DSL's own rewrites and orders the
arguments of commutative functions by their text. Every rewrite is exact in
floating point and keeps the order in which random operands draw their numbers
(arguments are not reordered when both contain randomness), so a rule and its
simplified form produce the same values from the same random generator.
:meth:`Grammar.key` hashes the simplified text: equivalent rules share one key.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from ..errors import ParseError, UserError

__all__ = [
    "Binary", "BinaryFn", "Const", "ExprTypeError", "Grammar", "Leaf", "Node", "Operand",
    "Unary", "UnaryFn", "depth", "elementwise", "walk",
]


# ----------------------------------------------------------------------------- nodes


@dataclass(frozen=True, slots=True)
class Leaf:
    """An operand, by name."""

    name: str


@dataclass(frozen=True, slots=True)
class Const:
    """A number; arises from constant folding and parses from numeric text."""

    value: float


@dataclass(frozen=True, slots=True)
class Unary:
    fn: str
    arg: Node


@dataclass(frozen=True, slots=True)
class Binary:
    fn: str
    left: Node
    right: Node


Node = Leaf | Const | Unary | Binary
V = TypeVar("V")
Path = tuple[int, ...]


def children(node: Node) -> tuple[Node, ...]:
    if isinstance(node, Unary):
        return (node.arg,)
    if isinstance(node, Binary):
        return (node.left, node.right)
    return ()


def walk(node: Node) -> Iterator[tuple[Path, Node]]:
    """Every ``(path, node)`` of the tree in pre-order; a path lists child indices."""
    stack: list[tuple[Path, Node]] = [((), node)]
    while stack:
        path, current = stack.pop()
        yield path, current
        kids = children(current)
        for i in reversed(range(len(kids))):
            stack.append(((*path, i), kids[i]))


def get(node: Node, path: Path) -> Node:
    for i in path:
        node = children(node)[i]
    return node


def replace(node: Node, path: Path, new: Node) -> Node:
    """``node`` with the subtree at ``path`` replaced by ``new``."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(node, Unary):
        return Unary(node.fn, replace(node.arg, rest, new))
    if isinstance(node, Binary):
        if head == 0:
            return Binary(node.fn, replace(node.left, rest, new), node.right)
        return Binary(node.fn, node.left, replace(node.right, rest, new))
    raise IndexError(f"path {path} leads below a leaf")


def depth(node: Node) -> int:
    """The largest number of nested binary nodes (units) on a path from the root."""
    if isinstance(node, Unary):
        return depth(node.arg)
    if isinstance(node, Binary):
        return 1 + max(depth(node.left), depth(node.right))
    return 0


def strip_unaries(node: Node) -> Node:
    while isinstance(node, Unary):
        node = node.arg
    return node


# ----------------------------------------------------------------------- declarations


def elementwise(*types: str) -> tuple[tuple[str, str, str], ...]:
    """Signatures ``(t, t) -> t`` for each of ``types``."""
    return tuple((t, t, t) for t in types)


@dataclass(frozen=True)
class Operand:
    """A leaf of the DSL.

    Attributes:
        value: the number, for constant operands (``1``, ``2``); they take part in folding.
        random: it draws fresh random numbers each time it is evaluated.
        alias: text of an equivalent expression; the simplifier writes the alias.
    """

    name: str
    type: str = "tensor"
    doc: str = ""
    value: float | None = None
    random: bool = False
    alias: str | None = None


@dataclass(frozen=True)
class UnaryFn:
    """A unary function; it keeps its argument's type.

    Attributes:
        types: the types it accepts (``None``: all).
        fold: its value on a number, for constant folding (``None``: never folded).
        identity: ``f(x) = x`` (written by leaving it out).
        involution: ``f(f(x)) = x`` exactly.
        idempotent: ``f(f(x)) = f(x)`` exactly.
        absorbs: unary functions ``h`` with ``f(h(x)) = f(x)`` exactly.
        random: it draws random numbers.
    """

    name: str
    doc: str = ""
    types: frozenset[str] | None = None
    fold: Callable[[float], float] | None = None
    identity: bool = False
    involution: bool = False
    idempotent: bool = False
    absorbs: frozenset[str] = frozenset()
    random: bool = False

    def accepts(self, type_: str) -> bool:
        return self.types is None or type_ in self.types


@dataclass(frozen=True)
class BinaryFn:
    """A binary function with typed signatures ``(left, right, result)``.

    Attributes:
        commutative: ``f(x, y) = f(y, x)`` exactly; the simplifier orders the arguments.
        keep_left: ``f(x, y) = x``; the right argument is never evaluated.
        right_identity: ``c`` with ``f(x, c) = x`` (``1`` for ``mul``).
        fold: its value on two numbers.
    """

    name: str
    signatures: tuple[tuple[str, str, str], ...] = (("tensor", "tensor", "tensor"),)
    doc: str = ""
    fold: Callable[[float, float], float] | None = None
    commutative: bool = False
    keep_left: bool = False
    right_identity: float | None = None

    def result(self, left: str, right: str) -> str | None:
        for lt, rt, out in self.signatures:
            if lt == left and rt == right:
                return out
        return None

    def producing(self, type_: str) -> tuple[str, str] | None:
        for lt, rt, out in self.signatures:
            if out == type_:
                return lt, rt
        return None


class ExprTypeError(UserError):
    """A tree that does not type-check, or breaks the grammar's shape limits."""


Rewrite = Callable[[Node], Node | None]

_TOKEN = re.compile(
    r"\s*(?:(?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<punct>[(),]))"
)


@dataclass(frozen=True)
class Grammar:
    """A typed rule DSL: its operands, functions, result type and depth limit.

    Args:
        operands, unaries, binaries: the declarations; names must be distinct and
            exactly one unary must be the identity.
        result_type: the type of a whole rule.
        max_depth: the most nested units that sampling, mutation and decisions produce.
        constant_type: the type of :class:`Const` numbers (``None``: no numbers).
        rewrites: extra exact rewrites ``node -> simpler node | None`` the DSL knows.
        nest_probability: chance that sampling puts a unit (rather than an operand)
            in the root slot and in an inner slot.
    """

    operands: Sequence[Operand]
    unaries: Sequence[UnaryFn]
    binaries: Sequence[BinaryFn]
    result_type: str = "tensor"
    max_depth: int = 3
    constant_type: str | None = "tensor"
    rewrites: Sequence[Rewrite] = ()
    nest_probability: tuple[float, float] = (0.9, 0.35)
    _index: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "operands", tuple(self.operands))
        object.__setattr__(self, "unaries", tuple(self.unaries))
        object.__setattr__(self, "binaries", tuple(self.binaries))
        object.__setattr__(self, "rewrites", tuple(self.rewrites))
        names = [o.name for o in self.operands] + self.function_names()
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"names declared twice: {duplicates}")
        identities = [u.name for u in self.unaries if u.identity]
        if len(identities) != 1:
            raise ValueError(f"a grammar needs exactly one identity unary, got {identities}")
        if self.max_depth < 0:
            raise ValueError(f"max_depth must be >= 0, got {self.max_depth}")
        for b in self.binaries:
            outs = [s[2] for s in b.signatures]
            if len(outs) != len(set(outs)):
                raise ValueError(f"binary {b.name!r} has two signatures with one result type")
        self._index.update(
            operand={o.name: o for o in self.operands},
            unary={u.name: u for u in self.unaries},
            binary={b.name: b for b in self.binaries},
            identity=identities[0],
        )
        if not self.feasible(self.result_type, self.max_depth):
            raise ValueError(f"no rule of type {self.result_type!r} fits in depth {self.max_depth}")

    # ---------------------------------------------------------------- lookups

    def function_names(self) -> list[str]:
        return [u.name for u in self.unaries] + [b.name for b in self.binaries]

    def operand(self, name: str) -> Operand:
        operand: Operand = self._index["operand"][name]
        return operand

    def unary(self, name: str) -> UnaryFn:
        return self._index["unary"][name]

    def binary(self, name: str) -> BinaryFn:
        return self._index["binary"][name]

    @property
    def identity(self) -> str:
        return self._index["identity"]

    def operands_of(self, type_: str) -> list[Operand]:
        return [o for o in self.operands if o.type == type_]

    def unaries_for(self, type_: str) -> list[UnaryFn]:
        return [u for u in self.unaries if u.accepts(type_)]

    def feasible(self, type_: str, levels: int) -> bool:
        """Whether a slot of ``type_`` can be filled with at most ``levels`` nested units."""
        if self.operands_of(type_):
            return True
        return levels > 0 and bool(self.binaries_for(type_, levels))

    def binaries_for(self, type_: str, levels: int) -> list[BinaryFn]:
        """Binary functions that can head a unit of ``type_`` with ``levels`` levels left."""
        found = []
        for b in self.binaries:
            sig = b.producing(type_)
            if sig is not None and all(self.feasible(t, levels - 1) for t in sig):
                found.append(b)
        return found

    # ---------------------------------------------------------------- typing

    def type_of(self, node: Node) -> str:
        """The type of ``node``; raises :class:`ExprTypeError` if it does not type-check."""
        if isinstance(node, Leaf):
            if node.name not in self._index["operand"]:
                raise ExprTypeError(f"unknown operand {node.name!r}")
            return self.operand(node.name).type
        if isinstance(node, Const):
            if self.constant_type is None or not math.isfinite(node.value):
                raise ExprTypeError(f"number {node.value!r} is not allowed here")
            return self.constant_type
        if isinstance(node, Unary):
            if node.fn not in self._index["unary"]:
                raise ExprTypeError(f"unknown unary function {node.fn!r}")
            t = self.type_of(node.arg)
            if not self.unary(node.fn).accepts(t):
                raise ExprTypeError(f"{node.fn} does not accept an argument of type {t!r}")
            return t
        if node.fn not in self._index["binary"]:
            raise ExprTypeError(f"unknown binary function {node.fn!r}")
        lt, rt = self.type_of(node.left), self.type_of(node.right)
        out = self.binary(node.fn).result(lt, rt)
        if out is None:
            raise ExprTypeError(f"{node.fn} does not accept arguments of types ({lt!r}, {rt!r})")
        return out

    def check(self, node: Node, unit_form: bool = False, max_depth: int | None = None) -> None:
        """Raise :class:`ExprTypeError` unless ``node`` is a rule of this grammar.

        With ``unit_form`` also require unit form and depth at most ``max_depth``
        (the grammar's by default).
        """
        t = self.type_of(node)
        if t != self.result_type:
            raise ExprTypeError(f"a rule must have type {self.result_type!r}, got {t!r}")
        if unit_form:
            limit = self.max_depth if max_depth is None else max_depth
            if depth(node) > limit:
                raise ExprTypeError(f"rule nests {depth(node)} units, more than {limit}")
            if not self.is_unit_form(node):
                raise ExprTypeError("rule is not in unit form b(u1(x1), u2(x2))")

    def is_unit_form(self, node: Node) -> bool:
        """Every slot holds at most one (non-identity) unary over an operand or a unit."""
        for _, n in walk(node):
            if isinstance(n, Const):
                return False
            if isinstance(n, Unary) and (isinstance(n.arg, Unary) or n.fn == self.identity):
                return False
        return True

    def is_random(self, node: Node) -> bool:
        """Whether evaluating ``node`` draws random numbers (the ignored side of
        ``keep_left`` functions is never evaluated)."""
        if isinstance(node, Leaf):
            return self.operand(node.name).random
        if isinstance(node, Const):
            return False
        if isinstance(node, Unary):
            return self.unary(node.fn).random or self.is_random(node.arg)
        if self.binary(node.fn).keep_left:
            return self.is_random(node.left)
        return self.is_random(node.left) or self.is_random(node.right)

    def evaluated(self, node: Node) -> Iterator[Node]:
        """The nodes that evaluation visits, children before parents (post-order),
        skipping the ignored side of ``keep_left`` functions."""
        if isinstance(node, Unary):
            yield from self.evaluated(node.arg)
        elif isinstance(node, Binary):
            yield from self.evaluated(node.left)
            if not self.binary(node.fn).keep_left:
                yield from self.evaluated(node.right)
        yield node

    def evaluate(
        self,
        node: Node,
        leaf: Callable[[str], V],
        const: Callable[[float], V],
        unary: Callable[[str, V], V],
        binary: Callable[[str, V, V], V],
    ) -> V:
        """Evaluate ``node`` bottom-up with the given meanings (left before right;
        the right side of ``keep_left`` functions is skipped, identities pass through)."""
        if isinstance(node, Leaf):
            return leaf(node.name)
        if isinstance(node, Const):
            return const(node.value)
        if isinstance(node, Unary):
            value = self.evaluate(node.arg, leaf, const, unary, binary)
            return value if node.fn == self.identity else unary(node.fn, value)
        left = self.evaluate(node.left, leaf, const, unary, binary)
        if self.binary(node.fn).keep_left:
            return left
        right = self.evaluate(node.right, leaf, const, unary, binary)
        return binary(node.fn, left, right)

    # ---------------------------------------------------------------- text

    def format(self, node: Node) -> str:
        """Canonical text of ``node``."""
        if isinstance(node, Leaf):
            return node.name
        if isinstance(node, Const):
            return repr(float(node.value))
        if isinstance(node, Unary):
            return f"{node.fn}({self.format(node.arg)})"
        return f"{node.fn}({self.format(node.left)}, {self.format(node.right)})"

    def parse(self, text: str) -> Node:
        """The tree written in ``text``; raises :class:`ParseError` naming the position
        and what was expected (also for type errors)."""
        return _Parser(self, text).parse()

    # ---------------------------------------------------------------- sampling

    def sample(self, rng: np.random.Generator, max_depth: int | None = None) -> Node:
        """A random rule in unit form, at most ``max_depth`` units deep."""
        limit = self.max_depth if max_depth is None else max_depth
        return self._sample_slot(rng, self.result_type, limit, root=True)

    def _sample_slot(self, rng: np.random.Generator, type_: str, levels: int, root: bool) -> Node:
        operands = self.operands_of(type_)
        units = self.binaries_for(type_, levels) if levels > 0 else []
        p_nest = self.nest_probability[0 if root else 1]
        if units and (not operands or rng.random() < p_nest):
            core = self._sample_unit(rng, type_, levels, units)
        else:
            core = Leaf(operands[int(rng.integers(len(operands)))].name)
        return self._wrap(rng, core, type_)

    def _sample_unit(self, rng: np.random.Generator, type_: str, levels: int,
                     units: Sequence[BinaryFn]) -> Node:
        fn = units[int(rng.integers(len(units)))]
        sig = fn.producing(type_)
        assert sig is not None
        left = self._sample_slot(rng, sig[0], levels - 1, root=False)
        right = self._sample_slot(rng, sig[1], levels - 1, root=False)
        return Binary(fn.name, left, right)

    def _wrap(self, rng: np.random.Generator, core: Node, type_: str) -> Node:
        options = self.unaries_for(type_)
        fn = options[int(rng.integers(len(options)))]
        return core if fn.identity else Unary(fn.name, core)

    # ---------------------------------------------------------------- mutation

    def mutate(self, node: Node, rng: np.random.Generator, max_depth: int | None = None,
               tries: int = 100) -> Node:
        """A type-correct variant of ``node`` that differs in its key when possible.

        One mutation swaps an operand, a unary or a binary function for another of
        its kind, grows an operand into a unit, or shrinks a unit into one of its
        arguments (or an operand), within ``max_depth``. Infeasible mutations are
        retried, never returned; like Lion's program search, mutation repeats until
        the key changes (after ``tries`` attempts, a different text suffices).
        """
        limit = self.max_depth if max_depth is None else max_depth
        unit_form = self.is_unit_form(node)
        key, text = self.key(node), self.format(node)
        fallback: Node | None = None
        for _ in range(tries):
            child = self._mutate_once(node, rng, limit)
            if child is None:
                continue
            try:
                self.check(child, unit_form=unit_form, max_depth=max(limit, depth(node)))
            except ExprTypeError:
                continue
            if self.key(child) != key:
                return child
            if fallback is None and self.format(child) != text:
                fallback = child
        if fallback is not None:
            return fallback
        raise ValueError(f"no mutation of {text!r} changes it")

    def _slots(self, node: Node) -> list[tuple[Path, int]]:
        """Paths of the root and of every binary argument, with their unit depth."""
        found: list[tuple[Path, int]] = [((), 0)]
        levels: dict[Path, int] = {(): 0}
        for path, n in walk(node):
            if isinstance(n, Binary):
                for i in (0, 1):
                    levels[(*path, i)] = levels[path] + 1
                    found.append(((*path, i), levels[path] + 1))
            elif isinstance(n, Unary):
                levels[(*path, 0)] = levels[path]
        return found

    def _mutate_once(self, node: Node, rng: np.random.Generator, limit: int) -> Node | None:
        kinds = (self._swap_operand, self._swap_unary, self._swap_binary, self._grow, self._shrink)
        return kinds[int(rng.integers(len(kinds)))](node, rng, limit)

    def _swap_operand(self, node: Node, rng: np.random.Generator, limit: int) -> Node | None:
        sites = [(p, n) for p, n in walk(node) if isinstance(n, (Leaf, Const))]
        path, leaf = sites[int(rng.integers(len(sites)))]
        options = [o for o in self.operands_of(self.type_of(leaf))
                   if not (isinstance(leaf, Leaf) and o.name == leaf.name)]
        if not options:
            return None
        return replace(node, path, Leaf(options[int(rng.integers(len(options)))].name))

    def _swap_unary(self, node: Node, rng: np.random.Generator, limit: int) -> Node | None:
        """Change, remove or add the unary function of one slot."""
        slots = self._slots(node)
        path, _ = slots[int(rng.integers(len(slots)))]
        here = get(node, path)
        t = self.type_of(here)
        if isinstance(here, Unary):
            options = [u for u in self.unaries_for(t) if u.name != here.fn]
            core = here.arg
        else:
            options = [u for u in self.unaries_for(t) if not u.identity]
            core = here
        if not options:
            return None
        fn = options[int(rng.integers(len(options)))]
        return replace(node, path, core if fn.identity else Unary(fn.name, core))

    def _swap_binary(self, node: Node, rng: np.random.Generator, limit: int) -> Node | None:
        sites = [(p, n) for p, n in walk(node) if isinstance(n, Binary)]
        if not sites:
            return None
        path, b = sites[int(rng.integers(len(sites)))]
        assert isinstance(b, Binary)
        lt, rt, out = self.type_of(b.left), self.type_of(b.right), self.type_of(b)
        options = [f for f in self.binaries if f.name != b.fn and f.result(lt, rt) == out]
        if not options:
            return None
        fn = options[int(rng.integers(len(options)))]
        return replace(node, path, Binary(fn.name, b.left, b.right))

    def _cores(self, node: Node) -> list[tuple[Path, int]]:
        """The path below each slot's unaries, with the slot's unit depth."""
        cores = []
        for path, level in self._slots(node):
            while isinstance(get(node, path), Unary):
                path = (*path, 0)
            cores.append((path, level))
        return cores

    def _grow(self, node: Node, rng: np.random.Generator, limit: int) -> Node | None:
        """Turn an operand into a unit of depth one that keeps it as one argument."""
        sites = [(p, lv) for p, lv in self._cores(node)
                 if not isinstance(get(node, p), Binary) and lv < limit]
        if not sites:
            return None
        path, _ = sites[int(rng.integers(len(sites)))]
        old = get(node, path)
        t = self.type_of(old)
        units = [u for u in self.binaries_for(t, 1) if self._fits_one(u, t)]
        if not units:
            return None
        unit = self._sample_unit(rng, t, 1, units)
        side = int(rng.integers(2))
        inner: Path = (side,)
        while isinstance(get(unit, inner), Unary):
            inner = (*inner, 0)
        if self.type_of(get(unit, inner)) == t:
            unit = replace(unit, inner, old)
        return replace(node, path, unit)

    def _shrink(self, node: Node, rng: np.random.Generator, limit: int) -> Node | None:
        """Replace a unit by the core of one of its arguments, or by an operand."""
        sites = [p for p, _ in self._cores(node) if isinstance(get(node, p), Binary)]
        if not sites:
            return None
        path = sites[int(rng.integers(len(sites)))]
        unit = get(node, path)
        t = self.type_of(unit)
        options: list[Node] = [strip_unaries(c) for c in children(unit) if self.type_of(c) == t]
        options += [Leaf(o.name) for o in self.operands_of(t)]
        if not options:
            return None
        return replace(node, path, options[int(rng.integers(len(options)))])

    def _fits_one(self, fn: BinaryFn, type_: str) -> bool:
        sig = fn.producing(type_)
        return sig is not None and all(self.operands_of(t) for t in sig)

    # ---------------------------------------------------------------- simplification

    def simplify(self, node: Node) -> Node:
        """An equivalent tree in simplest form (see the module docstring)."""
        for _ in range(32):
            simpler = self._simplify(node)
            if simpler == node:
                return node
            node = simpler
        return node

    def constant(self, node: Node) -> float | None:
        """The number ``node`` is, when it is a constant operand or a :class:`Const`."""
        if isinstance(node, Const):
            return node.value
        if isinstance(node, Leaf):
            return self.operand(node.name).value
        return None

    def number(self, value: float) -> Node:
        """A folded number: the constant operand with that value, if one exists."""
        for o in self.operands:
            if o.value is not None and o.type == self.constant_type and o.value == value \
                    and math.copysign(1.0, o.value) == math.copysign(1.0, value):
                return Leaf(o.name)
        return Const(float(value))

    def _simplify(self, node: Node) -> Node:
        if isinstance(node, Leaf):
            alias = self.operand(node.name).alias
            return self._simplify(self.parse(alias)) if alias else node
        if isinstance(node, Const):
            return self.number(node.value)
        if isinstance(node, Unary):
            fn = self.unary(node.fn)
            arg = self._simplify(node.arg)
            if fn.identity:
                return arg
            if isinstance(arg, Unary):
                if fn.involution and arg.fn == fn.name:
                    return arg.arg
                if fn.idempotent and arg.fn == fn.name:
                    return arg
                if arg.fn in fn.absorbs:
                    return self._simplify(Unary(fn.name, arg.arg))
            value = self.constant(arg)
            if fn.fold is not None and value is not None:
                folded = fn.fold(value)
                if math.isfinite(folded):
                    return self.number(folded)
            return self._rewrite(Unary(fn.name, arg))
        fn2 = self.binary(node.fn)
        left = self._simplify(node.left)
        if fn2.keep_left:
            return left
        right = self._simplify(node.right)
        lv, rv = self.constant(left), self.constant(right)
        if fn2.fold is not None and lv is not None and rv is not None:
            folded = fn2.fold(lv, rv)
            if math.isfinite(folded):
                return self.number(folded)
        if fn2.right_identity is not None:
            if rv == fn2.right_identity:
                return left
            if fn2.commutative and lv == fn2.right_identity:
                return right
        if fn2.commutative and not (self.is_random(left) and self.is_random(right)):
            if self.format(right) < self.format(left):
                left, right = right, left
        return self._rewrite(Binary(fn2.name, left, right))

    def _rewrite(self, node: Node) -> Node:
        for rule in self.rewrites:
            new = rule(node)
            if new is not None:
                return new
        return node

    def key(self, node: Node) -> str:
        """A stable hash of the simplified canonical text."""
        text = self.format(self.simplify(node))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    # ---------------------------------------------------------------- decisions

    def decisions(self, max_depth: int | None = None) -> list[int]:
        """The number of options of each categorical decision (see the module docstring)."""
        limit = self.max_depth if max_depth is None else max_depth
        sizes: list[int] = []

        def slot(level: int) -> None:
            sizes.append(len(self.unaries))
            sizes.append(len(self.operands) + (1 if level < limit else 0))
            if level < limit:
                sizes.append(len(self.binaries))
                slot(level + 1)
                slot(level + 1)

        slot(0)
        return sizes

    def from_decisions(self, choices: Sequence[int], max_depth: int | None = None) -> Node:
        """The rule encoded by ``choices``; every sequence of the right length decodes."""
        limit = self.max_depth if max_depth is None else max_depth
        sizes = self.decisions(limit)
        if len(choices) != len(sizes):
            raise ValueError(f"need {len(sizes)} decisions, got {len(choices)}")
        cursor = _Cursor([int(c) for c in choices])

        def skip_slot(level: int) -> None:
            cursor.take(2 if level >= limit else 3)
            if level < limit:
                skip_slot(level + 1)
                skip_slot(level + 1)

        def slot(type_: str, level: int) -> Node:
            unaries = self.unaries_for(type_)
            fn = unaries[cursor.take() % len(unaries)]
            options: list[Operand | None] = list(self.operands_of(type_))
            units = self.binaries_for(type_, limit - level) if level < limit else []
            if units:
                options.append(None)
            pick = options[cursor.take() % len(options)]
            if level < limit:
                binary_choice = cursor.take()
                if pick is None:
                    b = units[binary_choice % len(units)]
                    sig = b.producing(type_)
                    assert sig is not None
                    core: Node = Binary(b.name, slot(sig[0], level + 1), slot(sig[1], level + 1))
                else:
                    skip_slot(level + 1)
                    skip_slot(level + 1)
            if pick is not None:
                core = Leaf(pick.name)
            return core if fn.identity else Unary(fn.name, core)

        return slot(self.result_type, 0)

    def to_decisions(self, node: Node, max_depth: int | None = None) -> list[int]:
        """The decisions that encode ``node`` (unit form, within ``max_depth``);
        ``from_decisions(to_decisions(t)) == t``."""
        limit = self.max_depth if max_depth is None else max_depth
        self.check(node, unit_form=True, max_depth=limit)
        out: list[int] = []

        def zeros(level: int) -> None:
            out.extend([0, 0] if level >= limit else [0, 0, 0])
            if level < limit:
                zeros(level + 1)
                zeros(level + 1)

        def slot(n: Node, type_: str, level: int) -> None:
            unaries = self.unaries_for(type_)
            fn = n.fn if isinstance(n, Unary) else self.identity
            out.append([u.name for u in unaries].index(fn))
            core = n.arg if isinstance(n, Unary) else n
            options = [o.name for o in self.operands_of(type_)]
            units = self.binaries_for(type_, limit - level) if level < limit else []
            if isinstance(core, Binary):
                out.append(len(options))
                out.append([b.name for b in units].index(core.fn))
                sig = self.binary(core.fn).producing(type_)
                assert sig is not None
                slot(core.left, sig[0], level + 1)
                slot(core.right, sig[1], level + 1)
            else:
                assert isinstance(core, Leaf)
                out.append(options.index(core.name))
                if level < limit:
                    out.append(0)
                    zeros(level + 1)
                    zeros(level + 1)

        slot(node, self.result_type, 0)
        return out


class _Cursor:
    def __init__(self, values: list[int]) -> None:
        self.values, self.position = values, 0

    def take(self, n: int = 1) -> int:
        value = self.values[self.position] if n == 1 else 0
        self.position += n
        return value


class _Parser:
    """Recursive descent over ``expr := number | name | name '(' expr [',' expr] ')'``."""

    def __init__(self, grammar: Grammar, text: str) -> None:
        self.grammar, self.text = grammar, text
        self.tokens: list[tuple[str, str, int]] = []
        position = 0
        while position < len(text):
            match = _TOKEN.match(text, position)
            if match is None or match.end() == position:
                if text[position:].strip() == "":
                    break
                start = position + len(text[position:]) - len(text[position:].lstrip())
                raise ParseError(text, start, "an operand, a function, a number, '(', ')' or ','")
            kind = match.lastgroup
            assert kind is not None
            self.tokens.append((kind, match.group(kind), match.start(kind)))
            position = match.end()
        self.index = 0

    def peek(self) -> tuple[str, str, int]:
        if self.index < len(self.tokens):
            return self.tokens[self.index]
        return ("end", "", len(self.text))

    def expect(self, value: str, what: str) -> None:
        kind, text, position = self.peek()
        if kind != "punct" or text != value:
            raise ParseError(self.text, position, what)
        self.index += 1

    def parse(self) -> Node:
        node, _ = self.expression()
        kind, _, position = self.peek()
        if kind != "end":
            raise ParseError(self.text, position, "end of text")
        try:
            self.grammar.check(node)
        except ExprTypeError as err:
            raise ParseError(self.text, 0, f"a rule of type {self.grammar.result_type!r} ({err})") \
                from None
        return node

    def names(self) -> str:
        g = self.grammar
        return ("an operand (" + ", ".join(o.name for o in g.operands) + "), a function ("
                + ", ".join(g.function_names()) + ")"
                + (" or a number" if g.constant_type else ""))

    def expression(self) -> tuple[Node, str]:
        g = self.grammar
        kind, token, position = self.peek()
        if kind == "number" or (kind == "name" and token in g._index["operand"]):
            self.index += 1
            if token in g._index["operand"]:
                return Leaf(token), g.operand(token).type
            value = float(token)
            if g.constant_type is None or not math.isfinite(value):
                raise ParseError(self.text, position, self.names().replace(" or a number", ""))
            return Const(value), g.constant_type
        if kind != "name" or (token not in g._index["unary"] and token not in g._index["binary"]):
            raise ParseError(self.text, position, self.names())
        self.index += 1
        self.expect("(", f"'(' after {token}")
        arg_position = self.peek()[2]
        left, lt = self.expression()
        if token in g._index["unary"]:
            self.expect(")", f"')' closing {token}(...) (it takes one argument)")
            if not g.unary(token).accepts(lt):
                raise ParseError(self.text, arg_position,
                                 f"an argument of {token} of a type it accepts, not {lt!r}")
            return Unary(token, left), lt
        self.expect(",", f"',' and a second argument of {token}")
        right_position = self.peek()[2]
        right, rt = self.expression()
        self.expect(")", f"')' closing {token}(...) (it takes two arguments)")
        fn = g.binary(token)
        out = fn.result(lt, rt)
        if out is None:
            accepted = " or ".join(f"({a}, {b})" for a, b, _ in fn.signatures)
            raise ParseError(self.text, right_position if any(sig[0] == lt for sig in fn.signatures)
                             else arg_position,
                             f"arguments of {token} of types {accepted}, not ({lt}, {rt})")
        return Binary(token, left, right), out


def operands_used(grammar: Grammar, node: Node) -> set[str]:
    """Names of the operands that evaluation of ``node`` reads."""
    return {n.name for n in grammar.evaluated(node) if isinstance(n, Leaf)}
