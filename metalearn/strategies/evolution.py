"""Regularized (aging) evolution (Real, Aggarwal, Huang & Le, AAAI 2019; AutoML-Zero, Real et al. 2020).

A population of ``population_size`` members; each new proposal samples
``tournament_size`` members at random, mutates the fittest of them, and when the
child's result arrives it joins the population while the *oldest* member leaves.
Faithful to the paper, including steady-state (asynchronous) operation: a child is
proposed whenever a worker is free, from the population as it stands. The first
``population_size`` proposals are random samples (or the ``init`` points). Failed
evaluations join the population with the lowest fitness, so they age out.
Differs: with ``mutation_probability`` below 1 an unmutated copy of the parent is
proposed, which the ledger answers for free (AutoML-Zero's 0.9 setting); the
default is 1.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..evaluator import Evaluation, Job
from ..searchspaces.base import SearchSpace
from .base import Strategy


@dataclass(frozen=True)
class Member:
    genome: Any
    fitness: float


class RegularizedEvolution(Strategy):
    """Tournament selection, mutation, and removal of the oldest member."""

    name = "evolution"

    def __init__(self, space: SearchSpace, seed: int = 0, init: Sequence[str] = (),
                 population_size: int = 16, tournament_size: int = 4,
                 mutation_probability: float = 1.0) -> None:
        super().__init__(space, seed, init)
        if population_size < 2 or not 1 <= tournament_size <= population_size:
            raise ValueError(f"need population_size >= 2 and 1 <= tournament_size <= population_size, "
                             f"got {population_size} and {tournament_size}")
        self.population_size = population_size
        self.tournament_size = tournament_size
        self.mutation_probability = mutation_probability
        self.population: deque[Member] = deque()

    def _ask(self) -> Job | None:
        if self.asked < self.population_size:
            genome = self.space.sample(self.rng)
        elif not self.population:
            return None  # every initial member is still in flight
        else:
            genome = self.parent().genome
            if self.rng.random() < self.mutation_probability:
                genome = self.space.mutate(genome, self.rng)
        return Job(candidate=self.space.candidate(genome))

    def parent(self) -> Member:
        size = min(self.tournament_size, len(self.population))
        picks = self.rng.choice(len(self.population), size=size, replace=False)
        return max((self.population[int(i)] for i in picks), key=lambda m: m.fitness)

    def _tell(self, evaluation: Evaluation) -> None:
        genome = self.space.parse(evaluation.job.candidate.text)
        self.population.append(Member(genome, evaluation.score()))
        if len(self.population) > self.population_size:
            self.population.popleft()
