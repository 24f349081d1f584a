"""metalearn: meta-learn the optimizer, the loss and the backprop rule of training.

The public face of the package::

    import metalearn as ml
    ml.list_spaces(); ml.list_strategies(); ml.list_tasks()
    space = ml.get_space("optimizer")
    run = ml.search(space="loss", strategy="cmaes", task="mnist1d-mlp", budget=20, run="runs/loss")
    run.to_pandas(); run.best(k=5)

Names are imported on first use, so ``import metalearn`` (and ``metalearn show``)
stays fast; the heavy modules (torch) load only when a name that needs them is used.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Candidate": "candidate",
    "ParseError": "errors",
    "UserError": "errors",
    "Evaluation": "evaluator",
    "Evaluator": "evaluator",
    "Job": "evaluator",
    "Status": "evaluator",
    "Recipe": "recipe",
    "get_space": "registry",
    "get_strategy": "registry",
    "get_task": "registry",
    "list_spaces": "registry",
    "list_strategies": "registry",
    "list_tasks": "registry",
    "register_space": "registry",
    "register_strategy": "registry",
    "register_task": "tasks",
    "search": "search",
    "compare": "compare",
    "retrain": "retrain",
    "Run": "run",
    "load_run": "run",
}

__all__ = [
    "Candidate", "Evaluation", "Evaluator", "Job", "ParseError", "Recipe", "Run", "Status",
    "UserError", "get_space", "get_strategy", "get_task", "list_spaces", "list_strategies",
    "list_tasks", "load_run", "register_space", "register_strategy", "register_task", "search",
    "compare", "retrain",
]

if TYPE_CHECKING:
    from .candidate import Candidate
    from .compare import compare
    from .errors import ParseError, UserError
    from .evaluator import Evaluation, Evaluator, Job, Status
    from .recipe import Recipe
    from .registry import (
        get_space,
        get_strategy,
        get_task,
        list_spaces,
        list_strategies,
        list_tasks,
        register_space,
        register_strategy,
    )
    from .retrain import retrain
    from .run import Run, load_run
    from .search import search
    from .tasks import register_task


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'metalearn' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


#: public functions that share their name with the module that defines them
_FUNCTIONS_OVER_MODULES = frozenset({"search", "compare", "retrain"})


class _Package(types.ModuleType):
    """Keeps ``metalearn.search``/``compare``/``retrain`` the functions of the public API.

    Importing a submodule makes the import system bind it on its package
    (``metalearn.search = <module>``), which would hide the function of the same
    name once anything imported ``metalearn.search.X`` first. The modules stay
    reachable as ``sys.modules["metalearn.search"]`` (``importlib.import_module``).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FUNCTIONS_OVER_MODULES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
