"""Population layers: P members of one architecture run as one model, members in channels.

``vmap(functional_call(model))`` trains a population of any model, but every operation
pays the batching transform's dispatch cost and some of its rules (BatchNorm under bf16
autocast, the backward of ``Linear``) take slow paths. For the layers a population
usually consists of, the batched operation is a plain one on a wider tensor, the layout
vmap itself uses for convolutions:

- activations are ``(B, P * C, ...)``: member ``p``'s channels are ``p*C .. p*C + C - 1``,
  so element-wise ops, pooling, ``flatten(1)``, residual sums and the model's own
  ``forward`` code keep working unchanged;
- ``Conv{1,2,3}d`` is one grouped convolution (``groups * P``) over the stacked kernels;
- ``BatchNorm`` is one batch norm over ``P * C`` channels: per-member statistics, in
  bf16 under autocast like the sequential model;
- ``Linear`` is one ``baddbmm`` over the members.

An input with the model's own channel count (not ``P`` times it) is shared by every
member: the first ``Linear`` or ungrouped convolution then runs as one wide layer on it
(all members' kernels at once), which is how a search's jobs, that share one seed and
so one data order, are trained, and how every member is evaluated on the same split.

:func:`to_population` converts a model, or says why it cannot (a layer mixing channels,
such as ``LayerNorm``); a module of one's own may define ``population_layer()``, returning
its version for members in channels (the ResNet's zero-padding shortcut does); :func:`agrees` checks the converted model against each member's
own forward, so a ``forward`` that mixes channels in code (a concatenation on dim 1, say)
is caught and the caller falls back to vmap.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

Tensors = Mapping[str, torch.Tensor]

#: modules without parameters that act per channel (or per element): kept as they are
CHANNELWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Identity,
    nn.modules.dropout._DropoutNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
)


class PopulationLinear(nn.Module):
    """``nn.Linear`` of P members: weight ``(P, out, in)``, input ``(..., P * in)``."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        size = weight.shape[0]
        if x.shape[-1] == self.in_features:  # one input for every member: one wide layer
            return F.linear(x, weight.reshape(size * self.out_features, self.in_features),
                            None if bias is None else bias.reshape(-1))
        lead = x.shape[:-1]
        members = x.reshape(-1, size, self.in_features).transpose(0, 1)  # (P, N, in), a view
        if bias is None:
            out = torch.bmm(members, weight.transpose(1, 2))
        else:
            out = torch.baddbmm(bias.unsqueeze(1), members, weight.transpose(1, 2))
        return out.transpose(0, 1).reshape(*lead, size * self.out_features)


class PopulationConv(nn.Module):
    """``nn.Conv{1,2,3}d`` of P members: weight ``(P, out, in / groups, *k)``, one grouped
    convolution over input ``(B, P * in, ...)``."""

    def __init__(self, conv: nn.modules.conv._ConvNd) -> None:
        super().__init__()
        self.conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(conv.kernel_size)]
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.stride, self.dilation, self.groups = conv.stride, conv.dilation, conv.groups
        self.padding = conv.padding
        self.padding_mode = conv.padding_mode
        self.pad = conv._reversed_padding_repeated_twice
        self.weight = conv.weight
        self.bias = conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        size = weight.shape[0]
        groups = self.groups * size
        if x.shape[1] == self.in_channels and size > 1:
            if self.groups == 1:  # one input for every member: all kernels at once
                groups = 1
            else:  # grouped kernels need each member's copy of the input
                x = x.unsqueeze(1).expand(x.shape[0], size, *x.shape[1:]).flatten(1, 2)
        weight = weight.reshape(size * self.out_channels, *weight.shape[2:])
        flat_bias = None if bias is None else bias.reshape(-1)
        padding: str | tuple[int, ...] = self.padding
        if self.padding_mode != "zeros":
            x, padding = F.pad(x, self.pad, mode=self.padding_mode), (0,) * len(self.stride)
        return self.conv(x, weight, flat_bias, self.stride, padding, self.dilation, groups)


class PopulationBatchNorm(nn.Module):
    """``nn.BatchNorm{1,2,3}d`` of P members: statistics and affine ``(P, C)``, one batch
    norm over ``P * C`` channels (``nn.modules.batchnorm._BatchNorm.forward``, per member)."""

    running_mean: torch.Tensor | None
    running_var: torch.Tensor | None
    num_batches_tracked: torch.Tensor | None

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = norm.num_features, norm.eps, norm.momentum
        self.track_running_stats = norm.track_running_stats
        self.weight, self.bias = norm.weight, norm.bias
        self.register_buffer("running_mean", norm.running_mean)
        self.register_buffer("running_var", norm.running_var)
        self.register_buffer("num_batches_tracked", norm.num_batches_tracked)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.running_mean, self.running_var
        stacked = mean if mean is not None else self.weight
        assert isinstance(stacked, torch.Tensor), "a batch norm without statistics or affine"
        size = int(stacked.shape[0])
        if x.shape[1] == self.num_features and size > 1:  # a shared input: each member's copy
            x = x.unsqueeze(1).expand(x.shape[0], size, *x.shape[1:]).flatten(1, 2)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # a cumulative average; members have trained alike
                factor = 1.0 / float(self.num_batches_tracked.reshape(-1)[0])
        use_batch = self.training or (mean is None and var is None)
        track = not self.training or self.track_running_stats
        return F.batch_norm(
            x, mean.view(-1) if mean is not None and track else None,
            var.view(-1) if var is not None and track else None,
            None if self.weight is None else self.weight.reshape(-1),
            None if self.bias is None else self.bias.reshape(-1),
            use_batch, factor, self.eps)


