"""Continuous black-box optimisers from nevergrad (Rapin & Teytaud 2018) through ask/tell.

``cmaes`` is CMA-ES (Hansen & Ostermeier 2001) with TaylorGLO's settings as
defaults (Gonzalez & Miikkulainen 2021): mean at the space's start point (zeros
for TaylorGLO), sigma from the space (1.2 for TaylorGLO), population 20. Any other
nevergrad optimiser is reached as ``ng:NAME`` (``ng:NGOpt``, ``ng:DE``, ...).
Nevergrad minimises, so it is told ``1 - fitness``; a failed candidate counts as
accuracy 0, as in TaylorGLO.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nevergrad as ng
import numpy as np

from ..errors import UserError
from ..evaluator import Evaluation, Job
from ..searchspaces.base import SearchSpace, is_continuous
from .base import Strategy


class NevergradStrategy(Strategy):
    """Any nevergrad optimiser over a continuous space's vector."""

    name = "ng"

    def __init__(self, space: SearchSpace, seed: int = 0, init: Sequence[str] = (),
                 inner: str = "NGOpt", budget: int | None = None, **options: Any) -> None:
        super().__init__(space, seed, init)
        if not is_continuous(space):
            raise UserError(f"strategy {self.name!r} needs a continuous space; {space.name!r} is not "
                            "(use evolution, random or a discrete strategy)")
        self.parametrization = ng.p.Array(init=np.array(space.init_vector(), dtype=np.float64))  # type: ignore[attr-defined]
        self.parametrization.set_mutation(sigma=space.init_sigma())  # type: ignore[attr-defined]
        self.parametrization.random_state = np.random.RandomState(seed % 2**32)
        self.optimizer = self._make(inner, budget, **options)
        self._pending: dict[int, Any] = {}

    def _make(self, inner: str, budget: int | None, **options: Any) -> Any:
        if inner not in ng.optimizers.registry:
            raise UserError(f"unknown nevergrad optimizer {inner!r}; e.g. NGOpt, CMA, DE, TwoPointsDE, PSO")
        return ng.optimizers.registry[inner](parametrization=self.parametrization, budget=budget,
                                             **options)

    def _ask(self) -> Job:
        proposal = self.optimizer.ask()
        self._pending[self.asked] = proposal
        vector = np.asarray(proposal.value, dtype=float)
        if getattr(self.space, "bounded", True):
            vector = self.space.clip(vector)  # type: ignore[attr-defined]
        genome = self.space.from_vector(vector)  # type: ignore[attr-defined]
        return Job(candidate=self.space.candidate(genome))

    def _tell(self, evaluation: Evaluation) -> None:
        proposal = self._pending.pop(evaluation.job.proposal, None)
        if proposal is not None:  # init points and replays of foreign proposals are not nevergrad's
            self.optimizer.tell(proposal, 1.0 - evaluation.score(failed=0.0))


class CMAES(NevergradStrategy):
    """CMA-ES with TaylorGLO's defaults (population 20, space's sigma and start)."""

    name = "cmaes"

    def __init__(self, space: SearchSpace, seed: int = 0, init: Sequence[str] = (),
                 population_size: int = 20, budget: int | None = None) -> None:
        self.population_size = population_size
        super().__init__(space, seed, init, inner="CMA", budget=budget)

    def _make(self, inner: str, budget: int | None, **options: Any) -> Any:
        cma = ng.optimizers.ParametrizedCMA(popsize=self.population_size, scale=1.0)
        return cma(parametrization=self.parametrization, budget=budget)
