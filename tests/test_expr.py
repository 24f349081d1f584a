"""The shared expression-tree machinery: typing, text, sampling, mutation, simplification,
decisions; checked on a typed toy DSL shaped like the backprop DSL and on a one-type DSL
with constants."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metalearn.errors import ParseError
from metalearn.searchspaces.expr import (
    Binary,
    BinaryFn,
    Const,
    ExprTypeError,
    Grammar,
    Leaf,
    Operand,
    Unary,
    UnaryFn,
    depth,
    elementwise,
    walk,
)

SIGNALS = ("weight", "out", "in")


def backprop_like(max_depth: int = 3) -> Grammar:
    """Types as in Backprop Evolution: only ``apply`` and ``direct`` reach an in-signal
    from the other types."""
    return Grammar(
        operands=[Operand("W", "weight"), Operand("G", "weight"), Operand("d", "out"),
                  Operand("h", "in"), Operand("e", "error"), Operand("D", "direct"),
                  Operand("R", "weight", random=True)],
        unaries=[UnaryFn("id", identity=True), UnaryFn("neg", involution=True),
                 UnaryFn("sign", idempotent=True), UnaryFn("abs", absorbs=frozenset({"neg"})),
                 UnaryFn("dropout", types=frozenset({"in", "out"}), random=True)],
        binaries=[BinaryFn("apply", signatures=(("out", "weight", "in"),)),
                  BinaryFn("direct", signatures=(("error", "direct", "in"),)),
                  BinaryFn("add", signatures=elementwise(*SIGNALS), commutative=True),
                  BinaryFn("sub", signatures=elementwise(*SIGNALS)),
                  BinaryFn("left", signatures=elementwise(*SIGNALS), keep_left=True)],
        result_type="in", max_depth=max_depth, constant_type=None,
    )


def arithmetic() -> Grammar:
    """One type, constants that fold, a random operand."""
    return Grammar(
        operands=[Operand("x"), Operand("y"), Operand("one", value=1.0), Operand("two", value=2.0),
                  Operand("r", random=True), Operand("s", random=True),
                  Operand("twice_x", alias="add(x, x)")],
        unaries=[UnaryFn("id", identity=True), UnaryFn("neg", fold=lambda v: -v, involution=True),
                 UnaryFn("sq", fold=lambda v: v * v)],
        binaries=[BinaryFn("add", fold=lambda a, b: a + b, commutative=True, right_identity=0.0),
                  BinaryFn("mul", fold=lambda a, b: a * b, commutative=True, right_identity=1.0),
                  BinaryFn("div", fold=lambda a, b: a / b if b else math.inf),
                  BinaryFn("left", keep_left=True)],
        max_depth=3,
    )


def test_type_of_follows_signatures() -> None:
    g = backprop_like()
    assert g.type_of(Binary("apply", Leaf("d"), Unary("sign", Leaf("W")))) == "in"
    assert g.type_of(Binary("add", Leaf("W"), Leaf("G"))) == "weight"
    with pytest.raises(ExprTypeError, match="apply does not accept"):
        g.type_of(Binary("apply", Leaf("W"), Leaf("d")))
    with pytest.raises(ExprTypeError, match="dropout does not accept"):
        g.type_of(Unary("dropout", Leaf("W")))
    with pytest.raises(ExprTypeError, match="must have type 'in'"):
        g.check(Leaf("d"))


def test_sampled_rules_round_trip_through_text_and_decisions() -> None:
    g = backprop_like()
    rng = np.random.default_rng(0)
    depths = set()
    for _ in range(2000):
        rule = g.sample(rng)
        g.check(rule, unit_form=True)
        depths.add(depth(rule))
        assert g.parse(g.format(rule)) == rule
        assert g.from_decisions(g.to_decisions(rule)) == rule
    assert depths == {0, 1, 2, 3}


def test_every_decision_vector_decodes_to_a_well_typed_rule() -> None:
    g = backprop_like()
    sizes = g.decisions()
    assert len(sizes) == 2 * 15 + 7  # 15 slots and 7 units in a complete tree of depth 3
    rng = np.random.default_rng(1)
    seen_direct = False
    for _ in range(2000):
        choices = [int(rng.integers(n)) for n in sizes]
        rule = g.from_decisions(choices)
        g.check(rule, unit_form=True)
        seen_direct |= "direct(" in g.format(rule)
        again = g.from_decisions(g.to_decisions(rule))
        assert again == rule
    assert seen_direct


def test_decisions_of_a_known_rule() -> None:
    g = backprop_like(max_depth=1)
    rule = g.parse("apply(d, sign(W))")
    choices = g.to_decisions(rule)
    # root: unary id, choice "unit" (after the one in-signal operand h), binary apply;
    # left slot: id, operand d (the only out-signal); right slot: sign, W (first weight)
    unaries = [u.name for u in g.unaries]
    assert choices == [0, 1, 0, 0, 0, unaries.index("sign"), 0]
    assert g.from_decisions(choices) == rule


def test_mutation_is_type_correct_changes_the_key_and_respects_depth() -> None:
    g = backprop_like()
    rng = np.random.default_rng(2)
    rule = g.sample(rng)
    grew = shrank = 0
    for _ in range(1500):
        child = g.mutate(rule, rng)
        g.check(child, unit_form=True)
        assert g.key(child) != g.key(rule)
        grew += depth(child) > depth(rule)
        shrank += depth(child) < depth(rule)
        rule = child
    assert grew > 50 and shrank > 50


def test_parse_errors_name_position_and_expectation() -> None:
    g = backprop_like()
    cases = {
        "apply(d, h)": (9, "(out, weight)"),
        "apply(d W)": (8, "','"),
        "apply(d, W": (10, "')'"),
        "neg(apply(d, W), h)": (15, "takes one argument"),
        "nope(d)": (0, "an operand (W, G, d, h, e, D, R)"),
        "apply(d, W) h": (12, "end of text"),
        "apply(d, W)$": (11, "'('"),
        "apply": (5, "'(' after apply"),
        "apply(d, 1.0)": (9, "an operand"),
        "d": (0, "a rule of type 'in'"),
    }
    for text, (position, expected) in cases.items():
        with pytest.raises(ParseError) as info:
            g.parse(text)
        assert info.value.position == position, text
        assert expected in info.value.expected, (text, info.value.expected)
        assert f"position {position}" in str(info.value)


def test_simplify_removes_folds_and_orders() -> None:
    g = arithmetic()
    simple = {
        "left(x, r)": "x",
        "neg(neg(x))": "x",
        "add(one, one)": "two",
        "mul(add(one, two), x)": "mul(3.0, x)",
        "mul(x, one)": "x",
        "add(y, x)": "add(x, y)",
        "add(s, r)": "add(s, r)",  # both random: their draw order is kept
        "add(r, y)": "add(r, y)",
        "add(y, r)": "add(r, y)",
        "twice_x": "add(x, x)",
        "div(one, add(one, neg(one)))": "div(one, 0.0)",  # not folded: infinite
        "sq(neg(two))": "4.0",
    }
    for text, expected in simple.items():
        assert g.format(g.simplify(g.parse(text))) == expected, text
    assert g.key(g.parse("add(y, mul(x, two))")) == g.key(g.parse("add(mul(two, x), y)"))
    assert g.key(g.parse("div(x, y)")) != g.key(g.parse("div(y, x)"))
    assert g.parse("mul(3.0, x)") == Binary("mul", Const(3.0), Leaf("x"))


def test_simplify_is_idempotent_and_keeps_the_type() -> None:
    g = backprop_like()
    rng = np.random.default_rng(3)
    for _ in range(1000):
        rule = g.sample(rng)
        simple = g.simplify(rule)
        g.check(simple)
        assert g.simplify(simple) == simple
        assert g.parse(g.format(simple)) == simple
        assert sum(1 for _ in walk(simple)) <= sum(1 for _ in walk(rule))


def test_evaluate_skips_the_ignored_side_and_identities() -> None:
    g = arithmetic()
    visited: list[str] = []

    def leaf(name: str) -> float:
        visited.append(name)
        return {"x": 3.0, "y": 5.0}.get(name, 1.0)

    value = g.evaluate(g.parse("add(left(x, r), id(mul(y, two)))"), leaf, float,
                       lambda fn, v: -v if fn == "neg" else v * v,
                       lambda fn, a, b: a + b if fn == "add" else a * b)
    assert value == 3.0 + 5.0 * 1.0
    assert visited == ["x", "y", "two"]
    assert [type(n).__name__ for n in g.evaluated(g.parse("left(x, r)"))] == ["Leaf", "Binary"]


def test_grammar_declarations_are_validated() -> None:
    with pytest.raises(ValueError, match="exactly one identity"):
        Grammar((Operand("x"),), (UnaryFn("neg"),), (BinaryFn("add"),))
    with pytest.raises(ValueError, match="declared twice"):
        Grammar((Operand("x"), Operand("x")), (UnaryFn("id", identity=True),), ())
    with pytest.raises(ValueError, match="no rule of type"):
        Grammar((Operand("x", "a"),), (UnaryFn("id", identity=True),), (), result_type="b")
