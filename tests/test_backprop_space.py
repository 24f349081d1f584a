"""The backprop search space: text, types, named points, decisions, simplification, export."""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import metalearn as ml
from metalearn.errors import ParseError
from metalearn.searchspaces.backprop_dsl import BackpropSpace, ProxPropPoint
from metalearn.searchspaces.backprop_layers import BackpropRule
from metalearn.searchspaces.expr import Binary, Node, depth, operands_used, walk
from metalearn.searchspaces.proxprop import ProxPropLinear, ProxPropRule

_SPACE = ml.get_space("backprop")
assert isinstance(_SPACE, BackpropSpace)
SPACE: BackpropSpace = _SPACE



def binary_count(node: Node) -> int:
    return sum(isinstance(n, Binary) for _, n in walk(node))


def test_space_is_registered_with_its_named_points() -> None:
    assert SPACE.slots == ("backward",) and ml.get_space("backprop") is SPACE
    texts = {name: SPACE.format(g) for name, g in SPACE.named().items()}
    assert texts == {
        "backprop": "apply(d, W)",
        "feedback_alignment": "apply(d, G)",
        "sign_symmetry": "apply(d, sign(W))",
        "direct_feedback_alignment": "direct(e, D)",
        "proxprop": "proxprop(cg3, tau=0.05)",
    }
    assert SPACE.candidate(SPACE.parse("apply(d, W)")).name == "backprop"
    assert isinstance(SPACE.build(SPACE.named()["proxprop"]), ProxPropRule)
    built = SPACE.build(SPACE.named()["sign_symmetry"])
    assert isinstance(built, BackpropRule)
    assert built.program == ("apply", ("d",), ("sign", ("W",)))


def test_samples_are_typed_rules_with_one_to_three_binary_operations() -> None:
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        rule = SPACE.sample(rng)
        SPACE.grammar.check(rule)
        assert 1 <= binary_count(rule) <= 3 and depth(rule) <= 2
        assert operands_used(SPACE.grammar, rule) & {"d", "e"}
        assert SPACE.parse(SPACE.format(rule)) == rule
        seen.add(SPACE.format(rule).split("(")[0])
    assert {"apply", "direct"} <= seen  # both typed binaries appear at some root


def test_mutation_changes_the_rule_and_keeps_it_typed() -> None:
    rng = np.random.default_rng(1)
    rule = SPACE.named()["backprop"]
    for _ in range(300):
        child = SPACE.mutate(rule, rng)
        assert not isinstance(child, ProxPropPoint)  # a DSL rule mutates into a DSL rule
        SPACE.grammar.check(child)
        assert SPACE.key(child) != SPACE.key(rule)
        assert 1 <= binary_count(child) <= 3
        rule = child


def test_proxprop_text_parses_and_mutates_within_proxprop() -> None:
    assert SPACE.parse("proxprop(exact, tau=0.1)") == ProxPropPoint("exact", 0.1)
    assert SPACE.parse(" proxprop( cg10 , tau = 1e-2 ) ") == ProxPropPoint("cg10", 0.01)
    assert SPACE.parse("proxprop(gradient)") == ProxPropPoint("gradient", 0.05)
    point = SPACE.parse("proxprop(cg3, tau=0.05)")
    rng = np.random.default_rng(0)
    children = {SPACE.format(SPACE.mutate(point, rng)) for _ in range(50)}
    assert children == {"proxprop(cg3, tau=0.025)", "proxprop(cg3, tau=0.1)",
                        "proxprop(cg2, tau=0.05)", "proxprop(cg5, tau=0.05)"}
    # the check mode ignores tau: one key
    assert SPACE.key(ProxPropPoint("gradient", 0.1)) == SPACE.key(ProxPropPoint("gradient", 3.0))
    assert SPACE.key(ProxPropPoint("cg3", 0.1)) != SPACE.key(ProxPropPoint("cg3", 3.0))
    built = SPACE.build(SPACE.parse("proxprop(cg5, tau=0.2)"))
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    built.apply(model, torch.Generator())
    assert isinstance(model[0], ProxPropLinear) and model[0].tau_prox == 0.2
    assert model[0].cg_iterations == 5


@pytest.mark.parametrize("text, position", [
    ("apply(h, W)", 6),          # h is an in-signal, apply takes an out-signal
    ("direct(d, D)", 7),
    ("add(h, d)", 7),
    ("apply(d, W", 10),
    ("h", 0),                    # no binary operation
    ("sign(h)", 0),
    ("apply(d, 1.5)", 9),        # no numbers in this DSL
    ("apply(d, W) extra", 12),
    ("proxprop(cg0, tau=1)", 9),
    ("proxprop(exact, tau=-1)", 20),
    ("proxprop(cg3, tau=0.1", 0),
])
def test_malformed_text_is_a_parse_error_at_the_right_place(text: str, position: int) -> None:
    with pytest.raises(ParseError) as info:
        SPACE.parse(text)
    assert info.value.position == position, str(info.value)


