"""metalearn: meta-learn the optimizer, the loss and the backprop rule of training.

The public face of the package::

    import metalearn as ml
    ml.list_spaces(); ml.list_strategies(); ml.list_tasks()
    space = ml.get_space("optimizer")
    run = ml.search(space="loss", strategy="cmaes", task="mnist1d-mlp", budget=20, run="runs/loss")
    run.to_pandas(); run.best(k=5)
"""

from __future__ import annotations

from .candidate import Candidate
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
from .tasks import register_task

__all__ = [
    "Candidate", "Evaluation", "Evaluator", "Job", "ParseError", "Recipe", "Status", "UserError",
    "get_space", "get_strategy", "get_task", "list_spaces", "list_strategies", "list_tasks",
    "register_space", "register_strategy", "register_task",
]
