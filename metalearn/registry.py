"""Registries of search spaces, strategies and tasks, by name."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .errors import UserError, unknown
from .searchspaces.base import SearchSpace
from .strategies.base import Strategy
from .tasks import TASKS, Task

#: space name -> "module:attribute" of a zero-argument factory (imported on first use)
SPACES: dict[str, str | Callable[[], SearchSpace]] = {
    "loss": "metalearn.searchspaces.taylorglo:TaylorGLOSpace",
    "hparams": "metalearn.searchspaces.hparams:HParamsSpace",
    "optimizer": "metalearn.searchspaces.optimizer_dsl:OptimizerSpace",
    "backprop": "metalearn.searchspaces.backprop_dsl:BackpropSpace",
}

#: strategy name -> "module:Class"
STRATEGIES: dict[str, str | type[Strategy]] = {
    "random": "metalearn.strategies.random_search:RandomSearch",
    "evolution": "metalearn.strategies.evolution:RegularizedEvolution",
    "cmaes": "metalearn.strategies.nevergrad:CMAES",
    "pbt": "metalearn.strategies.pbt:PopulationBasedTraining",
    "epbt": "metalearn.strategies.epbt:EvolutionaryPBT",
    "ng": "metalearn.strategies.nevergrad:NevergradStrategy",
    "backprop-evolution": "metalearn.strategies.backprop_evolution:BackpropEvolution",
    "controller": "metalearn.strategies.controller:Controller",
    "tpe": "metalearn.strategies.optuna:TPE",
    "optuna": "metalearn.strategies.optuna:OptunaStrategy",
    "halving": "metalearn.strategies.halving:SuccessiveHalving",
}

_SPACE_CACHE: dict[str, SearchSpace] = {}


def _load(ref: str | Any) -> Any:
    if not isinstance(ref, str):
        return ref
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


def register_space(name: str, factory: str | Callable[[], SearchSpace]) -> None:
    """Make a space available by ``name`` (a factory, or ``"module:attribute"`` of one)."""
    SPACES[name] = factory
    _SPACE_CACHE.pop(name, None)


def register_strategy(name: str, cls: str | type[Strategy]) -> None:
    STRATEGIES[name] = cls


def _available_spaces() -> list[str]:
    names = []
    for name, ref in SPACES.items():
        try:
            _load(ref)
        except (ImportError, AttributeError):
            continue
        names.append(name)
    return names


def list_spaces() -> list[str]:
    """Names accepted by :func:`get_space`; join them with ``+`` for a product space."""
    return sorted(_available_spaces())


def list_strategies() -> list[str]:
    names = []
    for name, ref in STRATEGIES.items():
        try:
            _load(ref)
        except (ImportError, AttributeError):
            continue
        names.append(name)
    return sorted(names)


def list_tasks() -> list[str]:
    return sorted(TASKS)


def get_space(name: str) -> SearchSpace:
    """The space called ``name``; ``"hparams+loss"`` is the product of two spaces."""
    if name in _SPACE_CACHE:
        return _SPACE_CACHE[name]
    if "+" in name:
        from .searchspaces.product import ProductSpace

        space: SearchSpace = ProductSpace([get_space(part) for part in name.split("+")])
    else:
        try:  # import only the space asked for: importing every space costs seconds
            factory = _load(SPACES[name])
        except (KeyError, ImportError, AttributeError):
            raise unknown("space", name, list_spaces()) from None
        space = factory()
    _SPACE_CACHE[name] = space
    return space


def get_strategy(name: str, space: SearchSpace | str, seed: int = 0, **options: Any) -> Strategy:
    """A fresh strategy called ``name`` over ``space``; options are its constructor's keywords."""
    if isinstance(space, str):
        space = get_space(space)
    base, _, inner = name.partition(":")
    try:  # import only the strategy asked for (Optuna alone takes a second to import)
        cls = _load(STRATEGIES[base])
    except (KeyError, ImportError, AttributeError):
        raise unknown("strategy", name, list_strategies()) from None
    try:
        if inner:
            return cls(space, seed=seed, inner=inner, **options)
        return cls(space, seed=seed, **options)
    except TypeError as err:
        raise UserError(f"strategy {name!r}: {err}") from None


def get_task(name: str, **options: Any) -> Task:
    """The task called ``name``, with options (``steps=500``, ``data_dir=...``) applied."""
    if name not in TASKS:
        raise unknown("task", name, list_tasks())
    task = TASKS[name]
    if options:
        try:
            task = task.with_options(**options)  # type: ignore[attr-defined]
        except ValueError as err:
            raise UserError(str(err)) from None
    return task
