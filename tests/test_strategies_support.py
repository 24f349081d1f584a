"""Small spaces and helpers shared by the strategy tests (no tests of its own).

``mini-optimizer`` is a two-unit version of the Neural Optimizer Search DSL (Bello
et al. 2017): ``u = b1(u1(op1), u2(op2)); U = b2(u3(op3), u4(op4))`` where the second
unit may read ``u``. It has 2.45e8 rules, PowerSign among them, so strategies can be
compared on the synthetic task without waiting for the full optimizer space.
``tiny-optimizer`` (``U = u(op)``, four rules) is for duplicate control.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import metalearn as ml
from metalearn.errors import ParseError
from metalearn.evaluator import Evaluation, Job, Status  # noqa: F401
from metalearn.ledger import Ledger
from metalearn.searchspaces.base import DiscreteSpace
from metalearn.strategies.base import Strategy

OPERANDS = ("g", "g2", "m", "sign_g", "sign_m", "one", "rms")
UNARY = ("id", "neg", "exp", "sign", "sqrt_abs")
BINARY = ("add", "sub", "mul", "div", "left")

Genome = tuple[int, ...]


def _unary(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "id":
        return x
    if name == "neg":
        return -x
    if name == "exp":
        return torch.exp(x)
    if name == "sign":
        return torch.sign(x)
    return torch.sqrt(torch.abs(x))


def _binary(name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if name == "add":
        return x + y
    if name == "sub":
        return x - y
    if name == "mul":
        return x * y
    if name == "div":
        return x / (y + 1e-8)
    return x


class MiniRule(torch.optim.Optimizer):
    """``w <- w - lr * U`` with ``U`` the rule's value; m and v without bias correction."""

    def __init__(self, params: Any, rule: Sequence[tuple[str, str, str, str, str]],
                 lr: float) -> None:
        super().__init__(params, {"lr": lr})
        self.rule = rule

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                g, state = p.grad, self.state[p]
                if not state:
                    state["m"], state["v"] = torch.zeros_like(p), torch.zeros_like(p)
                state["m"].mul_(0.9).add_(g, alpha=0.1)
                state["v"].mul_(0.999).add_(g * g, alpha=0.001)
                m, v = state["m"], state["v"]
                values = {"g": g, "g2": g * g, "m": m, "sign_g": torch.sign(g),
                          "sign_m": torch.sign(m), "one": torch.ones_like(g),
                          "rms": g / (v.sqrt() + 1e-8)}
                for op1, op2, u1, u2, b in self.rule:
                    values["u"] = _binary(b, _unary(u1, values[op1]), _unary(u2, values[op2]))
                p.add_(values["u"], alpha=-group["lr"])


