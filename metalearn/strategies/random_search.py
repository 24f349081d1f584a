"""Random search: independent samples from the space (the baseline every strategy must beat)."""

from __future__ import annotations

from ..evaluator import Job
from .base import Strategy


class RandomSearch(Strategy):
    """Each proposal is ``space.sample(rng)``."""

    name = "random"

    def _ask(self) -> Job:
        genome = self.space.sample(self.rng)
        return Job(candidate=self.space.candidate(genome))
