"""Models of the tasks, registered by name."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

ModelFactory = Callable[..., nn.Module]
MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    def add(factory: ModelFactory) -> ModelFactory:
        MODELS[name] = factory
        return factory
    return add


@register_model("mlp")
def mlp(in_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (256, 256),
        **_: Any) -> nn.Module:
    """A ReLU multilayer perceptron on flattened inputs."""
    in_features = 1
    for d in in_shape:
        in_features *= int(d)
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU()]
        in_features = width
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


@register_model("signal-convnet")
def signal_convnet(in_shape: Sequence[int], num_classes: int,
                   channels: Sequence[int] = (16, 32, 32), **_: Any) -> nn.Module:
    """A small ConvNet on 1D signals laid out as 1 x 1 x L images (MNIST-1D).

    ``nn.Conv2d`` with 1 x k kernels, strides 2, 2, 1 and padding, then a Linear
    classifier: a convolutional model cheap enough for searches on a CPU that
    exercises everything a backward rule must handle in Conv2d layers.
    """
    length = 1
    for d in in_shape:
        length *= int(d)
    specs = list(zip(channels, (5, 3, 3), (2, 2, 1)))
    layers: list[nn.Module] = [nn.Flatten(), nn.Unflatten(1, (1, 1, length))]
    c_in = 1
    for c_out, k, stride in specs:
        layers += [nn.Conv2d(c_in, c_out, (1, k), stride=(1, stride), padding=(0, k // 2)),
                   nn.ReLU()]
        length = (length + 2 * (k // 2) - k) // stride + 1
        c_in = c_out
    layers += [nn.Flatten(), nn.Linear(c_in * length, num_classes)]
    return nn.Sequential(*layers)
