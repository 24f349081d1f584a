"""The SearchSpace protocol: what every space offers to strategies and tasks.

A search space proposes values for one or more slots of a training
:class:`~metalearn.recipe.Recipe`. A *genome* is the space's own value (a tuple
of floats, an expression tree, ...); strategies treat it as opaque and use only
the methods below:

- ``sample(rng)`` draws a genome; ``mutate(genome, rng)`` returns a different,
  valid genome (an infeasible mutation is retried inside, never returned);
- ``named()`` gives the known points of the space by name;
- ``format(genome)`` is canonical text and ``parse(text)`` inverts it exactly;
- ``key(genome)`` hashes the *simplified* canonical form, so equivalent genomes
  share one key and one fitness;
- ``build(genome)`` returns the runtime object for the slot, and ``fill(recipe,
  genome)`` puts it into a recipe.

Continuous spaces (:class:`ContinuousSpace`) add ``bounds``, ``to_vector`` and
``from_vector`` for CMA-ES and friends. Discrete spaces add a fixed sequence of
categorical ``decisions()`` and ``from_decisions()`` (TPE, the RNN controller).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import numpy as np

from ..candidate import Candidate, content_key
from ..errors import ParseError, UserError
from ..recipe import Recipe

G = TypeVar("G")


class SearchSpace(ABC, Generic[G]):
    """Base class of all search spaces; subclasses implement the abstract methods."""

    name: str = ""
    slots: tuple[str, ...] = ()

    @abstractmethod
    def sample(self, rng: np.random.Generator) -> G: ...

    @abstractmethod
    def mutate(self, genome: G, rng: np.random.Generator) -> G: ...

    @abstractmethod
    def format(self, genome: G) -> str: ...

    @abstractmethod
    def parse(self, text: str) -> G: ...

    @abstractmethod
    def build(self, genome: G) -> Any: ...

    def named(self) -> dict[str, G]:
        return {}

    def export_source(self, genome: G) -> str:
        """A standalone Python file (depending only on torch) that reproduces ``build(genome)``."""
        raise NotImplementedError(f"space {self.name!r} cannot export its candidates yet")

    def simplify(self, genome: G) -> G:
        """An equivalent genome in simplest form (identity unless the space knows better)."""
        return genome

    def key(self, genome: G) -> str:
        return content_key(f"{self.name}:{self.format(self.simplify(genome))}")

    def fill(self, recipe: Recipe, genome: G) -> Recipe:
        """``recipe`` with this space's slot replaced by ``build(genome)``."""
        (slot,) = self.slots
        return recipe.replace(**{slot: self.build(genome)})

    def candidate(self, genome: G, name: str = "") -> Candidate:
        if not name:
            name = next((n for n, g in self.named().items() if self.key(g) == self.key(genome)), "")
        return Candidate(space=self.name, text=self.format(genome), key=self.key(genome), name=name)

    def resolve(self, name_or_text: str) -> G:
        """A named point (``"adam"``) or DSL text, whichever ``name_or_text`` is."""
        named = self.named()
        if name_or_text in named:
            return named[name_or_text]
        try:
            return self.parse(name_or_text)
        except UserError as err:
            known = ", ".join(sorted(named)) or "none"
            raise UserError(f"{name_or_text!r} is neither a named point of space "
                            f"{self.name!r} (known: {known}) nor valid text: {err}") from None


def is_continuous(space: SearchSpace) -> bool:
    """True when ``space`` offers ``bounds``, ``to_vector`` and ``from_vector``."""
    return isinstance(space, ContinuousSpace) or bool(getattr(space, "continuous", False))


class ContinuousSpace(SearchSpace[tuple[float, ...]]):
    """A box of named real parameters; the genome is a tuple of floats.

    Text is ``name=value`` pairs in a fixed order, values written with ``repr``
    so parsing gives back the same floats bit for bit.
    """

    names: tuple[str, ...] = ()
    lower: tuple[float, ...] = ()
    upper: tuple[float, ...] = ()
    #: relative step of Gaussian mutation, as a fraction of each parameter's range
    mutation_scale: float = 0.1
    #: whether optimisers that move freely (CMA-ES) are clipped to the box
    bounded: bool = True

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array(self.lower, dtype=float), np.array(self.upper, dtype=float)

    @property
    def dimension(self) -> int:
        return len(self.names)

    def init_vector(self) -> np.ndarray:
        """Where a local optimiser (CMA-ES) starts: the centre of the box by default."""
        lo, hi = self.bounds
        return (lo + hi) / 2

    def init_sigma(self) -> float:
        """CMA-ES's initial step size, in the units of ``to_vector``."""
        lo, hi = self.bounds
        return float(np.mean(hi - lo) / 4)

    def to_vector(self, genome: tuple[float, ...]) -> np.ndarray:
        return np.asarray(genome, dtype=float)

    def from_vector(self, vector: Sequence[float] | np.ndarray) -> tuple[float, ...]:
        vector = np.asarray(vector, dtype=float).reshape(-1)
        if vector.shape != (self.dimension,):
            raise ValueError(f"space {self.name!r} needs {self.dimension} numbers, got {vector.shape}")
        return tuple(float(v) for v in vector)

    def clip(self, vector: np.ndarray) -> np.ndarray:
        lo, hi = self.bounds
        return np.clip(vector, lo, hi)

    def sample(self, rng: np.random.Generator) -> tuple[float, ...]:
        lo, hi = self.bounds
        return self.from_vector(rng.uniform(lo, hi))

    def mutate(self, genome: tuple[float, ...], rng: np.random.Generator) -> tuple[float, ...]:
        """Gaussian perturbation of every coordinate, clipped to the box."""
        lo, hi = self.bounds
        vector = self.to_vector(genome)
        while True:
            child = self.clip(vector + rng.normal(0.0, self.mutation_scale, vector.shape) * (hi - lo))
            if not np.array_equal(child, vector):
                return self.from_vector(child)

    def format(self, genome: tuple[float, ...]) -> str:
        if len(genome) != self.dimension:
            raise ValueError(f"space {self.name!r} needs {self.dimension} numbers, got {len(genome)}")
        return " ".join(f"{n}={float(v)!r}" for n, v in zip(self.names, genome))

    def parse(self, text: str) -> tuple[float, ...]:
        values: dict[str, float] = {}
        position = 0
        for item in text.split():
            position = text.index(item, position)
            name, sep, value = item.partition("=")
            if not sep or name not in self.names:
                raise ParseError(text, position, f"name=value with a name in {', '.join(self.names)}")
            if name in values:
                raise ParseError(text, position, f"each of {', '.join(self.names)} once")
            try:
                number = float(value)
            except ValueError:
                raise ParseError(text, position + len(name) + 1, "a number") from None
            if not math.isfinite(number):
                raise ParseError(text, position + len(name) + 1, "a finite number")
            values[name] = number
        missing = [n for n in self.names if n not in values]
        if missing:
            raise ParseError(text, len(text), f"values for {', '.join(missing)}")
        return tuple(values[n] for n in self.names)


class DiscreteSpace(SearchSpace[G]):
    """A space whose genomes are encoded by a fixed sequence of categorical choices.

    ``decisions()`` gives the number of options of each choice; every sequence of
    choices within those numbers must decode (``from_decisions``) to a valid
    genome, and ``to_decisions`` encodes a genome back.
    """

    @abstractmethod
    def decisions(self) -> list[int]: ...

    @abstractmethod
    def from_decisions(self, choices: Sequence[int]) -> G: ...

    @abstractmethod
    def to_decisions(self, genome: G) -> list[int]: ...