def test_every_decision_vector_decodes_to_a_runnable_rule() -> None:
    sizes = SPACE.decisions()
    assert all(n >= 2 for n in sizes)
    rng = np.random.default_rng(2)
    for _ in range(500):
        choices = [int(rng.integers(n)) for n in sizes]
        rule = SPACE.from_decisions(choices)
        SPACE.grammar.check(rule)
        assert 1 <= binary_count(rule) <= 3
        assert SPACE.from_decisions(SPACE.to_decisions(rule)) == rule
    for name in ("backprop", "feedback_alignment", "sign_symmetry", "direct_feedback_alignment"):
        point = SPACE.named()[name]
        assert SPACE.from_decisions(SPACE.to_decisions(point)) == point
    with pytest.raises(ml.UserError, match="ProxProp"):
        SPACE.to_decisions(SPACE.named()["proxprop"])


@pytest.mark.parametrize("a, b", [
    ("apply(d, abs(neg(W)))", "apply(d, abs(W))"),
    ("apply(d, square(abs(W)))", "apply(d, square(W))"),
    ("add(h, apply(d, W))", "add(apply(d, W), h)"),
    ("left(apply(d, W), h)", "apply(d, W)"),
    ("apply(d, sign(clip(W)))", "apply(d, sign(W))"),
    ("max(apply(d, G), apply(d, G))", "apply(d, G)"),
    ("apply(neg(neg(d)), W)", "apply(d, W)"),
])
def test_equivalent_rules_share_a_key(a: str, b: str) -> None:
    assert SPACE.key(SPACE.parse(a)) == SPACE.key(SPACE.parse(b))


@pytest.mark.parametrize("a, b", [
    ("max(apply(d, R), apply(d, R))", "apply(d, R)"),  # two draws of R are not one
    ("sub(h, apply(d, W))", "sub(apply(d, W), h)"),
    ("apply(d, sign(W))", "apply(d, W)"),
])
def test_different_rules_keep_different_keys(a: str, b: str) -> None:
    assert SPACE.key(SPACE.parse(a)) != SPACE.key(SPACE.parse(b))


def test_simplified_rule_computes_the_same_signal() -> None:
    rng = np.random.default_rng(3)
    x = torch.randn(6, 5)
    for _ in range(40):
        rule = SPACE.sample(rng)
        signals = []
        for genome in (rule, SPACE.simplify(rule)):
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
            built = SPACE.build(genome)
            built.apply(model, torch.Generator().manual_seed(0))
            xi = x.clone().requires_grad_()
            logits = model(xi)
            built.observe_output(logits)
            F.cross_entropy(logits, torch.arange(6) % 3).backward()
            signals.append(model[0].weight.grad)
        torch.testing.assert_close(signals[0], signals[1], equal_nan=True, atol=1e-6, rtol=1e-5)


def _import(path: Path) -> object:
    spec = importlib.util.spec_from_file_location(f"exported_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("text", ["direct_feedback_alignment", "add(apply(d, G), noise(h))",
                                  "proxprop(cg3, tau=0.05)"])
def test_exported_file_needs_torch_alone_and_matches_build(text: str, tmp_path: Path) -> None:
    genome = SPACE.resolve(text)
    source = SPACE.export_source(genome)
    tree = ast.parse(source)
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {n.module.split(".")[0] for n in ast.walk(tree)
              if isinstance(n, ast.ImportFrom) and n.module}
    assert roots - {"torch", "__future__"} <= set(sys.stdlib_module_names)
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))
    path = tmp_path / "rule.py"
    path.write_text(source)
    module = _import(path)
    assert module.RULE_TEXT == SPACE.format(genome)  # type: ignore[attr-defined]

    def run(convert: Callable[[nn.Module, torch.Generator], Any]) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                              nn.Linear(3 * 4 * 4, 8), nn.ReLU(), nn.Linear(8, 4))
        rule = convert(model, torch.Generator().manual_seed(0))
        x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        logits = model(x)
        rule.observe_output(logits)
        F.cross_entropy(logits, torch.arange(5) % 4).backward()
        return [p.grad for p in model.parameters() if p.grad is not None]

    def ours(model: nn.Module, generator: torch.Generator) -> BackpropRule | ProxPropRule:
        built = SPACE.build(genome)
        built.apply(model, generator)
        return built

    for a, b in zip(run(module.convert), run(ours), strict=True):  # type: ignore[attr-defined]
        torch.testing.assert_close(a, b, atol=0, rtol=0)
