"""Population batching: P candidates of one task trained at once as one vectorised model.

The members share the task's architecture, so their parameters are stacked into
P-leading tensors (``torch.func.stack_module_state``) and one forward pass serves the
whole population: by population layers (:mod:`.population`: members in channels, one
grouped convolution / batch norm / ``baddbmm`` per layer) when they reproduce the
model, else by ``vmap(functional_call)`` over the stacked tensors (the model ensembling
recipe of the torch.func documentation, applied to training). On CUDA, the step of a
population updated by SGD is replayed as one CUDA graph (:mod:`.cuda_graph`); with
optimizer rules, forward and backward are, and the updates run eagerly. Each
member is the twin of the sequential :class:`~metalearn.tasks.train.Trainer` run of
its job:

- parameters initialised by ``task.build_model(seed)`` (the same draws);
- its own data generator (``derive_seed(seed, "data")``), so the same batches in
  the same order, and its own rule generator for rules that draw noise;
- its own loss: TaylorGLO members are vmapped over their ``theta``; members
  sharing one loss callable are vmapped over it; any other loss is called per member;
- its own update: members using the default SGD (the ``hparams`` space and every
  space that leaves the optimizer alone) get one functional SGD with per-member
  learning rate, momentum, weight decay and Nesterov flag, vectorised over the
  population; members with an optimizer rule get real ``torch.optim.Optimizer``
  objects over views of their slice of the stacked tensors. Members with the same
  rule key and hyperparameters share one optimizer over their joint slice when a
  probe shows the rule is elementwise and draws no randomness (then the shared
  update equals the separate ones); otherwise each has its own.

Gradients of all members come from one backward pass of the sum of the members'
losses: each member's loss depends only on its own slice, so the gradient of the
sum is, slice by slice, each member's own gradient.

A member whose loss becomes NaN/Inf is recorded as ``diverged`` (with the message
and at the step the sequential loop would give) and frozen; the others go on. Once a
quarter of the population has failed, the failed members leave the stacked tensors
(the others keep their parameters, optimizer state and generators), so they cost no
more compute. Population layers order floating-point sums differently from the
sequential model, so their members agree with their sequential twins to float
tolerance (relative 3e-7 after 50 steps of ``mnist1d-mlp`` on the CPU); vmapped MLP
members (the CPU's default) came out bit for bit equal.

Not batched (the executor runs these sequentially): backward rules (they convert the
model's layers), tasks that are not a :class:`SupervisedTask`, models with modules that
own a generator (the WRN's ``SeededDropout``). BatchNorm is batched with per-member
statistics (its running buffers are stacked like the parameters). ``nn.Dropout`` draws
from the global generator in the sequential loop too, so it is batched with independent
draws per member.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ..recipe import Recipe, sgd
from .base import Diverged, JobTimeout, Task
from .cuda_graph import GraphUnavailable, StepGraph
from .population import (
    agrees,
    channels_last_kernels,
    members_in_channels,
    population_forward,
    to_population,
)
from .population import refusal as population_refusal
from .supervised import AUGMENTS, SupervisedTask, _on_device
from .train import lr_factor, make_generator

Tensors = dict[str, torch.Tensor]


#: how a population may be vectorised (``BatchedTrainer(vectorise=...)``)
VECTORISE = ("auto", "layers", "vmap")


class Unbatchable(ValueError):
    """The task's model or data cannot be trained as one population; run it sequentially."""


@dataclass(frozen=True)
class Member:
    """One candidate of a population.

    Attributes:
        recipe: the candidate's recipe (the task's default with its slots swapped in).
        seed: the job's seed; the member's initial weights and generators come from it.
        rule_key: identity of the member's optimizer rule and hyperparameters; members
            with equal keys may share one optimizer (``None``: never shared).
        resume: a sequential :class:`Trainer` checkpoint (its ``state_dict()``) to continue.
    """

    recipe: Recipe
    seed: int
    rule_key: Hashable | None = None
    resume: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class MemberFailure:
    """Why a member stopped: ``status`` is the evaluator's name for it."""

    status: str  # "invalid", "diverged", "error" or "timeout"
    error: BaseException
    step: int


@dataclass(frozen=True)
class _Retired:
    """What is kept of a failed member once it leaves the stacked tensors."""

    failure: MemberFailure
    curve: list[tuple[int, float]]
    state: Tensors


def refusal(task: Task, recipe: Recipe) -> str | None:
    """Why a job with ``recipe`` on ``task`` cannot be batched, or ``None`` when it can."""
    if not isinstance(task, SupervisedTask):
        return f"task {task.name!r} is not a SupervisedTask"
    if recipe.backward is not None:
        return "backward rules convert the model's layers, so each member needs its own model"
    return None


def model_refusal(model: nn.Module) -> str | None:
    """Why ``model`` cannot be one member of a population, or ``None``.

    Modules that draw from a generator of their own (the WRN's ``SeededDropout``) would
    share member 0's generator; ``nn.Dropout`` draws from the global generator in the
    sequential loop as well, so it is batched (independent draws per member).
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            continue
        owns_generator = any(isinstance(v, torch.Generator) or (
            isinstance(v, dict) and any(isinstance(g, torch.Generator) for g in v.values()))
            for v in vars(module).values())
        if owns_generator or (float(getattr(module, "p", 0.0) or 0.0) > 0
                              and "dropout" in type(module).__name__.lower()):
            return (f"module {name!r} ({type(module).__name__}) draws from its own generator, "
                    "which the members of a population cannot each have")
    return None


def uses_sgd(recipe: Recipe) -> bool:
    """Whether the recipe's optimizer is the default SGD (updated functionally, per member)."""
    return recipe.optimizer is sgd


