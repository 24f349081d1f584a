"""Successive halving over training lengths (Jamieson & Talwalkar, AISTATS 2016), around any strategy.

"Non-stochastic Best Arm Identification and Hyperparameter Optimization"; the
same loop is one bracket of Hyperband (Li, Jamieson, DeSalvo, Rostamizadeh &
Talwalkar, JMLR 2018). Backprop Evolution (Alber et al. 2018) notes that rules
which learn fast early are what such methods reward; Lion's search (Chen et al.
2023) used a similar funnel of growing proxy tasks.

``halving:INNER`` (``halving:evolution``, ``halving:tpe``, ``halving:optuna:CmaEsSampler``)
runs brackets one after another. In a bracket:

- rung 0: ``candidates`` new candidates from the inner strategy, each trained
  ``min_steps`` steps;
- rung r+1: the best ``1/eta`` of rung r (by fitness, distinct candidates, failed
  ones never) trained ``eta`` times longer, from scratch, with the same seed;
- the last rung trains ``max_steps`` steps: the ``max_steps`` option, else the
  search's job length (``--steps``, or the task's default).

Rung lengths are ``min_steps * eta**r`` below ``max_steps``, then ``max_steps``
(min 100, eta 3, max 2000: 100, 300, 900, 2000). ``candidates`` defaults to
``eta**(rungs-1)`` so the last rung gets one; rung r gets ``candidates // eta**r``
(at least 1). ``min_steps`` defaults to ``ceil(max_steps / eta**2)`` (three rungs).

Budget: ``--budget`` stays a number of evaluations, and each rung's job is one
evaluation whatever its length (duplicates answered from the ledger are free). A
bracket costs ``sum_r candidates // eta**r`` evaluations (27+9+3+1 = 40 for four
rungs at eta 3) and ``sum_r size_r * steps_r`` training steps; brackets repeat
until the budget is spent (``brackets=N`` stops after N), so a budget that is a
multiple of the bracket's evaluations ends on a finished bracket, and otherwise the
last bracket is cut short in whichever rung the budget runs out. Every job records
its ``rung`` and ``steps`` in the ledger; a promoted job's ``parent`` is the key of
the job it was promoted from.

The inner strategy proposes every rung-0 candidate and is told exactly the rung-0
results of its proposals (one fitness scale, and each proposal told once, as every
strategy expects); promotions are halving's own. ``init`` points go to the inner
strategy, so they enter rung 0 first. Options other than ``min_steps``, ``eta``,
``max_steps``, ``candidates`` and ``brackets`` are the inner strategy's.

Differs from the paper: rungs retrain from scratch rather than continue a
checkpoint (every job is a plain, cacheable job and decay schedules see the rung's
own length); brackets are synchronous (a rung is promoted once all its results are
in); with a parallel executor the next bracket's rung 0 fills idle workers meanwhile.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from ..evaluator import Evaluation, Job
from ..searchspaces.base import SearchSpace
from .base import Strategy


@dataclass
class Rung:
    steps: int
    size: int                                   # evaluations this rung takes
    handed: int = 0                             # jobs handed out so far
    results: list[tuple[float, int, Job]] = field(default_factory=list)  # (fitness, proposal, job)
    queue: deque[Job] = field(default_factory=deque)                     # promotions to hand out


@dataclass
class Bracket:
    number: int
    rungs: list[Rung]


@dataclass(frozen=True)
class Origin:
    bracket: Bracket
    rung: int
    inner_proposal: int | None


class SuccessiveHalving(Strategy):
    """Brackets of rungs of growing training length around an inner strategy."""

    name = "halving"

    def __init__(self, space: SearchSpace, seed: int = 0, init: Sequence[str] = (),
                 inner: str = "random", min_steps: int | None = None, eta: int = 3,
                 max_steps: int | None = None, candidates: int | None = None,
                 brackets: int | None = None, **inner_options: Any) -> None:
        from ..registry import get_strategy

        super().__init__(space, seed)
        if not isinstance(eta, int) or eta < 2:
            raise UserError(f"eta must be a whole number >= 2, got {eta!r}")
        for option, value in (("min_steps", min_steps), ("max_steps", max_steps),
                              ("candidates", candidates), ("brackets", brackets)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UserError(f"{option} must be a whole number >= 1, got {value!r}")
        if inner.partition(":")[0] == self.name:
            raise UserError("halving cannot wrap halving")
        self.inner = get_strategy(inner, space, seed=seed, init=list(init), **inner_options)
        self.eta, self.min_steps, self.max_steps = eta, min_steps, max_steps
        self.candidates, self.brackets = candidates, brackets
        self.default_steps: int | None = None
        self.plan: list[tuple[int, int]] = []   # (steps, size) of each rung
        self.open: list[Bracket] = []           # brackets started and not finished, oldest first
        self.started = 0
        self.finished = 0
        self.origins: dict[int, Origin] = {}

    def set_default_steps(self, steps: int) -> None:
        """The search's job length, which the last rung trains unless ``max_steps`` is given."""
        self.default_steps = steps
        self.rungs()

    def rungs(self) -> list[tuple[int, int]]:
        """``(steps, size)`` of each rung of a bracket."""
        if self.plan:
            return self.plan
        top = self.max_steps or self.default_steps
        if top is None:
            raise UserError("halving needs max_steps (or a search, which gives it the job length)")
        low = self.min_steps or math.ceil(top / self.eta**2)
        if low >= top:
            raise UserError(f"halving needs min_steps below the longest rung's {top} steps, "
                            f"got {low}")
        steps = []
        while low < top:
            steps.append(low)
            low *= self.eta
        steps.append(top)
        first = self.candidates or self.eta ** (len(steps) - 1)
        self.plan = [(s, max(1, first // self.eta**r)) for r, s in enumerate(steps)]
        return self.plan

    def done(self) -> bool:
        if self.brackets is not None and self.finished >= self.brackets:
            return True
        return not self.open and self.inner.done()

    def _ask(self) -> Job | None:
        for bracket in self.open:  # promotions first, oldest bracket first
            for r, rung in enumerate(bracket.rungs):
                if rung.queue:
                    rung.handed += 1
                    job = rung.queue.popleft()
                    self.origins[self.asked] = Origin(bracket, r, None)
                    return job
        newest = self.open[-1] if self.open else None
        if newest is None or newest.rungs[0].handed >= newest.rungs[0].size:
            if self.brackets is not None and self.started >= self.brackets:
                return None
            newest = Bracket(self.started, [Rung(s, n) for s, n in self.rungs()])
            self.open.append(newest)
            self.started += 1
        fresh = self.inner.ask_one()
        if fresh is None:
            return None
        rung = newest.rungs[0]
        rung.handed += 1
        self.origins[self.asked] = Origin(newest, 0, fresh.proposal)
        return Job(candidate=fresh.candidate, steps=rung.steps, seed=fresh.seed, rung=0)

    def _tell(self, evaluation: Evaluation) -> None:
        origin = self.origins.pop(evaluation.job.proposal, None)
        if origin is None:
            return
        if origin.inner_proposal is not None:
            inner_job = evaluation.job.replace(proposal=origin.inner_proposal)
            self.inner.tell([dataclasses.replace(evaluation, job=inner_job)])
        rung = origin.bracket.rungs[origin.rung]
        rung.results.append((evaluation.score(), evaluation.job.proposal, evaluation.job))
        if len(rung.results) == rung.size:
            self.promote(origin.bracket, origin.rung)

    def promote(self, bracket: Bracket, r: int) -> None:
        """Queue the best ``1/eta`` distinct candidates of rung ``r`` for rung ``r + 1``."""
        rung = bracket.rungs[r]
        chosen: dict[str, Job] = {}
        for fitness, _, job in sorted(rung.results, key=lambda x: (-x[0], x[1])):
            if math.isfinite(fitness) and job.candidate.key not in chosen:
                chosen[job.candidate.key] = job
        if r + 1 < len(bracket.rungs):
            nxt = bracket.rungs[r + 1]
            nxt.size = min(nxt.size, len(chosen))
            for job in list(chosen.values())[:nxt.size]:
                nxt.queue.append(Job(candidate=job.candidate, steps=nxt.steps, seed=job.seed,
                                     rung=r + 1, parent=job.key))
            if nxt.size:
                return
        self.open.remove(bracket)
        self.finished += 1
