"""The Strategy protocol: propose jobs, learn from their evaluations.

A strategy proposes one job at a time (``ask``) and learns from finished
evaluations (``tell``), in whatever order the executor delivers them. It must be
a deterministic function of its seed and of the sequence of asks and tells: a
run resumes by building a fresh strategy and replaying the ledger's asks and
tells in their recorded order, so nothing but the ledger has to be saved.

Subclasses implement ``_ask`` (return ``None`` to wait for results still in
flight) and ``_tell``; the base class stamps proposal numbers, hands out the
``init`` points first (seeding with named points, ``--init adam,powersign``), and
keeps the counters.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..evaluator import Evaluation, Job
from ..searchspaces.base import SearchSpace


class Strategy(ABC):
    """Base class: the bookkeeping; subclasses hold only the idea."""

    name: str = ""

    def __init__(self, space: SearchSpace, seed: int = 0, init: Sequence[str] = (),
                 **options: Any) -> None:
        if options:
            raise ValueError(f"unknown option(s) {sorted(options)} for strategy {self.name!r}")
        self.space = space
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.init_points = [space.candidate(space.resolve(p), name=p if p in space.named() else "")
                            for p in init]
        self.asked = 0
        self.told = 0

    def ask(self, n: int = 1) -> list[Job]:
        """Up to ``n`` new jobs; fewer when the strategy waits for results."""
        jobs: list[Job] = []
        for _ in range(n):
            job = self.ask_one()
            if job is None:
                break
            jobs.append(job)
        return jobs

    def ask_one(self) -> Job | None:
        if self.asked < len(self.init_points):
            job: Job | None = Job(candidate=self.init_points[self.asked])
            self._note_init(job)  # type: ignore[arg-type]
        else:
            job = self._ask()
        if job is None:
            return None
        job = job.replace(proposal=self.asked)
        self.asked += 1
        return job

    def tell(self, evaluations: Iterable[Evaluation]) -> None:
        for evaluation in evaluations:
            self._tell(evaluation)
            self.told += 1

    def done(self) -> bool:
        """True when the strategy has nothing more to propose (e.g. halving's last rung)."""
        return False

    def needed_checkpoints(self) -> set[str] | None:
        """Job keys whose checkpoints a future job may still continue from (PBT's members).

        The search deletes the run's other checkpoints of told jobs after each tell, so
        disk use stays bounded; ``None`` (the default) keeps every checkpoint.
        """
        return None

    @abstractmethod
    def _ask(self) -> Job | None: ...

    def _tell(self, evaluation: Evaluation) -> None:
        """Learn from one evaluation (default: nothing to learn)."""

    def _note_init(self, job: Job) -> None:
        """Called when an init point is handed out instead of ``_ask``."""
