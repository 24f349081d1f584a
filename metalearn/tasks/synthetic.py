"""A synthetic task for comparing search strategies cheaply: match a hidden update rule.

No network is trained. A job "trains" by handing the candidate's optimizer a fixed
sequence of random gradients (the same for every job of the task) and recording the
update it makes at each step; its fitness is how closely that sequence of updates
points like the updates of a hidden *target* rule (PowerSign by default) on the same
gradients. The whole search loop (evaluator, ledger, cache, resume) runs as for a
real task, in milliseconds per job, so strategies can be compared over many seeds.

The gradients are ``g[t, i] = scale[i] * (mean[i] + noise[t, i])``: a persistent
direction (so momentum and sign agreement matter), fresh noise of the same size, and
per-coordinate scales spread over two orders of magnitude (so normalising rules like
Adam differ from raw ones). Fitness is ``accuracy = (1 + cos) / 2`` where ``cos`` is
the cosine between the candidate's and the target's flattened update sequences over
the steps trained so far (so a learning rate does not matter, a sign flip does);
``loss = 1 - cos``. A candidate whose update is NaN or infinite has diverged.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..recipe import Recipe
from .base import Diverged, JobTimeout, Task, TrainingState, replace_fields
from .train import make_generator

#: ``target(g)`` -> updates ``U`` for gradients ``g`` of shape (steps, dim), float64
Target = Callable[[torch.Tensor], torch.Tensor]


def _ema(g: torch.Tensor, beta: float) -> torch.Tensor:
    """``m_t = beta m_{t-1} + (1 - beta) g_t`` from ``m_0 = 0``, each row the *updated* value."""
    out, m = torch.empty_like(g), torch.zeros_like(g[0])
    for t in range(len(g)):
        m = beta * m + (1 - beta) * g[t]
        out[t] = m
    return out


def _adam(g: torch.Tensor) -> torch.Tensor:
    t = torch.arange(1, len(g) + 1, dtype=g.dtype).unsqueeze(1)
    m_hat = _ema(g, 0.9) / (1 - 0.9**t)
    v_hat = _ema(g * g, 0.999) / (1 - 0.999**t)
    return m_hat / (v_hat.sqrt() + 1e-8)


def _momentum(g: torch.Tensor) -> torch.Tensor:
    return _ema(g, 0.9) / 0.1  # torch's heavy ball m = 0.9 m + g, up to scale


#: hidden rules, from the reference formulas (Bello et al. 2017; Kingma & Ba 2015)
TARGETS: dict[str, Target] = {
    "powersign": lambda g: torch.exp(torch.sign(g) * torch.sign(_ema(g, 0.9))) * g,
    "addsign": lambda g: (1 + torch.sign(g) * torch.sign(_ema(g, 0.9))) * g,
    "adam": _adam,
    "rmsprop": lambda g: g / (_ema(g * g, 0.999).sqrt() + 1e-8),
    "signsgd": torch.sign,
    "sgd": lambda g: g,
    "momentum": _momentum,
}


@functools.lru_cache(maxsize=16)
def gradients(seed: int, steps: int, dim: int) -> torch.Tensor:
    """The fixed gradients of a task: row ``t`` depends only on ``(seed, t)``, so prefixes agree."""
    base = np.random.default_rng([seed, 0])
    mean, scale = base.normal(0.0, 1.0, dim), 10.0 ** base.uniform(-1.0, 1.0, dim)
    rows = [scale * (mean + np.random.default_rng([seed, 1, t]).normal(0.0, 1.0, dim))
            for t in range(steps)]
    return torch.tensor(np.array(rows).reshape(steps, dim), dtype=torch.float64)


@functools.lru_cache(maxsize=16)
def target_updates(target: str, seed: int, steps: int, dim: int) -> torch.Tensor:
    return TARGETS[target](gradients(seed, steps, dim))


@dataclass(frozen=True)
class SyntheticRuleMatch(Task):
    """Fitness = similarity of a candidate optimizer's updates to ``target``'s on fixed gradients."""

    name: str = "synthetic-rule-match"
    steps: int = 100
    dim: int = 64
    target: str = "powersign"
    gradient_seed: int = 0
    hparams: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"lr": 0.01, "momentum": 0.0, "weight_decay": 0.0})

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r} of task {self.name!r}; "
                             f"accepted: {', '.join(sorted(TARGETS))}")
        if self.steps < 1 or self.dim < 1:
            raise ValueError(f"task {self.name!r} needs steps >= 1 and dim >= 1")

    @property
    def config(self) -> Mapping[str, Any]:
        return {"name": self.name, "steps": self.steps, "dim": self.dim, "target": self.target,
                "gradient_seed": self.gradient_seed, "hparams": dict(self.hparams)}

    def with_options(self, **options: Any) -> SyntheticRuleMatch:
        return replace_fields(self, **options)  # type: ignore[no-any-return]

    def default_recipe(self) -> Recipe:
        return Recipe(hparams=dict(self.hparams))

    def start(self, recipe: Recipe, seed: int, device: str | torch.device = "cpu",
              total_steps: int | None = None) -> RuleMatchState:
        return RuleMatchState(self, recipe, seed, torch.device(device), total_steps or self.steps)


class RuleMatchState(TrainingState):
    """One candidate optimizer stepping through the task's fixed gradients."""

    def __init__(self, task: SyntheticRuleMatch, recipe: Recipe, seed: int,
                 device: torch.device, total_steps: int) -> None:
        self.task, self.device, self.total_steps = task, device, total_steps
        start = np.random.default_rng([task.gradient_seed, 2]).normal(0.0, 1.0, task.dim)
        self.weight = torch.nn.Parameter(torch.tensor(start, dtype=torch.float32, device=device))
        self.rule_generator = make_generator(seed, "rule", device)
        self.optimizer = recipe.make_optimizer([self.weight], total_steps=total_steps,
                                               generator=self.rule_generator)
        self.step = 0
        self.updates: list[torch.Tensor] = []
        self.curve: list[tuple[int, float]] = []

    def _gradients(self, until: int) -> torch.Tensor:
        return gradients(self.task.gradient_seed, until, self.task.dim)

    def train(self, steps: int, deadline: float | None = None) -> None:
        grads = self._gradients(self.step + steps).to(self.device, torch.float32)
        for _ in range(steps):
            before = self.weight.detach().clone()
            self.weight.grad = grads[self.step].clone()
            self.optimizer.step()
            update = before - self.weight.detach()
            if not bool(torch.isfinite(update).all()):
                raise Diverged(f"the update became non-finite at step {self.step}")
            self.updates.append(update.to(torch.float64))
            self.step += 1
            if deadline is not None and time.monotonic() > deadline:
                raise JobTimeout(f"job passed its time limit at step {self.step}")
        self.curve.append((self.step, self.evaluate()["loss"]))

    def similarity(self) -> float:
        """Cosine between the candidate's and the target's update sequences so far."""
        if not self.updates:
            return 0.0
        mine = torch.stack(self.updates).cpu().reshape(-1)
        target = target_updates(self.task.target, self.task.gradient_seed, self.step,
                                self.task.dim).reshape(-1)
        norms = float(mine.norm() * target.norm())
        if norms == 0.0 or not math.isfinite(norms):
            return 0.0
        return float((mine * target).sum()) / norms  # not `@`: float64 BLAS dot is slow here

    def evaluate(self, split: str = "val") -> dict[str, float]:
        if split not in ("val", "test", "train"):
            raise ValueError(f"unknown split {split!r}; accepted: val, test, train")
        cos = self.similarity()
        return {"accuracy": (1.0 + cos) / 2.0, "loss": 1.0 - cos}

    def state_dict(self) -> dict[str, Any]:
        updates = torch.stack(self.updates) if self.updates else torch.empty(0, self.task.dim,
                                                                             dtype=torch.float64)
        return {"weight": self.weight.detach().cpu(), "optimizer": self.optimizer.state_dict(),
                "step": self.step, "updates": updates.cpu(),
                "curve": torch.tensor(self.curve, dtype=torch.float64).reshape(-1, 2),
                "rule_generator": self.rule_generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.weight.copy_(state["weight"].to(self.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.updates = [u.to(self.device) for u in state["updates"]]
        self.curve = [(int(s), float(v)) for s, v in state["curve"].tolist()]
        self.rule_generator.set_state(state["rule_generator"])
