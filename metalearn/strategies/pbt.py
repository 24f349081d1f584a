"""Population-based training (Jaderberg et al. 2017) on the shared evaluator.

Paper: "Population Based Training of Neural Networks", Max Jaderberg, Valentin
Dalibard, Simon Osindero, Wojciech M. Czarnecki, Jeff Donahue, Ali Razavi, Oriol
Vinyals, Tim Green, Iain Dunning, Karen Simonyan, Chrisantha Fernando and Koray
Kavukcuoglu, arXiv:1711.09846, 2017.

A population of ``population_size`` members trains for ``intervals`` intervals
of ``interval`` steps (by default the search's job length, ``--steps`` or the
task's, divided by ``intervals``: that length is the whole training). Each interval of a member is one :class:`~metalearn.evaluator.Job`
(``steps=interval``, ``total_steps=interval * intervals`` so decay schedules see
the whole length, ``member=i``, ``rung`` = the interval's index, ``checkpoint=True``)
that continues from the checkpoint of an earlier job (``resume_from`` =
``parent`` = that job's key): its own last interval, or the exploited winner's.
The trainer keeps the *new* candidate's hyperparameters over the checkpoint's and
carries the optimizer state with the weights, so exploit = "continue from the
winner's checkpoint" and explore = "with a perturbed candidate".

Faithful: truncation selection (a member in the bottom ``quantile`` of the latest
scores copies the weights and hyperparameters of a member drawn uniformly from
the top ``quantile``; Ray Tune's rule, ``ceil(n * quantile)`` capped at ``n // 2``);
explore resamples each hyperparameter from the space's prior with probability
``resample_probability`` and otherwise multiplies it by 0.8 or 1.2. Asynchronous
mode (``synchronous=False``, Ray Tune's default) decides for each member as soon
as its interval is told, against the others' latest scores; synchronous mode (the
default) decides for the whole population once every member has finished the
interval, so members are compared at equal training steps.

Decisions (documented in docs/pbt.md):

- Perturbation is in the space's natural units: a coordinate named ``log10_*``
  (the learning rate and weight decay of ``hparams``) is the logarithm of the
  hyperparameter, so x0.8 / x1.2 multiply the learning rate itself
  (``log10_lr + log10(0.8)``); other coordinates are multiplied directly. Results
  are clipped to the space's box where the space is bounded (TaylorGLO is not).
- ``hyperparameters="lr,momentum"`` limits sampling and explore to those
  coordinates; the others keep the first ``init`` point's values (or the space's
  start point). A space that is not continuous is explored by ``space.mutate``
  (or a fresh sample with ``resample_probability``).
- A member whose interval failed (diverged, error, ...) holds no checkpoint: it
  exploits a top member whatever its rank, or, when there is none, retires. So a
  member is only ever continued from the checkpoint of a job that finished ok.
- Every member starts from the run's seed (same initial weights and data order),
  so members differ only by their hyperparameters.
- The budget is a number of evaluations: ``population_size * intervals`` for a
  whole run (fewer when members retire); ``done()`` once every member has trained
  its ``intervals``. A smaller budget stops early and resuming with the full
  budget continues from the last completed interval.
- :meth:`needed_checkpoints` names the checkpoints that a member can still
  continue from; the search deletes the others, so disk holds at most one
  checkpoint per member (synchronous), or one per member plus one per job in
  flight (asynchronous, where a running member may still be copied).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UserError
from ..evaluator import Evaluation, Job
from ..searchspaces.base import SearchSpace, is_continuous
from .base import Strategy

#: score of a member whose last interval failed
FAILED = float("-inf")


@dataclass
class Member:
    """One slot of the population and the weights it holds.

    ``key`` is the job key of its last finished interval, whose checkpoint holds its
    weights (``None`` when that interval failed or none has run yet); ``genome`` and
    ``score`` are that interval's; ``position`` counts the intervals of training in
    those weights.
    """

    index: int
    genome: Any
    key: str | None = None
    score: float = FAILED
    position: int = 0
    reported: bool = False
    retired: bool = False


@dataclass(frozen=True)
class Plan:
    """A member's next interval: train ``genome`` from the checkpoint ``resume_from``."""

    member: int
    genome: Any
    resume_from: str | None = None
    position: int = 0