class MiniOptimizerSpace(DiscreteSpace[Genome]):
    """``units`` Bello units; text ``b(u1(op1), u2(op2)); ...``."""

    def __init__(self, name: str = "mini-optimizer", operands: Sequence[str] = OPERANDS,
                 unary: Sequence[str] = UNARY, binary: Sequence[str] = BINARY,
                 units: int = 2) -> None:
        self.name, self.slots = name, ("optimizer",)
        self.operands, self.unary, self.binary, self.units = (
            tuple(operands), tuple(unary), tuple(binary), units)

    def _unit_operands(self, unit: int) -> tuple[str, ...]:
        return self.operands + (("u",) if unit > 0 else ())

    def decisions(self) -> list[int]:
        sizes = []
        for unit in range(self.units):
            n = len(self._unit_operands(unit))
            sizes += [n, n, len(self.unary), len(self.unary), len(self.binary)]
        return sizes

    def from_decisions(self, choices: Sequence[int]) -> Genome:
        genome = tuple(int(c) for c in choices)
        if len(genome) != len(self.decisions()) or any(
                not 0 <= c < n for c, n in zip(genome, self.decisions())):
            raise ValueError(f"bad decisions {choices}")
        return genome

    def to_decisions(self, genome: Genome) -> list[int]:
        return list(genome)

    def sample(self, rng: np.random.Generator) -> Genome:
        return tuple(int(rng.integers(n)) for n in self.decisions())

    def mutate(self, genome: Genome, rng: np.random.Generator) -> Genome:
        sizes = self.decisions()
        while True:
            i = int(rng.integers(len(genome)))
            if sizes[i] < 2:
                continue
            child = genome[:i] + (int(rng.integers(sizes[i])),) + genome[i + 1:]
            if self.key(child) != self.key(genome):
                return child

    def _names(self, genome: Genome) -> list[tuple[str, str, str, str, str]]:
        units = []
        for unit in range(self.units):
            o1, o2, u1, u2, b = genome[5 * unit:5 * unit + 5]
            ops = self._unit_operands(unit)
            units.append((ops[o1], ops[o2], self.unary[u1], self.unary[u2], self.binary[b]))
        return units

    def format(self, genome: Genome) -> str:
        return "; ".join(f"{b}({u1}({o1}), {u2}({o2}))" for o1, o2, u1, u2, b in self._names(genome))

    def parse(self, text: str) -> Genome:
        pieces = [p.strip() for p in text.split(";")]
        if len(pieces) != self.units:
            raise ParseError(text, 0, f"{self.units} units separated by ';'")
        genome: list[int] = []
        for unit, piece in enumerate(pieces):
            match = re.fullmatch(r"(\w+)\((\w+)\((\w+)\), (\w+)\((\w+)\)\)", piece)
            ops = self._unit_operands(unit)
            try:
                assert match is not None
                b, u1, o1, u2, o2 = match.groups()
                genome += [ops.index(o1), ops.index(o2), self.unary.index(u1),
                           self.unary.index(u2), self.binary.index(b)]
            except (AssertionError, ValueError):
                raise ParseError(text, text.index(piece), "b(u(op), u(op))") from None
        return tuple(genome)

    def simplify(self, genome: Genome) -> Genome:
        """``left`` ignores its second argument; a first unit the last one never reads is dead."""
        units = [list(genome[5 * u:5 * u + 5]) for u in range(self.units)]
        for unit in units:
            if self.binary[unit[4]] == "left":
                unit[1] = unit[3] = 0
        for u in range(self.units - 1):
            reader = units[u + 1]
            ops = self._unit_operands(u + 1)
            reads = ops[reader[0]] == "u" or (ops[reader[1]] == "u"
                                              and self.binary[reader[4]] != "left")
            if not reads:
                units[u] = [0, 0, 0, 0, 0]
        return tuple(c for unit in units for c in unit)

    def named(self) -> dict[str, Genome]:
        if self.units != 2:
            return {}
        return {name: self.parse(text) for name, text in {
            "sgd": "left(id(g), id(g)); left(id(u), id(g))",
            "signsgd": "left(sign(g), id(g)); left(id(u), id(g))",
            "rmsprop": "left(id(rms), id(g)); left(id(u), id(g))",
            "powersign": "mul(id(sign_g), id(sign_m)); mul(exp(u), id(g))",
            "momentum": "left(id(m), id(g)); left(id(u), id(g))",
        }.items()}

    def build(self, genome: Genome) -> Any:
        rule = self._names(genome)

        def factory(params: Any, lr: float = 0.01, **_: Any) -> torch.optim.Optimizer:
            return MiniRule(params, rule, lr)

        return factory


class TinyOptimizerSpace(MiniOptimizerSpace):
    """Four rules ``U = u(op)``: op in {g, sign_g}, u in {id, neg}."""

    def __init__(self) -> None:
        super().__init__("tiny-optimizer", ("g", "sign_g"), ("id", "neg"), ("left",), units=1)

    def decisions(self) -> list[int]:
        return [2, 2]

    def from_decisions(self, choices: Sequence[int]) -> Genome:
        op, u = (int(c) for c in choices)
        return (op, 0, u, 0, 0)

    def to_decisions(self, genome: Genome) -> list[int]:
        return [genome[0], genome[2]]

    def sample(self, rng: np.random.Generator) -> Genome:
        return self.from_decisions([int(rng.integers(2)), int(rng.integers(2))])

    def mutate(self, genome: Genome, rng: np.random.Generator) -> Genome:
        choices = self.to_decisions(genome)
        i = int(rng.integers(2))
        choices[i] = 1 - choices[i]
        return self.from_decisions(choices)


ml.register_space("mini-optimizer", MiniOptimizerSpace)
ml.register_space("tiny-optimizer", TinyOptimizerSpace)

#: a short synthetic task, so that a whole search takes well under a second
SHORT = {"steps": 20, "dim": 16}


def ledger_keys(run: Path, cached: bool = False) -> list[tuple[int, str]]:
    """``(proposal, job key)`` of each evaluation, in proposal order."""
    ledger = Ledger(run / "ledger.db", readonly=True)
    try:
        return [(r["proposal"], r["job_key"]) for r in ledger.rows(
            "WHERE cached = ? ORDER BY proposal", (int(cached),))]
    finally:
        ledger.close()


def ledger_rows(run: Path) -> list[dict[str, Any]]:
    ledger = Ledger(run / "ledger.db", readonly=True)
    try:
        return list(ledger.rows("ORDER BY id"))
    finally:
        ledger.close()


def drive(strategy: Strategy, fitness: Any, n: int, told: list[Evaluation] | None = None
          ) -> list[Job]:
    """Ask and tell ``n`` proposals one at a time with ``fitness(job) -> float | None``."""
    jobs = []
    for _ in range(n):
        job = strategy.ask_one()
        assert job is not None
        jobs.append(job)
        value = fitness(job)
        evaluation = Evaluation(job=job, status=Status.OK if value is not None else Status.DIVERGED,
                                fitness=value)
        strategy.tell([evaluation])
        if told is not None:
            told.append(evaluation)
    return jobs