class BatchedTrainer:
    """P members of one :class:`SupervisedTask` trained as one vectorised model.

    The counterpart of :class:`~metalearn.tasks.train.Trainer` for a population:
    ``train(steps, deadline)`` trains every member still alive, ``evaluate(split)``
    gives one metrics dict per member (``None`` for a member that failed), and
    ``failures`` says why members stopped. Members are given and reported in the
    caller's order.

    ``vectorise`` chooses how: ``"layers"`` (population layers, when they reproduce the
    model), ``"vmap"``, or ``"auto"``: layers on CUDA, where they are 2x faster than vmap
    and train BatchNorm in bf16, and vmap on the CPU, where both are as fast and vmap's
    members equal their sequential runs bit for bit (MLPs; Adam amplifies the last-bit
    differences of batched products into 1-2% of accuracy over 200 steps).
    """

    def __init__(self, task: SupervisedTask, members: Sequence[Member],
                 device: str | torch.device = "cpu", total_steps: int | None = None,
                 eval_batch_size: int = 1024, vectorise: str = "auto") -> None:
        if not members:
            raise ValueError("a population needs at least one member")
        if vectorise not in VECTORISE:
            raise ValueError(f"unknown vectorise {vectorise!r}; accepted: {', '.join(VECTORISE)}")
        for member in members:
            reason = refusal(task, member.recipe)
            if reason is not None:
                raise ValueError(f"cannot batch this member: {reason}")
        self.task = task
        self.device = torch.device(device)
        self.total_steps = total_steps or task.steps
        splits = task.load_data()
        self.data = _on_device(splits, self.device)
        self.batch_size = min(task.batch_size, len(self.data.y_train))
        self.eval_batch_size = eval_batch_size
        self.augment = AUGMENTS[task.augment] if task.augment != "none" else None
        if task.channels_last and self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

        # members sharing an update are made neighbours, so their slice is a view
        self.order = _update_order(members)
        self.members = [members[i] for i in self.order]
        self.size = self.count = len(self.members)
        #: members dropped from the stacked tensors once they failed (caller's index)
        self._retired: dict[int, _Retired] = {}
        models = [task.build_model(m.seed, tuple(splits.x_train.shape[1:]), splits.num_classes)
                  .to(self.device) for m in self.members]
        reason = model_refusal(models[0])
        if reason is not None:
            raise Unbatchable(f"task {task.name!r}: {reason}")
        params, buffers = stack_module_state(models)  # type: ignore[arg-type]
        self.params: Tensors = {k: v.detach() for k, v in params.items()}
        self.buffers: Tensors = {k: v.detach() for k, v in buffers.items()}
        self.model = copy.deepcopy(models[0]).to("meta")  # the architecture; weights come stacked
        self.in_shape = tuple(splits.x_train.shape[1:])
        #: the members' model as population layers, or ``None``: vmap of the model instead
        use_layers = vectorise == "layers" or (vectorise == "auto" and self.device.type == "cuda")
        self.population = self._population_layers(models[:2]) if use_layers else None
        #: kernels and inputs channels-last, as the task's sequential model on CUDA
        self.channels_last = (self.population is not None and task.channels_last
                              and self.device.type == "cuda")
        self.params = self._laid_out(self.params)
        # vmapped BatchNorm refuses bf16 inputs with float32 running statistics, so a
        # population of a BatchNorm model trains in float32 under vmap (measured: the
        # autocast path raised "Expected running_mean to have type BFloat16" on an H100);
        # population layers run BatchNorm in bf16 like the sequential model
        has_batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                            for m in models[0].modules())
        self.amp = task.amp and self.device.type == "cuda" and (
            self.population is not None or not has_batchnorm)
        del models
        self.data_generators = [make_generator(m.seed, "data", self.device) for m in self.members]
        self.rule_generators = [make_generator(m.seed, "rule", self.device) for m in self.members]

        self.steps = [0] * self.size
        self._clock = 0  # steps trained by this population (members may have started later)
        self.curves: list[list[tuple[int, float]]] = [[] for _ in range(self.size)]
        self._failures: dict[int, MemberFailure] = {}
        self._snapshot: Tensors | None = None  # parameters of frozen members, kept as they were
        # who still trains, on the device (for masks) and in Python (no device sync per step)
        self._alive = torch.ones(self.size, dtype=torch.bool, device=self.device)
        self._alive_list = [True] * self.size
        n = len(self.data.y_train)
        self._order = torch.zeros(self.size, n, dtype=torch.long, device=self.device)
        self._cursors = [n + 1] * self.size  # past the end: shuffle before the first batch, as Trainer
        self._check_every = 1 if self.device.type == "cpu" else 25
        self._curve_every = max(1, self.total_steps // 50)
        if self.population is None:
            self._forward_train = vmap(self._forward, randomness="different")
            self._forward_eval = vmap(self._forward, in_dims=(0, 0, None), randomness="different")
        else:
            self._forward_train = self._forward_eval = self._forward_population

        self.losses = _Losses([m.recipe for m in self.members], self.device)
        self.updates = self._build_updates()
        #: the step as a CUDA graph (see :mod:`.cuda_graph`); why it is off, if it is
        self._graph: StepGraph | None = None
        self._graph_of = ""  # the kind of step it captures, see _graph_kind
        self._graph_off: str | None = None
        self._unit_scale = torch.ones(self.size, dtype=torch.float64, device=self.device)
        for i, member in enumerate(self.members):
            if member.resume is not None:
                self._load_member(i, member.resume)

    # -- public view, in the caller's order ------------------------------------------------

    @property
    def failures(self) -> list[MemberFailure | None]:
        """Per member (caller's order): why it stopped, or ``None`` while it trains well."""
        positions = self._positions()
        return [self._retired[i].failure if i in self._retired
                else self._failures.get(positions[i]) for i in range(self.count)]

    def member_curve(self, index: int) -> list[tuple[int, float]]:
        if index in self._retired:
            return list(self._retired[index].curve)
        return list(self.curves[self._positions()[index]])

    def member_step(self, index: int) -> int:
        if index in self._retired:
            return self._retired[index].failure.step
        return self.steps[self._positions()[index]]

    def member_state(self, index: int) -> Tensors:
        """Member ``index``'s model ``state_dict`` (parameters and buffers, copied); for a
        member that failed, as it was when it stopped."""
        if index in self._retired:
            return dict(self._retired[index].state)
        return self._state_at(self._positions()[index])

    def _state_at(self, pos: int) -> Tensors:
        state = {k: v[pos].clone() for k, v in self.params.items()}
        state.update({k: v[pos].clone() for k, v in self.buffers.items()})
        return state

    def member_checkpoint(self, index: int) -> dict[str, Any]:
        """Member ``index`` as a sequential ``Trainer`` checkpoint (``Trainer.load_state_dict``)."""
        if index in self._retired:
            raise ValueError(f"member {index} failed ({self._retired[index].failure.status}); "
                             "a failed job saves no checkpoint")
        pos = self._positions()[index]
        return {
            "model": self.member_state(index),
            "optimizer": self._update_of(pos).state_dict(pos),
            "step": self.steps[pos],
            "curve": torch.tensor(self.curves[pos], dtype=torch.float64).reshape(-1, 2),
            "data_generator": self.data_generators[pos].get_state(),
            "rule_generator": self.rule_generators[pos].get_state(),
            "order": (self._order[pos] if self._cursors[pos] <= len(self.data.y_train)
                      else self._order[pos, :0]).cpu(),
            "cursor": self._cursors[pos] if self._cursors[pos] <= len(self.data.y_train) else 0,
        }

    def _positions(self) -> list[int]:
        """Caller's index -> position in the stacked tensors (-1: retired)."""
        positions = [-1] * self.count
        for pos, index in enumerate(self.order):
            positions[index] = pos
        return positions

    # -- training ------------------------------------------------------------------------

    def _forward(self, params: Tensors, buffers: Tensors, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, (params, buffers), (x,))

    def _forward_population(self, params: Tensors, buffers: Tensors,
                            x: torch.Tensor) -> torch.Tensor:
        """Logits ``(P, B, K)`` by population layers; ``x``: ``(P, B, ...)`` or shared ``(B, ...)``."""
        assert self.population is not None
        if x.dim() == len(self.in_shape) + 2:
            x = members_in_channels(x)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return population_forward(self.population, params, buffers, x)

    def _laid_out(self, params: Tensors) -> Tensors:
        if not self.channels_last:
            return params
        return {k: channels_last_kernels(v) for k, v in params.items()}

    def _population_layers(self, models: list[nn.Module]) -> nn.Module | None:
        """Population layers for the task's model when they reproduce each member's own
        forward (checked on the first members); ``None`` to vmap the model instead."""
        if population_refusal(models[0]) is not None:
            return None
        layers = to_population(self.model)
        return layers if agrees(layers, models, self.in_shape, self.device) else None

    def train(self, steps: int, deadline: float | None = None) -> None:
        """Train every live member ``steps`` more steps; failures are recorded, not raised.

        A member whose loss is NaN/Inf is marked ``diverged`` and frozen; past ``deadline``
        (``time.monotonic()``) every live member is marked ``timeout``.
        """
        self._set_training(True)
        window: list[torch.Tensor] = []
        for _ in range(steps):
            if not any(self._alive_list):
                break
            window.append(self._step())
            self._clock += 1
            if self._clock % self._check_every == 0 or len(window) >= self._curve_every:
                flush = len(window) >= self._curve_every
                self._check(window, flush)
                if flush:
                    window = []
            if deadline is not None and time.monotonic() > deadline:
                for pos in self._live():
                    self._fail(pos, "timeout", JobTimeout(
                        f"job passed its time limit at step {self.steps[pos]}"))
                return
        if window:
            self._check(window, flush=True)

    def _set_training(self, mode: bool) -> None:
        self.model.train(mode)
        if self.population is not None:
            self.population.train(mode)

    def _step(self) -> torch.Tensor:
        x, y = self._next_batch()
        kind = self._graph_kind()
        outputs = self._graphed(kind, x, y) if kind is not None else None
        if outputs is None:
            losses, named = self._gradients(x, y)
        else:
            losses = outputs[0].clone()  # the graph's output tensors are reused by its next replay
            named = dict(zip(self.params, outputs[1:]))
        if kind != "step" or outputs is None:
            self._update(named)
        for pos in self._live():
            self.steps[pos] += 1
        return losses

    def _gradients(self, x: torch.Tensor, y: torch.Tensor, capturing: bool = False
                   ) -> tuple[torch.Tensor, Tensors]:
        """Every member's loss and gradients (one backward pass of their sum)."""
        leaves = {k: v.detach().requires_grad_() for k, v in self.params.items()}
        # autocast's cache of cast weights must be off while a CUDA graph is captured
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp,
                            cache_enabled=False if capturing else None):
            logits = self._forward_train(leaves, self.buffers, x)
        losses = self.losses(logits.float(), y, self._fail_now)
        grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
        return losses.detach(), dict(zip(leaves, grads))

    def _update(self, named: Tensors) -> None:
        """Every live member's update from its gradients; frozen members are kept as they were."""
        with torch.no_grad():
            for update in self.updates:
                if not any(self._alive_list[update.start:update.stop]):
                    continue
                factors = None if self.task.lr_schedule == "constant" else [
                    lr_factor(self.task.lr_schedule, self.steps[pos], self.total_steps)
                    for pos in range(update.start, update.stop)]
                try:
                    update.step(named, factors)
                except Exception as err:  # an exception in a candidate's optimizer code
                    for pos in range(update.start, update.stop):
                        self._fail(pos, "error", err)
            if self._snapshot is not None:  # frozen members stay as they were when they stopped
                for k, v in self.params.items():
                    alive = self._alive.view(-1, *([1] * (v.dim() - 1)))
                    v.copy_(torch.where(alive, v, self._snapshot[k]))

    # -- the step as a CUDA graph ----------------------------------------------------------

    def _graph_kind(self) -> str | None:
        """What of this step runs as a CUDA graph: ``"step"`` (all of it: every member alive
        and updated by the functional SGD), ``"gradients"`` (forward, losses and backward;
        the updates run eagerly, as optimizer rules read their step count on the host,
        which a replayed graph would freeze), or ``None`` (off the GPU, under vmap, or
        after a capture failed)."""
        if self._graph_off is not None or self.device.type != "cuda" or self.population is None:
            return None
        if self._snapshot is None and all(isinstance(u, _FunctionalSGD) for u in self.updates):
            return "step"
        return "gradients"

    def _graphed(self, kind: str, x: torch.Tensor, y: torch.Tensor
                 ) -> tuple[torch.Tensor, ...] | None:
        """The outputs of the ``kind`` graph's replay (captured after two eager warm-up
        steps), or ``None`` when it cannot be captured (the step then runs eagerly from
        now on, and nothing of it has run)."""
        if self._graph is None or self._graph_of != kind:
            self._graph = StepGraph(self._sgd_step if kind == "step" else self._gradient_step)
            self._graph_of = kind
        inputs = (x, y, self._schedule_factors()) if kind == "step" else (x, y)
        failures = len(self._failures)
        try:
            outputs = self._graph(*inputs)
        except GraphUnavailable as why:
            self._graph_off, self._graph = str(why), None
            return None
        if len(self._failures) != failures:  # a loss raised while it was captured
            self._graph_off, self._graph = "a member failed inside the captured step", None
            return None
        return outputs

    def _schedule_factors(self) -> torch.Tensor:
        """Each member's learning-rate factor for this step, as float64 on the device."""
        if self.task.lr_schedule == "constant":
            return self._unit_scale
        return torch.tensor([lr_factor(self.task.lr_schedule, self.steps[pos], self.total_steps)
                             for pos in range(self.size)],
                            dtype=torch.float64).to(self.device, non_blocking=True)

    def _gradient_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        losses, named = self._gradients(x, y, capturing=True)
        return (losses, *named.values())

    def _sgd_step(self, x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor
                  ) -> tuple[torch.Tensor, ...]:
        """Forward, losses, backward and SGD update of every member, without host syncs."""
        losses, named = self._gradients(x, y, capturing=True)
        with torch.no_grad():
            for update in self.updates:
                assert isinstance(update, _FunctionalSGD)
                update.step_scaled(named, scale[update.start:update.stop])
        return (losses,)

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        n, b = len(self.data.y_train), self.batch_size
        for pos, cursor in enumerate(self._cursors):
            if cursor + b > n:  # the same reshuffle as Trainer._next_batch, from the member's generator
                self._order[pos] = torch.randperm(n, generator=self.data_generators[pos],
                                                  device=self.device)
                self._cursors[pos] = 0
        first = self._cursors[0]
        if all(c == first for c in self._cursors):
            index = self._order[:, first:first + b]
        else:  # members continued from checkpoints at different points of their epochs
            index = torch.stack([self._order[p, c:c + b] for p, c in enumerate(self._cursors)])
        self._cursors = [c + b for c in self._cursors]
        x, y = self.data.x_train[index], self.data.y_train[index]
        if self.augment is not None:
            x = self._augmented(x)
        return self.data.prepare(x), y

    def _augmented(self, x: torch.Tensor) -> torch.Tensor:
        """Each member's batch augmented with draws from its own data generator."""
        from .augment import crop_flip, random_crop_flip

        if self.augment is not random_crop_flip:
            return torch.stack([self.augment(x[p], g)  # type: ignore[misc]
                                for p, g in enumerate(self.data_generators)])
        # random_crop_flip's draws, member by member, then one gather for the population
        n, padding = x.shape[1], 4
        tops, lefts, flips = [], [], []
        for g in self.data_generators:
            tops.append(torch.randint(0, 2 * padding + 1, (n,), generator=g, device=x.device))
            lefts.append(torch.randint(0, 2 * padding + 1, (n,), generator=g, device=x.device))
            flips.append(torch.rand(n, generator=g, device=x.device) < 0.5)
        return crop_flip(x.flatten(0, 1), torch.cat(tops), torch.cat(lefts), torch.cat(flips),
                         padding).view_as(x)

    def _check(self, window: list[torch.Tensor], flush: bool) -> None:
        """Trainer._check per member: the first non-finite loss marks the member diverged."""
        losses = torch.stack(window)  # (steps, P)
        finite = torch.isfinite(losses if flush else losses[-1:]).all(0)
        bad = (~finite & self._alive).nonzero().flatten().tolist()
        for pos in bad:
            self._fail(pos, "diverged", Diverged(
                f"loss became {float(losses[-1, pos])} by step {self.steps[pos]}"))
        if flush:
            means = losses.t().contiguous().mean(1).tolist()  # each row reduced as Trainer's window
            for pos in self._live():
                self.curves[pos].append((self.steps[pos], means[pos]))
            self._compact()  # between windows: no pending loss refers to the old positions

    def _compact(self, fraction: float = 0.25) -> None:
        """Drop failed members from the stacked tensors once they are ``fraction`` of them,
        so that they cost no more compute; the others keep their state exactly."""
        keep = self._live()
        if not keep or self.size - len(keep) < max(1, fraction * self.size):
            return
        for pos in range(self.size):
            if pos in self._failures:
                self._retired[self.order[pos]] = _Retired(
                    self._failures[pos], self.curves[pos], self._state_at(pos))
        states = [self._update_of(pos).state_dict(pos) for pos in keep]
        index = torch.tensor(keep, device=self.device)
        self.params = self._laid_out({k: v.index_select(0, index) for k, v in self.params.items()})
        self.buffers = {k: v.index_select(0, index) for k, v in self.buffers.items()}
        self._order = self._order.index_select(0, index)
        for name in ("order", "members", "data_generators", "rule_generators", "steps",
                     "curves", "_cursors"):
            values = getattr(self, name)
            setattr(self, name, [values[pos] for pos in keep])
        self.size = len(keep)
        self._failures, self._snapshot = {}, None
        self._graph = None
        self._unit_scale = torch.ones(self.size, dtype=torch.float64, device=self.device)
        self._alive = torch.ones(self.size, dtype=torch.bool, device=self.device)
        self._alive_list = [True] * self.size
        self.losses = _Losses([m.recipe for m in self.members], self.device)
        self.updates = self._build_updates()
        for update in self.updates:
            update.load_state_dicts(states[update.start:update.stop])

    def _live(self) -> list[int]:
        return [pos for pos, alive in enumerate(self._alive_list) if alive]

    def _fail_now(self, pos: int, err: BaseException) -> None:
        self._fail(pos, "error", err)

    def _fail(self, pos: int, status: str, err: BaseException) -> None:
        if pos in self._failures:
            return
        self._failures[pos] = MemberFailure(status, err, self.steps[pos])
        self._graph = None  # a whole-step graph would update the frozen member: recapture
        self._alive[pos] = False
        self._alive_list[pos] = False
        if self._snapshot is None:
            self._snapshot = {k: v.clone() for k, v in self.params.items()}
        else:
            for k, v in self.params.items():
                self._snapshot[k][pos] = v[pos]

    # -- evaluation ----------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, split: str = "val") -> list[dict[str, float] | None]:
        """Accuracy and cross-entropy on ``split`` per member (caller's order); ``None`` for
        members that failed. Members with non-finite parameters are marked ``diverged``."""
        if split not in ("val", "test", "train"):
            raise ValueError(f"unknown split {split!r}; accepted: val, test, train")
        finite = torch.ones(self.size, dtype=torch.bool, device=self.device)
        for v in self.params.values():
            finite &= torch.isfinite(v).flatten(1).all(1)
        for pos in (~finite & self._alive).nonzero().flatten().tolist():
            self._fail(pos, "diverged", Diverged(
                f"parameters are not finite after step {self.steps[pos]}"))
        x, y = getattr(self.data, f"x_{split}"), getattr(self.data, f"y_{split}")
        self._set_training(False)
        correct = torch.zeros(self.size, device=self.device)
        total_loss = torch.zeros(self.size, device=self.device)
        for start in range(0, len(y), self.eval_batch_size):
            xb = self.data.prepare(x[start:start + self.eval_batch_size])
            yb = y[start:start + self.eval_batch_size]
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = self._forward_eval(self.params, self.buffers, xb)
            logits = logits.float()
            correct += (logits.argmax(2) == yb).sum(1)
            total_loss += vmap(_summed_cross_entropy, in_dims=(0, None))(logits, yb)
        self._set_training(True)
        n = max(len(y), 1)  # divided in Python, as Trainer.evaluate does
        accuracy = [c / n for c in correct.tolist()]
        loss = [v / n for v in total_loss.tolist()]
        results: list[dict[str, float] | None] = []
        for pos in self._positions():
            if pos < 0 or pos in self._failures:
                results.append(None)
            else:
                value = loss[pos]
                results.append({"accuracy": accuracy[pos],
                                "loss": value if math.isfinite(value) else float("inf")})
        return results

    # -- updates -------------------------------------------------------------------------

    def _build_updates(self) -> list[_Update]:
        updates: list[_Update] = []
        start = 0
        while start < self.size:
            key = _update_key(self.members[start])
            stop = start + 1
            while stop < self.size and _update_key(self.members[stop]) == key:
                stop += 1
            if key[0] == "sgd":
                updates.append(_FunctionalSGD(self.params, start, stop,
                                              [m.recipe.hparams for m in self.members[start:stop]]))
            else:
                updates.extend(self._rule_updates(start, stop))
            start = stop
        return updates

    def _rule_updates(self, start: int, stop: int) -> list[_Update]:
        """One shared optimizer for the range when the probe allows it, else one per member."""
        recipe = self.members[start].recipe
        make = self._maker(recipe)
        if stop - start > 1 and self.members[start].rule_key is not None and shares_update(
                make, self.device):
            return [_RuleUpdate(self.params, start, stop, make, self.rule_generators[start])]
        updates: list[_Update] = []
        for pos in range(start, stop):
            maker = self._maker(self.members[pos].recipe)
            try:
                updates.append(_RuleUpdate(self.params, pos, pos + 1, maker,
                                           self.rule_generators[pos]))
            except Exception as err:  # the rule cannot be built for this model
                self._fail(pos, "invalid", err)
        return updates

    def _maker(self, recipe: Recipe) -> Callable[[list[torch.Tensor], torch.Generator],
                                                   torch.optim.Optimizer]:
        total = self.total_steps
        return lambda params, generator: recipe.make_optimizer(params, total_steps=total,
                                                               generator=generator)

    def _update_of(self, pos: int) -> _Update:
        for update in self.updates:
            if update.start <= pos < update.stop:
                return update
        raise LookupError(f"member {pos} has no optimizer (it could not be built)")

    def _load_member(self, pos: int, state: Mapping[str, Any]) -> None:
        """Continue member ``pos`` from a sequential Trainer checkpoint (Trainer.load_state_dict)."""
        model = state["model"]
        for k, v in self.params.items():
            v[pos].copy_(model[k])
        for k, v in self.buffers.items():
            v[pos].copy_(model[k])
        if pos not in self._failures:  # a rule that could not be built has no state to load
            self._update_of(pos).load_state_dict(pos, state["optimizer"])
        self.steps[pos] = int(state["step"])
        self.curves[pos] = [(int(s), float(v)) for s, v in state["curve"].tolist()]
        self.data_generators[pos].set_state(state["data_generator"])
        self.rule_generators[pos].set_state(state["rule_generator"])
        order = state["order"].to(self.device)
        if len(order) == self._order.shape[1]:
            self._order[pos] = order
            self._cursors[pos] = int(state["cursor"])
        else:  # saved before its first batch: it shuffles first, as Trainer would
            self._cursors[pos] = self._order.shape[1] + 1