def natural_name(name: str) -> str:
    """``"hparams.log10_lr"`` -> ``"hparams.lr"``: the hyperparameter a coordinate stands for."""
    head, dot, tail = name.rpartition(".")
    return head + dot + tail.removeprefix("log10_")


def is_log_coordinate(name: str) -> bool:
    """Coordinates named ``log10_*`` hold the base-10 logarithm of their hyperparameter."""
    return name.rpartition(".")[2].startswith("log10_")


def select_coordinates(space: SearchSpace, hyperparameters: str | Sequence[str] | None) -> list[int]:
    """Indices of the coordinates named in ``hyperparameters`` (all of them for ``None``).

    A name may be given in full (``hparams.log10_lr``), without its space
    (``log10_lr``) or in natural units (``lr``).
    """
    names: tuple[str, ...] = tuple(space.names)  # type: ignore[attr-defined]
    if hyperparameters is None:
        return list(range(len(names)))
    wanted = hyperparameters.split(",") if isinstance(hyperparameters, str) else list(hyperparameters)
    chosen: list[int] = []
    for token in (w.strip() for w in wanted if w.strip()):
        matches = [j for j, n in enumerate(names)
                   if token in (n, n.rpartition(".")[2], natural_name(n), natural_name(n).rpartition(".")[2])]
        if len(matches) != 1:
            why = "matches several" if matches else "is not one"
            raise UserError(f"hyperparameter {token!r} {why} of space {space.name!r}'s coordinates: "
                            f"{', '.join(names)}")
        if matches[0] not in chosen:
            chosen.append(matches[0])
    if not chosen:
        raise UserError(f"hyperparameters names none of {', '.join(names)}")
    return sorted(chosen)


