"""Optuna's samplers through its ask/tell interface (Akiba, Sano, Yanase, Ohta & Koyama, KDD 2019).

``tpe`` is the Tree-structured Parzen Estimator (Bergstra, Bardenet, Bengio & Kegl,
NeurIPS 2011) as Optuna implements it; any other Optuna sampler is reached by name:
``optuna:CmaEsSampler``, ``optuna:RandomSampler``, ``optuna:GPSampler``,
``optuna:QMCSampler``, ``optuna:NSGAIISampler``. Options are the sampler's keywords
(``--option n_startup_trials=20``); samplers that take a ``seed`` get the run's seed.

The study is in memory: the ledger stays ours (Optuna's storages are slower and
lock with many writers, see DESIGN.md); on resume the replayed asks and tells
rebuild the study exactly. A space is mapped to Optuna distributions as follows:
a discrete space's ``decisions()`` become categorical parameters ``d00, d01, ...``
over option indices; a continuous space's vector becomes float parameters within
its ``bounds`` (TaylorGLO's box [-4, 4] included, though CMA-ES there may leave
it); a product of such spaces concatenates its parts' parameters. Optuna
maximises fitness; a failed candidate is told ``failed_fitness`` (0: an accuracy
of zero, so samplers learn to avoid failing regions; ``None`` tells Optuna the
trial failed instead). Evaluations Optuna did not ask for (``init`` points) are
added to the study as finished trials, so the sampler learns from them too.
Repeats: a trial whose candidate (key) was already told is finished at once with
that fitness and Optuna is asked again, up to ``max_resamples`` times (20), after
which the repeat is proposed (the ledger answers it for free); samplers that
concentrate on a few rules, as TPE does on the optimizer space, thus spend the
budget on new ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from ..errors import UserError
from ..evaluator import Evaluation, Job
from ..searchspaces.base import SearchSpace, is_continuous
from .base import Strategy

optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per trial on the progress bar


class Encoding:
    """A space as named Optuna distributions, and back."""

    def __init__(self, space: SearchSpace, prefix: str = "") -> None:
        self.space = space
        self.parts: list[Encoding] = []
        self.distributions: dict[str, BaseDistribution] = {}
        self.kind = ""
        if hasattr(space, "decisions") and hasattr(space, "from_decisions"):
            self.kind = "discrete"
            sizes = space.decisions()
            self.names = [f"{prefix}d{i:02d}" for i in range(len(sizes))]
            for name, size in zip(self.names, sizes):
                self.distributions[name] = CategoricalDistribution(list(range(int(size))))
        elif is_continuous(space):
            self.kind = "continuous"
            lower, upper = space.bounds  # type: ignore[attr-defined]
            self.names = [f"{prefix}{n}" for n in space.names]  # type: ignore[attr-defined]
            for name, lo, hi in zip(self.names, lower, upper):
                self.distributions[name] = FloatDistribution(float(lo), float(hi))
        elif hasattr(space, "parts"):
            self.kind = "product"
            self.parts = [Encoding(part, f"{prefix}{part.name}.") for part in space.parts]
            for part in self.parts:
                self.distributions.update(part.distributions)
        else:
            raise UserError(f"space {space.name!r} offers neither decisions() nor a continuous "
                            "vector, so Optuna's samplers cannot search it")

    def decode(self, params: dict[str, Any]) -> Any:
        if self.kind == "discrete":
            return self.space.from_decisions([int(params[n]) for n in self.names])  # type: ignore[attr-defined]
        if self.kind == "continuous":
            return self.space.from_vector(np.array([params[n] for n in self.names], dtype=float))  # type: ignore[attr-defined]
        return tuple(part.decode(params) for part in self.parts)

    def encode(self, genome: Any) -> dict[str, Any] | None:
        """Parameters of ``genome``; ``None`` when it lies outside the distributions."""
        if self.kind == "discrete":
            return dict(zip(self.names, (int(c) for c in self.space.to_decisions(genome))))  # type: ignore[attr-defined]
        if self.kind == "continuous":
            vector = self.space.to_vector(genome)  # type: ignore[attr-defined]
            params = {}
            for name, value in zip(self.names, vector):
                distribution = self.distributions[name]
                assert isinstance(distribution, FloatDistribution)
                if not distribution.low <= float(value) <= distribution.high:
                    return None
                params[name] = float(value)
            return params
        merged: dict[str, Any] = {}
        for part, piece in zip(self.parts, genome):
            encoded = part.encode(piece)
            if encoded is None:
                return None
            merged.update(encoded)
        return merged


def make_sampler(name: str, seed: int, **options: Any) -> optuna.samplers.BaseSampler:
    """``optuna.samplers.<name>(seed=seed, **options)``, with a clear error for a bad name."""
    accepted = sorted(n for n, c in vars(optuna.samplers).items()
                      if isinstance(c, type) and issubclass(c, optuna.samplers.BaseSampler)
                      and not inspect.isabstract(c) and n not in ("PartialFixedSampler", "GridSampler"))
    if name not in accepted:
        raise UserError(f"unknown Optuna sampler {name!r}; accepted: {', '.join(accepted)}")
    cls = getattr(optuna.samplers, name)
    if "seed" in inspect.signature(cls).parameters:
        options = {"seed": seed, **options}
    try:
        return cls(**options)
    except TypeError as err:
        raise UserError(f"Optuna sampler {name}: {err}") from None


class OptunaStrategy(Strategy):
    """Any Optuna sampler (``optuna:NAME``) over a discrete or continuous space."""

    name = "optuna"

    def __init__(self, space: SearchSpace, seed: int = 0, init: Sequence[str] = (),
                 inner: str = "TPESampler", failed_fitness: float | str | None = 0.0,
                 max_resamples: int = 20, **sampler_options: Any) -> None:
        super().__init__(space, seed, init)
        if isinstance(failed_fitness, str):  # --option failed_fitness=none
            if failed_fitness.lower() != "none":
                raise UserError(f"failed_fitness takes a number or none, got {failed_fitness!r}")
            failed_fitness = None
        self.encoding = Encoding(space)
        self.sampler_name = inner
        self.failed_fitness = failed_fitness
        self.study = optuna.create_study(direction="maximize",
                                         sampler=make_sampler(inner, seed, **sampler_options))
        self.max_resamples = max_resamples
        self._pending: dict[int, optuna.trial.Trial] = {}
        self._known: dict[str, float | None] = {}   # candidate key -> what Optuna was told
        self.redrawn = 0

    def _ask(self) -> Job:
        """A trial whose candidate is not known yet, if one turns up within the redraws.

        A trial of a candidate already told is finished at once with its known fitness
        (what re-evaluating the same job would give) and Optuna is asked again.
        """
        for attempt in range(self.max_resamples + 1):
            trial = self.study.ask(self.encoding.distributions)
            genome = self.encoding.decode(trial.params)
            key = self.space.key(genome)
            if key not in self._known or attempt == self.max_resamples:
                break  # (the last one is proposed even if known, and told when answered)
            self.redrawn += 1
            self._finish(trial, self._known[key])
        self._pending[self.asked] = trial
        return Job(candidate=self.space.candidate(genome))

    def _finish(self, trial: optuna.trial.Trial, fitness: float | None) -> None:
        if fitness is None:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(trial, fitness)

    def _tell(self, evaluation: Evaluation) -> None:
        fitness: float | None = evaluation.score(failed=float("nan"))
        if fitness != fitness:  # a failed candidate
            fitness = self.failed_fitness
        self._known.setdefault(evaluation.job.candidate.key, fitness)
        trial = self._pending.pop(evaluation.job.proposal, None)
        if trial is not None:
            self._finish(trial, fitness)
            return
        if fitness is None:
            return
        params = self.encoding.encode(self.space.parse(evaluation.job.candidate.text))
        if params is not None:  # not asked by Optuna (an init point): teach it all the same
            self.study.add_trial(optuna.trial.create_trial(
                params=params, distributions=self.encoding.distributions, value=fitness))


class TPE(OptunaStrategy):
    """Optuna's TPE sampler (Bergstra et al. 2011), seeded."""

    name = "tpe"

    def __init__(self, space: SearchSpace, seed: int = 0, init: Sequence[str] = (),
                 failed_fitness: float | str | None = 0.0, max_resamples: int = 20,
                 **sampler_options: Any) -> None:
        super().__init__(space, seed, init, inner="TPESampler", failed_fitness=failed_fitness,
                         max_resamples=max_resamples, **sampler_options)
