"""The one training loop every task, slot and executor uses.

It owns all randomness of a job through ``torch.Generator``s seeded from the job's
seed (data order; the operands of optimizer and backward rules that draw noise or
fixed random matrices), builds the optimizer knowing the total step count (decay
schedules need ``T``), steps the learning-rate schedule itself, installs the
backward rule and hands it each step's logits (direct feedback alignment needs the
output error), and stops a job at its first NaN/Inf loss.
"""

from __future__ import annotations

import functools
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..recipe import Recipe
from .base import Diverged, JobTimeout, TrainingState

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def derive_seed(seed: int, purpose: str) -> int:
    """A seed for one purpose (``"data"``, ``"model"``, ``"rule"``) of a job with ``seed``."""
    return (int(seed) * 1_000_003 + zlib.crc32(purpose.encode())) % (2**63 - 1)


def make_generator(seed: int, purpose: str, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(seed, purpose))
    return generator


@dataclass
class Splits:
    """A dataset as tensors: training, validation (carved from training) and test.

    Images may be stored as uint8 (so a whole dataset fits on the device); ``prepare``
    turns a batch into model inputs on the device: uint8 is scaled to [0, 1], then
    normalised per channel with ``mean``/``std`` when they are given.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def to(self, device: torch.device) -> Splits:
        moved: dict[str, Any] = {
            k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()
        }
        return Splits(**moved)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Model inputs from a stored batch (the identity for float data without ``mean``)."""
        if self.mean is None:
            return x.float().mul_(1 / 255) if x.dtype == torch.uint8 else x
        scale, shift = _affine(self.mean, self.std or (1.0,) * len(self.mean),
                               255.0 if x.dtype == torch.uint8 else 1.0, x.device)
        return torch.addcmul(shift, x.float(), scale)


@functools.lru_cache(maxsize=64)
def _affine(mean: tuple[float, ...], std: tuple[float, ...], peak: float, device: torch.device
            ) -> tuple[torch.Tensor, torch.Tensor]:
    # cached per device: building these tensors every step would copy host to device each time
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (1 / (peak * s)).to(device), (-m / s).to(device)


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """Multiplier of the base learning rate at ``step`` of ``total_steps``.

    ``"multistep:0.3,0.6,0.8:0.2"`` multiplies by 0.2 at 30%, 60% and 80% of training
    (the schedule of Zagoruyko & Komodakis 2016 on CIFAR: epochs 60, 120, 160 of 200).
    """
    if schedule == "constant":
        return 1.0
    progress = min(step, total_steps) / max(total_steps, 1)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":  # divide by 10 at 50% and 75% of training
        return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
    if schedule.startswith("multistep:"):
        milestones, gamma = _multistep(schedule)
        return gamma ** sum(progress >= m for m in milestones)
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; accepted: constant, cosine, "
                     "step, multistep:F1,F2,...:GAMMA (fractions of the job, factor)")


@functools.lru_cache(maxsize=64)
def _multistep(schedule: str) -> tuple[tuple[float, ...], float]:
    try:
        _, milestones, gamma = schedule.split(":")
        return tuple(float(m) for m in milestones.split(",")), float(gamma)
    except ValueError:
        raise ValueError(f"bad learning-rate schedule {schedule!r}; expected "
                         "multistep:F1,F2,...:GAMMA, e.g. multistep:0.3,0.6,0.8:0.2") from None


