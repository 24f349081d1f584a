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