class PopulationStrategy(Strategy):
    """What PBT and EPBT share: members whose intervals are jobs continuing from checkpoints.

    Synchronous by default: the first generation starts every member from scratch;
    once every interval of a generation has been told, :meth:`_next_generation`
    plans the next one. Subclasses decide who continues from which checkpoint with
    which genome.
    """

    def __init__(self, space: SearchSpace, seed: int = 0, init: Sequence[str] = (),
                 population_size: int = 8, interval: int | None = None, intervals: int = 10,
                 hyperparameters: str | Sequence[str] | None = None) -> None:
        super().__init__(space, seed, init)
        for option, value, least in (("population_size", population_size, 2),
                                     ("interval", interval, 1), ("intervals", intervals, 1)):
            if option == "interval" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise UserError(f"strategy {self.name!r}: {option} must be a whole number >= {least}, "
                                f"got {value!r}")
        self.population_size, self.interval, self.intervals = population_size, interval, intervals
        self.continuous = is_continuous(space)
        if not self.continuous and hyperparameters is not None:
            raise UserError(f"hyperparameters needs a continuous space; {space.name!r} is not")
        self.mutable = select_coordinates(space, hyperparameters) if self.continuous else []
        if self.continuous:
            names = tuple(space.names)  # type: ignore[attr-defined]
            self.log = np.array([is_log_coordinate(n) for n in names])
            self.lower, self.upper = space.bounds  # type: ignore[attr-defined]
        starts = [space.parse(c.text) for c in self.init_points]
        self.init_points = []  # init points start members; they are not extra jobs
        self.base_vector = (space.to_vector(starts[0]) if starts  # type: ignore[attr-defined]
                            else space.init_vector()) if self.continuous else None  # type: ignore[attr-defined]
        self.members = [Member(i, g) for i, g in enumerate(self._initial_genomes(starts))]
        self.queue: deque[Plan] = deque(Plan(m.index, m.genome) for m in self.members)
        self.running: dict[int, Plan] = {}
        self.generation = 0  # generations completed (synchronous mode)
        #: whether a member may be copied while its next interval runs (asynchronous mode)
        self.donors_while_busy = False

    def set_default_steps(self, steps: int) -> None:
        """The search's job length is the whole training: ``interval = steps // intervals``."""
        if self.interval is None:
            self.interval = max(1, steps // self.intervals)

    @property
    def total_steps(self) -> int:
        if self.interval is None:
            raise UserError(f"strategy {self.name!r} needs interval=STEPS outside a search")
        return self.interval * self.intervals

    # -- the ask/tell protocol
    def _ask(self) -> Job | None:
        plan = self._next_plan()
        if plan is None:
            return None
        total_steps = self.total_steps
        self.running[plan.member] = plan
        return Job(candidate=self.space.candidate(plan.genome), steps=self.interval,
                   total_steps=total_steps, resume_from=plan.resume_from, checkpoint=True,
                   parent=plan.resume_from, rung=plan.position, member=plan.member)

    def _next_plan(self) -> Plan | None:
        return self.queue.popleft() if self.queue else None

    def _tell(self, evaluation: Evaluation) -> None:
        index = evaluation.job.member
        plan = self.running.pop(index, None) if index is not None else None
        if plan is None:
            return  # not an interval of this population
        member = self.members[plan.member]
        member.genome, member.position, member.reported = plan.genome, plan.position + 1, True
        if evaluation.ok and evaluation.fitness is not None:
            member.key, member.score = evaluation.job.key, evaluation.fitness
        else:
            member.key, member.score = None, FAILED
        self._finished(member)

    def _finished(self, member: Member) -> None:
        """A member's interval was told (synchronous: plan the next generation after the last)."""
        if not self.running and not self.queue:
            self.generation += 1
            self.queue.extend(self._next_generation())

    def done(self) -> bool:
        return not self.running and not self.queue

    def needed_checkpoints(self) -> set[str]:
        """Checkpoints that asked or planned intervals continue, and idle members' latest.

        A member with an interval planned or running needs only what that interval
        continues; its own previous checkpoint matters only while others may still
        copy it (asynchronous mode). So at most one file per member is kept
        (asynchronous: one per member and one per job in flight).
        """
        planned = [*self.running.values(), *self.queue]
        needed = {p.resume_from for p in planned if p.resume_from is not None}
        busy = set() if self.donors_while_busy else {p.member for p in planned}
        needed.update(m.key for m in self.members if m.key is not None and m.index not in busy)
        return needed

    # -- the population
    def _next_generation(self) -> list[Plan]:
        raise NotImplementedError

    def active(self) -> list[Member]:
        """Members still to train: not retired, and short of the end or without weights."""
        return [m for m in self.members
                if not m.retired and (m.key is None or m.position < self.intervals)]

    def donors(self) -> list[Member]:
        """Members whose weights another may continue from (finished ok, not at the end)."""
        return [m for m in self.members
                if m.key is not None and not m.retired and m.position < self.intervals]

    def _initial_genomes(self, starts: list[Any]) -> list[Any]:
        """The ``init`` points, then samples from the prior."""
        genomes = list(starts[:self.population_size])
        while len(genomes) < self.population_size:
            genomes.append(self._sample())
        return genomes

    # -- coordinates in natural units
    def _sample(self) -> Any:
        genome = self.space.sample(self.rng)
        if not self.continuous or len(self.mutable) == len(self.log):
            return genome
        vector = np.array(self.base_vector, dtype=float)
        vector[self.mutable] = self.space.to_vector(genome)[self.mutable]  # type: ignore[attr-defined]
        return self.space.from_vector(vector)  # type: ignore[attr-defined]

    def _vector(self, genome: Any) -> np.ndarray:
        """A writable copy of ``genome``'s coordinates."""
        vector = self.space.to_vector(genome)  # type: ignore[attr-defined]
        return np.array(vector, dtype=np.float64)

    def _prior(self) -> np.ndarray:
        """One draw from the prior, as a vector (resampling takes single coordinates of it)."""
        return self.space.to_vector(self.space.sample(self.rng))  # type: ignore[attr-defined]

    def _scale(self, value: float, j: int, factor: float) -> float:
        """``value`` of coordinate ``j`` with its hyperparameter multiplied by ``factor``."""
        return value + math.log10(factor) if self.log[j] else value * factor

    def _clip(self, vector: np.ndarray) -> Any:
        if getattr(self.space, "bounded", True):
            vector = self.space.clip(vector)  # type: ignore[attr-defined]
        return self.space.from_vector(vector)  # type: ignore[attr-defined]

    def _normalised(self, genome: Any) -> np.ndarray:
        """The mutable coordinates scaled by the box, for distances between members."""
        vector = self.space.to_vector(genome)  # type: ignore[attr-defined]
        span = np.where(self.upper > self.lower, self.upper - self.lower, 1.0)
        return ((vector - self.lower) / span)[self.mutable]


class PopulationBasedTraining(PopulationStrategy):
    """Truncation exploit and perturb/resample explore, synchronous or asynchronous."""

    name = "pbt"

    def __init__(self, space: SearchSpace, seed: int = 0, init: Sequence[str] = (),
                 population_size: int = 8, interval: int | None = None, intervals: int = 10,
                 quantile: float = 0.25, resample_probability: float = 0.25,
                 perturbation_factors: str | Sequence[float] = (0.8, 1.2),
                 synchronous: bool = True,
                 hyperparameters: str | Sequence[str] | None = None) -> None:
        if not 0.0 <= quantile <= 0.5:
            raise UserError(f"strategy 'pbt': quantile must be in [0, 0.5], got {quantile!r}")
        if not 0.0 <= resample_probability <= 1.0:
            raise UserError(f"strategy 'pbt': resample_probability must be in [0, 1], "
                            f"got {resample_probability!r}")
        factors = (perturbation_factors.split(",") if isinstance(perturbation_factors, str)
                   else perturbation_factors)
        try:
            self.factors = tuple(float(f) for f in factors)
        except ValueError:
            raise UserError(f"strategy 'pbt': perturbation_factors must be numbers, "
                            f"got {perturbation_factors!r}") from None
        if not self.factors or any(not f > 0 for f in self.factors):
            raise UserError(f"strategy 'pbt': perturbation_factors must be positive numbers, "
                            f"got {perturbation_factors!r}")
        self.quantile, self.resample_probability = quantile, resample_probability
        self.synchronous = bool(synchronous)
        super().__init__(space, seed, init, population_size, interval, intervals, hyperparameters)
        self.ready: deque[int] = deque()
        if not self.synchronous:  # members ask for work one by one, from scratch first
            self.ready.extend(p.member for p in self.queue)
            self.queue.clear()
            self.donors_while_busy = True

    # -- asynchronous mode: decide for one member when it asks for work
    def _next_plan(self) -> Plan | None:
        if self.synchronous:
            return super()._next_plan()
        while self.ready:
            member = self.members[self.ready.popleft()]
            if not member.reported:
                return Plan(member.index, member.genome)
            plan = self._decide(member, *self._quantiles())
            if plan is not None:
                return plan
        return None

    def _finished(self, member: Member) -> None:
        if self.synchronous:
            return super()._finished(member)
        if member.key is None or member.position < self.intervals:
            self.ready.append(member.index)

    def done(self) -> bool:
        return super().done() and not self.ready

    # -- synchronous mode: decide for every member at once
    def _next_generation(self) -> list[Plan]:
        bottom, top = self._quantiles()
        plans = [self._decide(m, bottom, top) for m in self.active()]
        return [p for p in plans if p is not None]

    def _quantiles(self) -> tuple[set[int], list[Member]]:
        """The bottom members (indices) and the top members, by latest score (Ray Tune's cut)."""
        ranked = sorted((m for m in self.members if m.reported and not m.retired),
                        key=lambda m: (-m.score, m.index))
        cut = min(math.ceil(len(ranked) * self.quantile), len(ranked) // 2)
        if cut == 0:
            return set(), []
        return {m.index for m in ranked[-cut:]}, ranked[:cut]

    def _decide(self, member: Member, bottom: set[int], top: list[Member]) -> Plan | None:
        """Exploit and explore for a ready member; ``None`` when it retires."""
        if member.key is None or member.index in bottom:
            eligible = {d.index for d in self.donors()}
            donors = [d for d in top if d.index in eligible and d.index != member.index]
            if donors:
                donor = donors[int(self.rng.integers(len(donors)))]
                return Plan(member.index, self.explore(donor.genome), donor.key, donor.position)
            if member.key is None:  # nothing to continue from and nobody to copy
                member.retired = True
                return None
        return Plan(member.index, member.genome, member.key, member.position)

    def explore(self, genome: Any) -> Any:
        """Perturb each hyperparameter by a factor, or resample it from the prior."""
        if not self.continuous:
            if self.rng.random() < self.resample_probability:
                return self.space.sample(self.rng)
            return self.space.mutate(genome, self.rng)
        vector = self._vector(genome)
        prior = self._prior()
        for j in self.mutable:
            if self.rng.random() < self.resample_probability:
                vector[j] = prior[j]
            else:
                factor = self.factors[int(self.rng.integers(len(self.factors)))]
                vector[j] = self._scale(vector[j], j, factor)
        return self._clip(vector)