def _summed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, targets, reduction="sum")


# -- how members are ordered and updated --------------------------------------------------

def _update_key(member: Member) -> tuple[Any, ...]:
    if uses_sgd(member.recipe):
        return ("sgd",)
    if member.rule_key is None or member.resume is not None:
        return ("own", id(member))
    return ("rule", member.rule_key)


def _update_order(members: Sequence[Member]) -> list[int]:
    """Member indices with equal update keys made neighbours (first appearance order)."""
    rank: dict[tuple[Any, ...], int] = {}
    keys = [_update_key(m) for m in members]
    for key in keys:
        rank.setdefault(key, len(rank))
    return sorted(range(len(members)), key=lambda i: rank[keys[i]])


class _Update:
    """The update of members ``start:stop`` (neighbours in the stacked tensors)."""

    start: int
    stop: int

    def step(self, grads: Tensors, factors: list[float] | None) -> None:
        """Apply the members' update; ``factors``: their learning-rate schedule factors."""

    def state_dict(self, pos: int) -> dict[str, Any]:
        """Member ``pos``'s optimizer state, as its sequential twin's ``optimizer.state_dict()``."""
        raise NotImplementedError

    def load_state_dict(self, pos: int, state: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def load_state_dicts(self, states: Sequence[Mapping[str, Any]]) -> None:
        """The state of every member of the update, in order (after a compaction)."""
        for j, state in enumerate(states):
            self.load_state_dict(self.start + j, state)


class _FunctionalSGD(_Update):
    """``torch.optim.SGD``'s single-tensor algorithm, vectorised over members with their own
    learning rate, momentum, weight decay and Nesterov flag (dampening 0, as ``recipe.sgd``)."""

    def __init__(self, params: Tensors, start: int, stop: int,
                 hparams: Sequence[Mapping[str, float]]) -> None:
        self.start, self.stop = start, stop
        self.params = {k: v[start:stop] for k, v in params.items()}
        device = next(iter(params.values())).device

        def column(name: str, default: float) -> torch.Tensor:
            return torch.tensor([float(h.get(name, default)) for h in hparams], device=device)

        # learning rates times schedule factors are formed in float64, as SGD's Python floats
        self.lr64 = torch.tensor([float(h.get("lr", 0.1)) for h in hparams], device=device,
                                 dtype=torch.float64)
        self.lr = self.lr64.float()
        self.momentum = column("momentum", 0.0)
        self.weight_decay = column("weight_decay", 0.0)
        self.nesterov = column("nesterov", 0.0).bool() & (self.momentum > 0)
        # decided once, in Python: asking the device every step would synchronise it
        self.decay = any(float(h.get("weight_decay", 0.0)) != 0 for h in hparams)
        self.any_nesterov = any(bool(float(h.get("nesterov", 0.0))) and
                                float(h.get("momentum", 0.0)) > 0 for h in hparams)
        self.hparams = [dict(h) for h in hparams]
        # a zero buffer makes the first step buf = 0 * momentum + grad = grad, as SGD's clone
        self.buffers = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.stepped = torch.zeros(stop - start, dtype=torch.bool, device=device)

    def step(self, grads: Tensors, factors: list[float] | None) -> None:
        if factors is None:
            lr = self.lr
        elif all(f == factors[0] for f in factors):  # a Python scalar: no copy to the device
            lr = (self.lr64 * factors[0]).float()
        else:  # members continued from different steps of a schedule
            lr = (self.lr64 * torch.tensor(factors, device=self.lr.device,
                                           dtype=torch.float64)).float()
        self._apply(grads, lr)

    def step_scaled(self, grads: Tensors, scale: torch.Tensor) -> None:
        """``step`` with the schedule factors as a float64 tensor on the device (no host
        value, so the step can be captured as a CUDA graph)."""
        self._apply(grads, (self.lr64 * scale).float())

    def _apply(self, grads: Tensors, lr: torch.Tensor) -> None:
        for k, p in self.params.items():
            shape = (-1,) + (1,) * (p.dim() - 1)
            g = grads[k][self.start:self.stop]  # this step's gradient, ours to overwrite
            if self.decay:
                g.addcmul_(p, self.weight_decay.view(shape))
            buf = self.buffers[k]
            buf.mul_(self.momentum.view(shape)).add_(g)
            d = torch.where(self.nesterov.view(shape), g.addcmul(buf, self.momentum.view(shape)),
                            buf) if self.any_nesterov else buf
            p.addcmul_(d, lr.view(shape), value=-1)
        self.stepped[:] = True

    def state_dict(self, pos: int) -> dict[str, Any]:
        j = pos - self.start
        params = [v[j].clone() for v in self.params.values()]
        optimizer = sgd(params, **self.hparams[j])  # type: ignore[arg-type]
        if bool(self.stepped[j]) and float(self.momentum[j]) != 0:
            for p, buf in zip(params, self.buffers.values()):
                optimizer.state[p]["momentum_buffer"] = buf[j].clone()
        return optimizer.state_dict()

    def load_state_dict(self, pos: int, state: Mapping[str, Any]) -> None:
        j = pos - self.start
        saved = state.get("state", {})
        for index, buf in enumerate(self.buffers.values()):
            entry = saved.get(index, {})
            if entry.get("momentum_buffer") is not None:
                buf[j].copy_(entry["momentum_buffer"])
                self.stepped[j] = True


class _RuleUpdate(_Update):
    """A real ``torch.optim.Optimizer`` over views of members ``start:stop``'s slices."""

    def __init__(self, params: Tensors, start: int, stop: int,
                 make: Callable[[list[torch.Tensor], torch.Generator], torch.optim.Optimizer],
                 generator: torch.Generator) -> None:
        self.start, self.stop = start, stop
        single = stop - start == 1
        self.views = [v[start] if single else v[start:stop] for v in params.values()]
        self.names = list(params)
        self.optimizer = make(self.views, generator)
        self.base_lrs = [group.get("lr", 0.0) for group in self.optimizer.param_groups]
        self.settings = [{k: v for k, v in group.items() if k != "params"}
                         for group in self.optimizer.param_groups]

    def step(self, grads: Tensors, factors: list[float] | None) -> None:
        single = self.stop - self.start == 1
        for view, name in zip(self.views, self.names):
            g = grads[name]
            view.grad = g[self.start] if single else g[self.start:self.stop]
        if factors is not None:  # Trainer._set_lr; a shared optimizer's members share their step
            for group, base in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = base * factors[0]
        self.optimizer.step()
        for view in self.views:
            view.grad = None

    def state_dict(self, pos: int) -> dict[str, Any]:
        state = self.optimizer.state_dict()
        if self.stop - self.start == 1:
            return state
        j = pos - self.start  # a shared optimizer: take the member's row of every per-element state

        def row(value: Any, shape: torch.Size) -> Any:
            if isinstance(value, torch.Tensor) and value.shape == shape:
                return value[j].clone()
            return value

        shapes = [v.shape for v in self.views]
        state["state"] = {i: {k: row(v, shapes[i]) for k, v in entry.items()}
                          for i, entry in state["state"].items()}
        return state

    def load_state_dict(self, pos: int, state: Mapping[str, Any]) -> None:
        if self.stop - self.start != 1:
            raise ValueError("members continued from checkpoints get their own optimizer")
        self.optimizer.load_state_dict(dict(state))
        for group, settings in zip(self.optimizer.param_groups, self.settings):
            group.update(settings)  # the recipe's hyperparameters win, as in Trainer.load_state_dict

    def load_state_dicts(self, states: Sequence[Mapping[str, Any]]) -> None:
        if self.stop - self.start == 1:
            self.load_state_dict(self.start, states[0])
            return
        # a shared optimizer: stack the members' per-element state row by row
        shapes = [v.shape[1:] for v in self.views]

        def stacked(values: list[Any], shape: torch.Size) -> Any:
            if isinstance(values[0], torch.Tensor) and values[0].shape == shape:
                return torch.stack(values)
            return values[0]  # shared by members of one rule trained alike (its step count)

        joined = dict(states[0])
        joined["state"] = {i: {k: stacked([s["state"][i][k] for s in states], shapes[i])
                               for k in entry}
                           for i, entry in states[0]["state"].items()}
        self.optimizer.load_state_dict(joined)


def shares_update(make: Callable[[list[torch.Tensor], torch.Generator], torch.optim.Optimizer],
                  device: torch.device, steps: int = 3) -> bool:
    """Whether one optimizer over stacked members updates each as its own optimizer would.

    True for elementwise rules that draw no randomness (SGD, Adam, PowerSign, ...): the
    probe runs the rule on two members stacked and on each alone, with random gradients,
    and compares; a rule that mixes elements (norms, trust ratios) or draws from its
    generator is refused, and its members get an optimizer each.
    """
    cpu = torch.Generator().manual_seed(0)
    start = torch.randn(2, 3, 4, generator=cpu).to(device)
    grads = torch.randn(steps, 2, 3, 4, generator=cpu).to(device)
    try:
        generator = torch.Generator(device=device)
        generator.manual_seed(0)
        before = generator.get_state()
        stacked = start.clone()
        shared = make([stacked], generator)
        alone = [start[i].clone() for i in range(2)]
        own = [make([p], torch.Generator(device=device)) for p in alone]
        with torch.no_grad():
            for s in range(steps):
                stacked.grad = grads[s].clone()
                shared.step()
                for i, (p, optimizer) in enumerate(zip(alone, own)):
                    p.grad = grads[s, i].clone()
                    optimizer.step()
    except Exception:
        return False
    if not torch.equal(generator.get_state(), before):
        return False
    return bool(torch.allclose(stacked, torch.stack(alone), rtol=1e-5, atol=1e-7, equal_nan=True))


# -- losses -------------------------------------------------------------------------------

LossPart = Callable[[torch.Tensor, torch.Tensor, Callable[[int, BaseException], None]],
                   torch.Tensor]


class _Losses:
    """Per-member losses of a population's logits ``(P, B, C)``: vectorised where possible.

    TaylorGLO members are one vmapped call over their stacked ``theta``; members sharing
    one loss callable (the task's cross-entropy) are one vmapped call; a loss that cannot
    be vmapped is called per member.
    """

    def __init__(self, recipes: Sequence[Recipe], device: torch.device) -> None:
        from ..searchspaces.taylorglo import TaylorGLOLoss

        self.size = len(recipes)
        groups: dict[Any, list[int]] = {}
        for pos, recipe in enumerate(recipes):
            kind = "taylorglo" if isinstance(recipe.loss, TaylorGLOLoss) else id(recipe.loss)
            groups.setdefault(kind, []).append(pos)
        self.parts: list[tuple[torch.Tensor | None, LossPart]] = []
        for kind, positions in groups.items():
            if kind == "taylorglo":
                thetas = [recipes[p].loss.theta for p in positions]  # type: ignore[attr-defined]
                part = _taylorglo(torch.stack(thetas).to(device))
            else:
                part = _shared(recipes[positions[0]].loss, positions)
            # made once: building an index tensor each step would copy it to the device each step
            index = None if len(positions) == self.size else torch.tensor(positions, device=device)
            self.parts.append((index, part))
        flat = [p for positions in groups.values() for p in positions]
        self.inverse = (None if flat == list(range(self.size))
                        else torch.argsort(torch.tensor(flat, device=device)))

    def __call__(self, logits: torch.Tensor, y: torch.Tensor,
                 fail: Callable[[int, BaseException], None]) -> torch.Tensor:
        values = []
        for index, compute in self.parts:
            if index is None:
                values.append(compute(logits, y, fail))
            else:
                values.append(compute(logits[index], y[index], fail))
        joined = values[0] if len(values) == 1 else torch.cat(values)
        return joined if self.inverse is None else joined[self.inverse]


def _taylorglo(theta: torch.Tensor) -> LossPart:
    """TaylorGLO losses of members with parameters ``theta`` (n, 8), in one vmapped call."""
    from ..searchspaces.taylorglo import taylorglo_loss

    batched = vmap(taylorglo_loss)
    return lambda logits, y, fail: batched(logits, y, theta)


def _shared(loss: Callable[..., torch.Tensor], positions: list[int]) -> LossPart:
    """One loss callable shared by members ``positions``: vmapped, or else called per member."""
    batched = vmap(loss)
    vmappable = [True]

    def call(logits: torch.Tensor, y: torch.Tensor, fail: Callable[[int, BaseException], None]
             ) -> torch.Tensor:
        if vmappable[0]:
            try:
                return batched(logits, y)
            except Exception:  # data-dependent control flow, say: one call per member
                vmappable[0] = False
        values = []
        for j, pos in enumerate(positions):
            try:
                values.append(loss(logits[j], y[j]).reshape(()))
            except Exception as err:  # an exception in the candidate's loss
                fail(pos, err)
                values.append(logits[j].sum() * 0)
        return torch.stack(values)

    return call