class Trainer(TrainingState):
    """Supervised training of ``model`` on device-resident ``data`` with ``recipe``."""

    def __init__(
        self,
        model: nn.Module,
        data: Splits,
        recipe: Recipe,
        seed: int,
        total_steps: int,
        batch_size: int,
        device: torch.device,
        lr_schedule: str = "constant",
        augment: Augment | None = None,
        amp: bool = False,
        eval_batch_size: int = 1024,
        compile_mode: str = "none",
    ) -> None:
        self.device = device
        self.data = data
        self.recipe = recipe
        self.total_steps = total_steps
        self.batch_size = min(batch_size, len(data.y_train))
        self.lr_schedule = lr_schedule
        self.augment = augment
        self.amp = amp and device.type == "cuda"
        self.eval_batch_size = eval_batch_size
        self.data_generator = make_generator(seed, "data", device)
        self.rule_generator = make_generator(seed, "rule", device)
        self.model = model.to(device)
        if recipe.backward is not None:
            self.model = recipe.backward.apply(self.model, self.rule_generator) or self.model
        # on CUDA, small models are bound by kernel launches: compiling (and CUDA graphs with
        # "reduce-overhead") removes most of them; the state dict stays the plain model's
        self._forward: Callable[[torch.Tensor], torch.Tensor] = self.model
        if compile_mode != "none" and device.type == "cuda":
            self._forward = torch.compile(self.model, mode=None if compile_mode == "default"
                                          else compile_mode)
        self.optimizer = recipe.make_optimizer(
            self.model.parameters(), total_steps=total_steps, generator=self.rule_generator
        )
        # the recipe's hyperparameters win over a loaded checkpoint's (PBT's explore step)
        self._group_settings = [
            {k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups
        ]
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.step = 0
        self.curve: list[tuple[int, float]] = []
        self._order = torch.empty(0, dtype=torch.long, device=device)
        self._cursor = 0
        self._check_every = 1 if device.type == "cpu" else 25
        self._curve_every = max(1, total_steps // 50)

    def _compiled_or_eager(self, x: torch.Tensor) -> torch.Tensor:
        """The compiled forward; a candidate whose rule cannot be compiled runs eagerly instead."""
        if self._forward is self.model:
            return self.model(x)
        try:
            return self._forward(x)
        except Exception as err:  # torch._dynamo / torch._inductor failures only
            if not type(err).__module__.startswith(("torch._dynamo", "torch._inductor")):
                raise
            self._forward = self.model
            return self.model(x)

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.data.y_train)
        if self._cursor + self.batch_size > len(self._order):
            self._order = torch.randperm(n, generator=self.data_generator, device=self.device)
            self._cursor = 0
        index = self._order[self._cursor:self._cursor + self.batch_size]
        self._cursor += self.batch_size
        x, y = self.data.x_train[index], self.data.y_train[index]
        if self.augment is not None:
            x = self.augment(x, self.data_generator)
        return self.data.prepare(x), y

    def _set_lr(self) -> None:
        factor = lr_factor(self.lr_schedule, self.step, self.total_steps)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def train(self, steps: int, deadline: float | None = None) -> None:
        self.model.train()
        window: list[torch.Tensor] = []
        for _ in range(steps):
            if self.lr_schedule != "constant":
                self._set_lr()
            x, y = self._next_batch()
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = self._compiled_or_eager(x)
            logits = logits.float()
            if self.recipe.backward is not None:
                self.recipe.backward.observe_output(logits)
            loss = self.recipe.loss(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            window.append(loss.detach())
            if self.step % self._check_every == 0 or len(window) >= self._curve_every:
                self._check(window, flush=len(window) >= self._curve_every)
                if len(window) >= self._curve_every:
                    window = []
            if deadline is not None and time.monotonic() > deadline:
                raise JobTimeout(f"job passed its time limit at step {self.step}")
        if window:
            self._check(window, flush=True)

    def _check(self, window: list[torch.Tensor], flush: bool) -> None:
        last = window[-1] if not flush else torch.stack(window)
        if not bool(torch.isfinite(last).all()):
            raise Diverged(f"loss became {float(last.reshape(-1)[-1])} by step {self.step}")
        if flush:
            self.curve.append((self.step, float(last.mean())))

    @torch.no_grad()
    def evaluate(self, split: str = "val") -> dict[str, float]:
        if split not in ("val", "test", "train"):
            raise ValueError(f"unknown split {split!r}; accepted: val, test, train")
        for p in self.model.parameters():
            if not bool(torch.isfinite(p).all()):
                raise Diverged(f"parameters are not finite after step {self.step}")
        x, y = getattr(self.data, f"x_{split}"), getattr(self.data, f"y_{split}")
        self.model.eval()
        correct = torch.zeros((), device=self.device)
        total_loss = torch.zeros((), device=self.device)
        for start in range(0, len(y), self.eval_batch_size):
            xb, yb = x[start:start + self.eval_batch_size], y[start:start + self.eval_batch_size]
            xb = self.data.prepare(xb)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = self._compiled_or_eager(xb)
            logits = logits.float()
            correct += (logits.argmax(1) == yb).sum()
            total_loss += nn.functional.cross_entropy(logits, yb, reduction="sum")
        self.model.train()
        n = max(len(y), 1)
        loss = float(total_loss) / n
        return {"accuracy": float(correct) / n, "loss": loss if math.isfinite(loss) else float("inf")}

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "curve": torch.tensor(self.curve, dtype=torch.float64).reshape(-1, 2),
            "data_generator": self.data_generator.get_state(),
            "rule_generator": self.rule_generator.get_state(),
            "order": self._order.cpu(),
            "cursor": self._cursor,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group, settings in zip(self.optimizer.param_groups, self._group_settings):
            group.update(settings)
        self.step = int(state["step"])
        self.curve = [(int(s), float(v)) for s, v in state["curve"].tolist()]
        self.data_generator.set_state(state["data_generator"])
        self.rule_generator.set_state(state["rule_generator"])
        self._order = state["order"].to(self.device)
        self._cursor = int(state["cursor"])
