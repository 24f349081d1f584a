"""Continuous black-box optimisers from nevergrad (Rapin & Teytaud 2018) through ask/tell.

``cmaes`` is CMA-ES (Hansen & Ostermeier 2001) with TaylorGLO's settings as
defaults (Gonzalez & Miikkulainen 2021): mean at the space's start point (zeros
for TaylorGLO), sigma from the space (1.2 for TaylorGLO), population 20. Any other
nevergrad optimiser is reached as ``ng:NAME`` (``ng:NGOpt``, ``ng:DE``, ...).
NGOpt and its relatives choose their algorithm from a budget: it is the
``--option budget=N`` given (100 when none is), never the search's ``--budget``, so a
run resumed with a larger ``--budget`` replays the same choices. ``init`` points are
told to optimisers that accept points they did not ask for.
Nevergrad minimises, so it is told ``1 - fitness``; a failed candidate counts as
accuracy 0, as in TaylorGLO.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nevergrad as ng
import numpy as np
from nevergrad.common.errors import TellNotAskedNotSupportedError
from nevergrad.optimization import optimizerlib as _optimizerlib
from nevergrad.optimization.optimizerlib import NGOptBase

from ..errors import UserError
from ..evaluator import Evaluation, Job
from ..searchspaces.base import SearchSpace, is_continuous
from .base import Strategy

#: the budget NGOpt-like optimisers plan for when no ``--option budget=N`` is given
DEFAULT_NGOPT_BUDGET = 100


def _metamodel_failure_on_numpy_scalars(learn: Any) -> Any:
    """nevergrad 1.0.12's MetaModel calls ``float()`` on a 1-element array, an error since
    NumPy 2.4 (nevergrad issue #1612); NGOpt picks MetaModel for small budgets. Report it
    as the ``MetaModelFailure`` nevergrad already handles (it then asks its base optimiser)."""

    def learn_on_k_best(*args: Any, **kwargs: Any) -> Any:
        try:
            return learn(*args, **kwargs)
        except TypeError as err:
            if "0-dimensional" not in str(err):
                raise
            raise _optimizerlib.MetaModelFailure(str(err)) from None

    learn_on_k_best.patched = True  # type: ignore[attr-defined]
    return learn_on_k_best


if not getattr(_optimizerlib.learn_on_k_best, "patched", False):
    _optimizerlib.learn_on_k_best = _metamodel_failure_on_numpy_scalars(_optimizerlib.learn_on_k_best)


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
        cls = ng.optimizers.registry[inner]
        if budget is None and isinstance(cls, type) and issubclass(cls, NGOptBase):
            budget = DEFAULT_NGOPT_BUDGET  # NGOpt picks its algorithm from the budget; it needs one
        return cls(parametrization=self.parametrization, budget=budget, **options)

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
        elif evaluation.job.proposal < len(self.init_points):
            self._tell_init_point(evaluation)

    def _tell_init_point(self, evaluation: Evaluation) -> None:
        """Teach the optimiser an ``init`` point, where it accepts points it did not ask for."""
        genome = self.space.parse(evaluation.job.candidate.text)
        point = self.parametrization.spawn_child(new_value=self.space.to_vector(genome))  # type: ignore[attr-defined]
        try:
            self.optimizer.tell(point, 1.0 - evaluation.score(failed=0.0))
        except (TellNotAskedNotSupportedError, AssertionError, ValueError):
            pass


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
