"""The training recipe: the slots a candidate may replace.

A task trains with its default recipe; a search space returns a copy of it with
its own slots swapped in (``SearchSpace.fill``). The slots and what they hold:

- ``optimizer``: a factory called as ``factory(params, lr=..., momentum=...,
  weight_decay=..., total_steps=T, generator=g)`` returning a
  ``torch.optim.Optimizer``; factories accept (and may ignore) every keyword.
- ``loss``: a callable ``loss(logits, targets) -> scalar tensor``.
- ``backward``: ``None`` for autograd's backprop, or a :class:`BackwardRule`.
- ``hparams``: a mapping of named numbers (``lr``, ``momentum``, ``weight_decay``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

SLOTS = ("backward", "optimizer", "loss", "hparams")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


#: ``factory(params, lr=..., momentum=..., weight_decay=..., total_steps=T, generator=g)``
OptimizerFactory = Callable[..., torch.optim.Optimizer]


@runtime_checkable
class BackwardRule(Protocol):
    """How error signals flow back through a model's layers.

    ``apply`` converts the model's ``nn.Linear``/``nn.Conv2d`` layers in place
    (fixed random matrices drawn from ``generator`` are registered as buffers,
    so they are saved with the model). ``observe_output`` is called by the
    training loop on every step's logits before ``backward()``; a rule that
    needs the output error ``e = dL/dlogits`` (direct feedback alignment)
    registers a tensor hook there.
    """

    def apply(self, model: nn.Module, generator: torch.Generator) -> nn.Module: ...

    def observe_output(self, logits: torch.Tensor) -> None: ...


def sgd(
    params: Iterable[Any],
    *,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    **_: Any,
) -> torch.optim.Optimizer:
    """The default optimizer: SGD with (optional) momentum and weight decay.

    On CUDA it uses PyTorch's fused kernel (one launch for all parameters).
    """
    params = list(params)
    tensors = [p for p in params if isinstance(p, torch.Tensor)]
    fused = bool(tensors) and len(tensors) == len(params) and all(p.is_cuda for p in tensors)
    return torch.optim.SGD(
        params, lr=lr, momentum=momentum, weight_decay=weight_decay,
        nesterov=bool(nesterov) and momentum > 0, fused=fused or None,
    )


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, targets)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything about training that a candidate may replace."""

    optimizer: OptimizerFactory = sgd
    loss: LossFn = cross_entropy
    backward: BackwardRule | None = None
    hparams: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: MappingProxyType({"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0})
    )

    def replace(self, **slots: Any) -> Recipe:
        """A copy with the named slots replaced; ``hparams`` are merged, not replaced."""
        unknown = set(slots) - set(SLOTS)
        if unknown:
            raise ValueError(f"unknown recipe slot(s) {sorted(unknown)}; slots are {list(SLOTS)}")
        if "hparams" in slots:
            slots["hparams"] = MappingProxyType({**self.hparams, **slots["hparams"]})
        return dataclasses.replace(self, **slots)

    def make_optimizer(
        self, params: Iterable[Any], total_steps: int, generator: torch.Generator | None = None
    ) -> torch.optim.Optimizer:
        return self.optimizer(
            params, total_steps=total_steps, generator=generator, **dict(self.hparams)
        )