class PopulationUnflatten(nn.Module):
    """``nn.Unflatten(1, (C, ...))`` of P members: ``(B, P * C * ...)`` to ``(B, P * C, ...)``."""

    def __init__(self, unflatten: nn.Unflatten) -> None:
        super().__init__()
        self.inner = tuple(int(d) for d in unflatten.unflattened_size[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(1, (-1, *self.inner))


def refusal(model: nn.Module) -> str | None:
    """Why ``model`` cannot become population layers, or ``None`` when it can."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Flatten) and module.start_dim != 1:
            return f"{name!r} flattens from dimension {module.start_dim}, not 1"
        if isinstance(module, nn.Unflatten) and module.dim != 1:
            return f"{name!r} unflattens dimension {module.dim}, not 1"
        if hasattr(module, "population_layer"):
            continue
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd, CHANNELWISE, nn.Flatten,
                               nn.Unflatten, nn.modules.batchnorm._BatchNorm)):
            if isinstance(module, nn.modules.conv._ConvTransposeNd):
                return f"{name!r} is a transposed convolution"
            if (isinstance(module, nn.modules.batchnorm._BatchNorm)
                    and type(module).__name__.startswith("Sync")):
                return f"{name!r} is a SyncBatchNorm"
            continue
        own = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        if own:
            return (f"{name!r} ({type(module).__name__}) has parameters or buffers of a kind "
                    "population layers do not stack")
    return None


def to_population(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose layers run P members at once (P is read from the stacked
    parameters given to ``functional_call``); the parameters keep their names."""
    reason = refusal(model)
    if reason is not None:
        raise ValueError(reason)
    population = copy.deepcopy(model)
    for name, module in list(population.named_modules()):
        if hasattr(module, "population_layer"):  # a module that says how to run as P members
            replacement: nn.Module = module.population_layer()
        elif isinstance(module, nn.Linear):
            replacement = PopulationLinear(module)
        elif isinstance(module, nn.modules.conv._ConvNd):
            replacement = PopulationConv(module)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            replacement = PopulationBatchNorm(module)
        elif isinstance(module, nn.Unflatten):
            replacement = PopulationUnflatten(module)
        else:
            continue
        replacement.train(module.training)
        parent, _, child = name.rpartition(".")
        setattr(population.get_submodule(parent) if parent else population, child, replacement)
    return population


def members_in_channels(x: torch.Tensor) -> torch.Tensor:
    """Per-member inputs ``(P, B, C, ...)`` laid out as ``(B, P * C, ...)``."""
    if x.dim() == 2:  # (P, B) of features without a channel dimension
        return x.transpose(0, 1)
    return x.transpose(0, 1).flatten(1, 2)


def members_first(logits: torch.Tensor, size: int) -> torch.Tensor:
    """Outputs ``(B, P * K)`` as ``(P, B, K)``."""
    return logits.reshape(logits.shape[0], size, -1).transpose(0, 1)


def population_forward(population: nn.Module, params: Tensors, buffers: Tensors,
                       x: torch.Tensor) -> torch.Tensor:
    """Logits ``(P, B, K)`` of the stacked members on ``x``: ``(P, B, ...)`` per member, or
    ``(B, ...)`` shared by all."""
    size = next(iter(params.values())).shape[0]
    return members_first(functional_call(population, (dict(params), dict(buffers)), (x,)), size)


def agrees(population: nn.Module, models: list[nn.Module], in_shape: tuple[int, ...],
           device: torch.device) -> bool:
    """Whether the population layers give each member's own outputs (eval mode, float32),
    on per-member and on shared inputs: a ``forward`` that mixes channels fails this."""
    from torch.func import stack_module_state

    probe = [copy.deepcopy(m).eval() for m in models]
    params, buffers = stack_module_state(probe)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(len(probe), 3, *in_shape, generator=generator).to(device)
    population = copy.deepcopy(population).eval()
    tolerance = 1e-4 if device.type == "cpu" else 2e-2
    try:
        with torch.no_grad():
            own = torch.stack([m(x[i]) for i, m in enumerate(probe)]).float()
            for inputs, expected in ((members_in_channels(x), own),
                                     (x[0], torch.stack([m(x[0]) for m in probe]).float())):
                got = population_forward(population, params, buffers, inputs)
                if got.shape != expected.shape:
                    return False
                scale = expected.abs().max().item() + 1e-3
                if (got.float() - expected).abs().max().item() > tolerance * scale:
                    return False
    except (RuntimeError, ValueError, IndexError):
        return False
    return True


def channels_last_kernels(stacked: torch.Tensor) -> torch.Tensor:
    """Stacked 2-D convolution kernels ``(P, out, in, kh, kw)`` stored so that their view
    ``(P * out, in, kh, kw)`` is channels-last (what cuDNN's fast kernels read); any
    other tensor is returned as it is."""
    if stacked.dim() != 5:
        return stacked
    return stacked.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
