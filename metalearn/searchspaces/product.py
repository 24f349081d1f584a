"""Product spaces: one candidate that fills the slots of several spaces at once.

Named on the command line by joining space names with ``+`` (``hparams+loss``).
The genome is a tuple of the parts' genomes and the text joins the parts' texts
with `` | ``. When every part is continuous the product is continuous too (its
vector is the concatenation), so CMA-ES, PBT and EPBT work on it unchanged. When
every part is discrete the product is a :class:`DiscreteProductSpace` whose
decisions are the parts' in turn, so TPE and the RNN controller work on it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ParseError
from ..recipe import Recipe
from .base import ContinuousSpace, DiscreteSpace, SearchSpace

SEPARATOR = " | "


class ProductSpace(SearchSpace[tuple[Any, ...]]):
    """The Cartesian product of spaces filling disjoint recipe slots."""

    def __new__(cls, parts: Sequence[SearchSpace] = ()) -> ProductSpace:
        # a product of discrete spaces is discrete: hand out the subclass that says so
        # (``parts`` defaults to () because copy and pickle call ``__new__`` without arguments)
        if cls is ProductSpace and len(parts) >= 2 and all(isinstance(p, DiscreteSpace)
                                                            for p in parts):
            cls = DiscreteProductSpace
        return super().__new__(cls)

    def __init__(self, parts: Sequence[SearchSpace]) -> None:
        if len(parts) < 2:
            raise ValueError("a product space needs at least two spaces")
        slots = [slot for part in parts for slot in part.slots]
        if len(set(slots)) != len(slots):
            raise ValueError(f"spaces {[p.name for p in parts]} fill the same slot twice: {slots}")
        self.parts = list(parts)
        self.name = "+".join(p.name for p in parts)
        self.slots = tuple(slots)

    def sample(self, rng: np.random.Generator) -> tuple[Any, ...]:
        return tuple(p.sample(rng) for p in self.parts)

    def mutate(self, genome: tuple[Any, ...], rng: np.random.Generator) -> tuple[Any, ...]:
        """Mutate one part, chosen at random."""
        i = int(rng.integers(len(self.parts)))
        return genome[:i] + (self.parts[i].mutate(genome[i], rng),) + genome[i + 1:]

    def named(self) -> dict[str, tuple[Any, ...]]:
        """Products of the parts' named points, ``"default+cross_entropy_taylor"``."""
        points: dict[str, tuple[Any, ...]] = {"": ()}
        for part in self.parts:
            points = {f"{k}+{n}" if k else n: g + (pg,)
                      for k, g in points.items() for n, pg in part.named().items()}
        return points

    def format(self, genome: tuple[Any, ...]) -> str:
        return SEPARATOR.join(p.format(g) for p, g in zip(self.parts, genome))

    def parse(self, text: str) -> tuple[Any, ...]:
        pieces = text.split("|")
        if len(pieces) != len(self.parts):
            raise ParseError(text, len(text), f"{len(self.parts)} parts separated by '|' "
                             f"({', '.join(p.name for p in self.parts)})")
        return tuple(p.parse(piece.strip()) for p, piece in zip(self.parts, pieces))

    def simplify(self, genome: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(p.simplify(g) for p, g in zip(self.parts, genome))

    def build(self, genome: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(p.build(g) for p, g in zip(self.parts, genome))

    def fill(self, recipe: Recipe, genome: tuple[Any, ...]) -> Recipe:
        for part, g in zip(self.parts, genome):
            recipe = part.fill(recipe, g)
        return recipe

    # continuous view, available when every part is continuous
    @property
    def continuous(self) -> bool:
        return all(isinstance(p, ContinuousSpace) for p in self.parts)

    def _continuous_parts(self) -> list[ContinuousSpace]:
        if not self.continuous:
            raise TypeError(f"space {self.name!r} is not continuous: "
                            f"{[p.name for p in self.parts if not isinstance(p, ContinuousSpace)]}")
        return [p for p in self.parts if isinstance(p, ContinuousSpace)]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"{p.name}.{n}" for p in self._continuous_parts() for n in p.names)

    @property
    def dimension(self) -> int:
        return sum(p.dimension for p in self._continuous_parts())

    @property
    def lower(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.bounds[0])

    @property
    def upper(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.bounds[1])

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        parts = self._continuous_parts()
        return (np.concatenate([p.bounds[0] for p in parts]),
                np.concatenate([p.bounds[1] for p in parts]))

    def init_vector(self) -> np.ndarray:
        return np.concatenate([p.init_vector() for p in self._continuous_parts()])

    def init_sigma(self) -> float:
        return float(np.mean([p.init_sigma() for p in self._continuous_parts()]))

    def to_vector(self, genome: tuple[Any, ...]) -> np.ndarray:
        return np.concatenate([p.to_vector(g) for p, g in zip(self._continuous_parts(), genome)])

    def from_vector(self, vector: Sequence[float] | np.ndarray) -> tuple[Any, ...]:
        vector = np.asarray(vector, dtype=float).reshape(-1)
        genome, start = [], 0
        for p in self._continuous_parts():
            genome.append(p.from_vector(vector[start:start + p.dimension]))
            start += p.dimension
        return tuple(genome)

    def clip(self, vector: np.ndarray) -> np.ndarray:
        """Clip the parts that are bounded; leave free parts (TaylorGLO) as they are."""
        pieces, start = [], 0
        for p in self._continuous_parts():
            piece = vector[start:start + p.dimension]
            pieces.append(p.clip(piece) if p.bounded else piece)
            start += p.dimension
        return np.concatenate(pieces)


class DiscreteProductSpace(ProductSpace, DiscreteSpace[tuple[Any, ...]]):
    """A product of discrete spaces: its decisions are the parts' decisions, concatenated."""

    def _discrete_parts(self) -> list[DiscreteSpace]:
        return [p for p in self.parts if isinstance(p, DiscreteSpace)]

    def decisions(self) -> list[int]:
        return [size for part in self._discrete_parts() for size in part.decisions()]

    def from_decisions(self, choices: Sequence[int]) -> tuple[Any, ...]:
        genome, start = [], 0
        for part in self._discrete_parts():
            count = len(part.decisions())
            genome.append(part.from_decisions(list(choices[start:start + count])))
            start += count
        if start != len(choices):
            raise ValueError(f"space {self.name!r} takes {start} decisions, got {len(choices)}")
        return tuple(genome)

    def to_decisions(self, genome: tuple[Any, ...]) -> list[int]:
        return [c for part, g in zip(self._discrete_parts(), genome) for c in part.to_decisions(g)]
