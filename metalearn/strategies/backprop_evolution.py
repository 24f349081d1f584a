"""The evolutionary controller of Backprop Evolution (Alber, Bello, Zoph, Kindermans, Ramachandran & Le, 2018).

"Backprop Evolution", ICML 2018 AutoML workshop (arXiv:1808.02822). The controller
keeps the population of every equation discovered so far. Each step, with
probability ``exploit_probability`` (the paper's p) it picks a parent uniformly at
random among the ``top_n`` fittest equations so far (N), otherwise uniformly among
the rest; it applies k mutations, k drawn from the categorical distribution
``mutation_counts`` (probabilities of k = 1, 2, 3, ...); a mutation swaps one
operand or function for another of the same kind (``space.mutate``), and an
infeasible result restarts the mutation. The initial population is
``initial_population`` random equations, or seeded with named rules (``init``,
e.g. backprop and feedback alignment, as in the paper).

Faithful: parent selection, k mutations from a categorical, restarts, seeding,
asynchronous operation (a parent is chosen from the population as it stands).
Differs: the paper does not publish p, N or the distribution of k; the defaults
here (p = 0.7, N = 10, k ~ (0.6, 0.3, 0.1)) are our choice. ``space.mutate``
never returns an ill-typed rule, so "infeasible" here means a child whose
simplified key equals its parent's or is already in the population (it would be
answered from the ledger and teach nothing); after ``max_restarts`` restarts the
child is proposed anyway. Failed candidates are kept (they are part of the
population) but are chosen as parents only while no candidate has succeeded.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from ..evaluator import Evaluation, Job
from ..searchspaces.base import SearchSpace
from .base import Strategy


@dataclass(order=True, frozen=True)
class Member:
    """One discovered equation; members sort fittest first, then oldest first."""

    rank_key: tuple[float, int]
    key: str = field(compare=False)
    genome: Any = field(compare=False)
    fitness: float = field(compare=False)


def parse_probabilities(value: str | Sequence[float]) -> tuple[float, ...]:
    """``"0.6,0.3,0.1"`` (from ``--option``) or a sequence -> normalised probabilities."""
    try:
        numbers = [float(v) for v in (value.split(",") if isinstance(value, str) else value)]
    except ValueError:
        raise UserError(f"mutation_counts takes probabilities of 1, 2, ... mutations, "
                        f"e.g. 0.6,0.3,0.1; got {value!r}") from None
    if not numbers or any(p < 0 for p in numbers) or sum(numbers) <= 0:
        raise UserError(f"mutation_counts needs non-negative probabilities with a positive sum, "
                        f"got {value!r}")
    total = sum(numbers)
    return tuple(p / total for p in numbers)


class BackpropEvolution(Strategy):
    """Top-N/rest parent selection with k ~ Categorical mutations (Alber et al. 2018)."""

    name = "backprop-evolution"

    def __init__(self, space: SearchSpace, seed: int = 0, init: Sequence[str] = (),
                 top_n: int = 10, exploit_probability: float = 0.7,
                 mutation_counts: str | Sequence[float] = (0.6, 0.3, 0.1),
                 initial_population: int | None = None, max_restarts: int = 20) -> None:
        super().__init__(space, seed, init)
        if top_n < 1 or not 0.0 <= exploit_probability <= 1.0 or max_restarts < 0:
            raise UserError(f"need top_n >= 1, 0 <= exploit_probability <= 1 and max_restarts >= 0, "
                            f"got {top_n}, {exploit_probability} and {max_restarts}")
        self.top_n = top_n
        self.exploit_probability = exploit_probability
        self.mutation_counts = parse_probabilities(mutation_counts)
        self.initial_population = top_n if initial_population is None else initial_population
        if self.initial_population < 1:
            raise UserError(f"initial_population must be >= 1, got {initial_population}")
        self.max_restarts = max_restarts
        self.ranked: list[Member] = []     # every distinct equation told, fittest first
        self.ok_count = 0                  # how many of them succeeded (they lead the ranking)
        self.keys: set[str] = set()

    def _ask(self) -> Job | None:
        if self.asked < self.initial_population:
            return Job(candidate=self.space.candidate(self.space.sample(self.rng)))
        if not self.ranked:
            return None  # the initial population is still in flight
        parent = self.parent()
        child = parent.genome
        for _ in range(self.max_restarts + 1):
            child = parent.genome
            for _ in range(self.mutations()):
                child = self.space.mutate(child, self.rng)
            key = self.space.key(child)
            if key != parent.key and key not in self.keys:
                break
        return Job(candidate=self.space.candidate(child))

    def parent(self) -> Member:
        """Uniform among the top N with probability p, else uniform among the rest."""
        pool = self.ranked[:self.ok_count] or self.ranked
        top, rest = pool[:self.top_n], pool[self.top_n:]
        if rest and self.rng.random() >= self.exploit_probability:
            return rest[int(self.rng.integers(len(rest)))]
        return top[int(self.rng.integers(len(top)))]

    def mutations(self) -> int:
        return 1 + int(self.rng.choice(len(self.mutation_counts), p=self.mutation_counts))

    def _tell(self, evaluation: Evaluation) -> None:
        key = evaluation.job.candidate.key
        if key in self.keys:
            return  # a repeat (e.g. answered from the ledger): the equation is known already
        genome = self.space.parse(evaluation.job.candidate.text)
        fitness = evaluation.score()
        fitness = fitness if math.isfinite(fitness) else -math.inf
        member = Member((-fitness, len(self.keys)), key, genome, fitness)
        bisect.insort(self.ranked, member)
        self.keys.add(key)
        self.ok_count += int(math.isfinite(fitness))
