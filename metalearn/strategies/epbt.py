"""Evolutionary population-based training (EPBT) of hyperparameters and TaylorGLO losses.

Papers: "Population-Based Training for Loss Function Optimization", Jason Liang,
Santiago Gonzalez and Risto Miikkulainen, arXiv:2002.04225, 2020; revised as
"Regularized Evolutionary Population-Based Training", GECCO 2021.

Like PBT (see :mod:`metalearn.strategies.pbt`, whose job machinery this reuses),
every member trains for ``interval`` steps per generation, continuing from a
checkpoint; unlike PBT, the next generation is made by evolution, and the genome
includes the 8 TaylorGLO loss parameters (``--space hparams+loss``), so each
member's loss changes during training: the result is a loss-function schedule.

Each generation (synchronous, as in the paper):

1. rank the members that finished their interval ok by validation accuracy;
2. elites (``elite_fraction`` of the population, half by default) continue from
   their own checkpoints with their genomes unchanged;
3. every other slot (and every member that failed) gets a child: two parents by
   ``tournament_size``-way tournaments, uniform crossover that takes half of the
   genes from the second parent (with ``crossover_probability``), and mutation of
   every gene: with ``reset_probability`` a fresh draw from the prior, otherwise
   multiplication by ``1 + mutation_sigma * N(0, 1)`` in natural units (for
   ``log10_*`` coordinates the hyperparameter is multiplied by ``exp(sigma * N)``).
   The child continues from the checkpoint of the fitter parent.
4. diversity, novelty pulsation (Shahrzad, Fink & Miikkulainen 2018, used by
   EPBT): for ``novelty_period`` generations elites are chosen by fitness, for the
   next ``novelty_period`` by novelty selection, and so on. Novelty selection
   takes the ``novelty_pool`` x elites fittest members and repeatedly drops the
   most crowded one (smallest distance to its nearest neighbour; the less fit of a
   tie) until the elite count remains; the fittest member always survives.

Faithful: elites + tournament selection, recombination and mutation instead of
truncation, the TaylorGLO vector evolved with the hyperparameters, novelty
pulsation's alternation. The mutation/crossover settings follow a public
third-party reimplementation (half elites, 2-way tournament, multiplicative
Gaussian mutation with a 5% reset, swapping half the genes).
Differs: novelty is measured on the genome (coordinates scaled by the space's
box) instead of on the network's behaviour, because an evaluation carries only
scalar metrics; the distance between loss/hyperparameter vectors is a cheap proxy
that still keeps the elites apart and prevents the population collapsing onto one
deceptive loss. The later paper's knowledge distillation is not implemented.
The initial population is the ``init`` points, then mutations of them (or prior
samples when no ``init`` is given); with ``--init default+cross_entropy_taylor``
every member starts near cross-entropy, as a practitioner would.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import UserError
from ..searchspaces.base import SearchSpace, is_continuous
from .pbt import Member, Plan, PopulationStrategy


class EvolutionaryPBT(PopulationStrategy):
    """Elites, tournament selection, crossover and Gaussian mutation, with novelty pulsation."""

    name = "epbt"

    def __init__(self, space: SearchSpace, seed: int = 0, init: Sequence[str] = (),
                 population_size: int = 8, interval: int | None = None, intervals: int = 10,
                 elite_fraction: float = 0.5, tournament_size: int = 2,
                 crossover_probability: float = 1.0, mutation_sigma: float = 0.1,
                 reset_probability: float = 0.05, novelty_period: int = 2,
                 novelty_pool: float = 2.0,
                 hyperparameters: str | Sequence[str] | None = None) -> None:
        if not is_continuous(space):
            raise UserError(f"strategy 'epbt' needs a continuous space such as hparams+loss; "
                            f"{space.name!r} is not")
        checks = (("elite_fraction", elite_fraction, 0.0 < elite_fraction < 1.0, "in (0, 1)"),
                  ("tournament_size", tournament_size,
                   isinstance(tournament_size, int) and tournament_size >= 1, "a whole number >= 1"),
                  ("crossover_probability", crossover_probability,
                   0.0 <= crossover_probability <= 1.0, "in [0, 1]"),
                  ("mutation_sigma", mutation_sigma, mutation_sigma >= 0.0, ">= 0"),
                  ("reset_probability", reset_probability, 0.0 <= reset_probability <= 1.0,
                   "in [0, 1]"),
                  ("novelty_period", novelty_period,
                   isinstance(novelty_period, int) and novelty_period >= 0,
                   "a whole number >= 0 (0: no novelty pulsation)"),
                  ("novelty_pool", novelty_pool, novelty_pool >= 1.0, ">= 1"))
        for option, value, ok, accepted in checks:
            if not ok:
                raise UserError(f"strategy 'epbt': {option} must be {accepted}, got {value!r}")
        self.elite_fraction, self.tournament_size = elite_fraction, tournament_size
        self.crossover_probability, self.mutation_sigma = crossover_probability, mutation_sigma
        self.reset_probability = reset_probability
        self.novelty_period, self.novelty_pool = novelty_period, novelty_pool
        super().__init__(space, seed, init, population_size, interval, intervals, hyperparameters)

    def _initial_genomes(self, starts: list[Any]) -> list[Any]:
        """The ``init`` points, then mutations of them in turn (prior samples without any)."""
        genomes = list(starts[:self.population_size])
        while len(genomes) < self.population_size:
            genomes.append(self.mutate(starts[len(genomes) % len(starts)]) if starts
                           else self._sample())
        return genomes

    def novelty_generation(self) -> bool:
        """Novelty pulsation: alternate ``novelty_period`` generations of each selection."""
        if self.novelty_period == 0:
            return False
        return ((self.generation - 1) // self.novelty_period) % 2 == 1

    def _next_generation(self) -> list[Plan]:
        active = self.active()
        ranked = sorted(self.donors(), key=lambda m: (-m.score, m.index))
        if not ranked:  # every member failed: nothing to continue from
            for member in active:
                member.retired = True
            return []
        count = min(len(ranked), max(1, round(self.elite_fraction * self.population_size)))
        elites = self.novelty_selection(ranked, count) if self.novelty_generation() else ranked[:count]
        chosen = {m.index for m in elites}
        plans = []
        for member in active:
            if member.index in chosen:
                plans.append(Plan(member.index, member.genome, member.key, member.position))
                continue
            first, second = self.tournament(ranked), self.tournament(ranked)
            genome = self.mutate(self.crossover(first.genome, second.genome))
            weights = first if (first.score, -first.index) >= (second.score, -second.index) else second
            plans.append(Plan(member.index, genome, weights.key, weights.position))
        return plans

    def tournament(self, ranked: list[Member]) -> Member:
        """The fittest of ``tournament_size`` members drawn without replacement."""
        size = min(self.tournament_size, len(ranked))
        picks = self.rng.choice(len(ranked), size=size, replace=False)
        return ranked[int(min(picks))]  # ranked is sorted best first

    def crossover(self, first: Any, second: Any) -> Any:
        """Half of the genes (the mutable ones) from ``second``, the rest from ``first``."""
        vector = self._vector(first)
        if self.rng.random() >= self.crossover_probability or len(self.mutable) < 2:
            return first
        other = self.space.to_vector(second)  # type: ignore[attr-defined]
        swap = self.rng.choice(self.mutable, size=len(self.mutable) // 2, replace=False)
        vector[swap] = other[swap]
        return self.space.from_vector(vector)  # type: ignore[attr-defined]

    def mutate(self, genome: Any) -> Any:
        """Multiplicative Gaussian noise on every gene, or (rarely) a fresh draw from the prior."""
        vector = self._vector(genome)
        prior = self._prior()
        for j in self.mutable:
            noise = self.mutation_sigma * self.rng.normal()
            if self.rng.random() < self.reset_probability:
                vector[j] = prior[j]
            elif self.log[j]:
                vector[j] += noise / math.log(10)  # hyperparameter * exp(noise)
            else:
                vector[j] *= 1.0 + noise
        return self._clip(vector)

    def novelty_selection(self, ranked: list[Member], count: int) -> list[Member]:
        """The ``count`` most spread-out of the ``novelty_pool * count`` fittest members."""
        pool = ranked[:min(len(ranked), math.ceil(self.novelty_pool * count))]
        points = np.array([self._normalised(m.genome) for m in pool])
        keep = list(range(len(pool)))
        while len(keep) > count:
            sub = points[keep]
            distance = np.linalg.norm(sub[:, None, :] - sub[None, :, :], axis=-1)
            np.fill_diagonal(distance, np.inf)
            nearest = distance.min(axis=1)
            # the most crowded leaves; of equally crowded ones, the less fit (later in the ranking)
            crowded = max(range(len(keep)), key=lambda i: (-nearest[i], i))
            keep.pop(crowded)
        return [pool[i] for i in keep]
