"""The image models of the seed papers, registered by name in :data:`metalearn.tasks.models.MODELS`.

- ``wrn``: Wide Residual Networks WRN-d-k (Zagoruyko & Komodakis 2016, "Wide Residual
  Networks", BMVC): pre-activation basic blocks (BN-ReLU-conv3x3, twice), ``(d-4)/6``
  blocks in each of three groups of width 16k, 32k, 64k, a 1x1 convolution on the
  shortcut where the shape changes, dropout between the two convolutions when asked.
  WRN-16-2 has 691,674 parameters, WRN-28-10 36,479,194 (the paper's 36.5M).
- ``resnet``: the CIFAR ResNets of He et al. 2016 ("Deep Residual Learning for Image
  Recognition", CVPR, Sec. 4.2): depth ``6n+2``, post-activation basic blocks of
  width 16, 32, 64, and parameter-free shortcuts (option A: subsample and pad the
  new channels with zeros). ResNet-20 has 269,722 parameters (the paper's 0.27M).
- ``nos-convnet``: the small ConvNet on which Neural Optimizer Search scored its
  candidate optimizers (Bello et al. 2017, "Neural Optimizer Search with Reinforcement
  Learning", ICML). The paper describes it only as a two-layer 3x3 ConvNet with 32
  filters, ReLU activations and batch normalisation, trained for 5 epochs on CIFAR-10.
  Our reading: conv3x3(32)-BN-ReLU twice (stride 1, padding 1, no bias: BN follows),
  then a linear classifier on the flattened 32x32x32 feature map. The paper names no
  pooling, and a flattened map keeps where a feature is (global pooling after two 3x3
  layers would leave only 5x5-patch statistics, too weak a proxy of a real network);
  337,898 parameters, 21 MFLOPs forward per image (WRN-16-2: 202): cheap enough
  for thousands of 5-epoch evaluations.
- ``proxprop-mlp`` and ``proxprop-convnet``: the networks of Proximal Backpropagation
  (Frerix et al. 2018, ICLR; their code's ``ProxPropMLP``/``ProxPropConvNet``): a ReLU
  MLP 3072-4000-1000-4000-10, and three 5x5 convolutions of 16, 20, 20 channels
  (padding 2, ReLU, 2x2 max-pooling after the first two) with a linear layer 20*8*8 -> 10.

Convolutions of the residual networks get He initialisation (He et al. 2015), as in
both papers; every other layer keeps PyTorch's default. Activations are ``nn.ReLU``
modules, not in place, so that backward rules may hook any layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UserError
from .models import register_model


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def _he_init(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model


class SeededDropout(nn.Module):
    """Dropout whose masks come from the module's own ``torch.Generator``.

    ``nn.Dropout`` draws from torch's global generator, which every job of a process
    shares; this one is seeded when the model is built (from the job's model seed),
    so a job's dropout noise depends on its seed alone. The generator's position is
    not part of a checkpoint: a resumed job draws fresh masks.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {p}")
        self.p = p
        self.seed = int(torch.randint(0, 2**62, ()).item())
        self._generators: dict[torch.device, torch.Generator] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        generator = self._generators.get(x.device)
        if generator is None:
            generator = self._generators[x.device] = torch.Generator(x.device)
            generator.manual_seed(self.seed)
        keep = torch.empty_like(x).bernoulli_(1.0 - self.p, generator=generator)
        return x * keep * (1.0 / (1.0 - self.p))

    def __getstate__(self) -> dict[str, Any]:  # generators are not copied (deepcopy, pickle)
        state = dict(self.__dict__)
        state["_generators"] = {}
        return state

    def extra_repr(self) -> str:
        return f"p={self.p}"


class WideBasicBlock(nn.Module):
    """Pre-activation block of a WRN: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 + shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(c_in), nn.ReLU()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn2, self.relu2 = nn.BatchNorm2d(c_out), nn.ReLU()
        self.dropout = SeededDropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = _conv3x3(c_out, c_out)
        # the shortcut convolution sees the pre-activated input, as in the authors' code
        self.shortcut = (nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
                         if stride != 1 or c_in != c_out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu1(self.bn1(x))
        y = self.conv2(self.dropout(self.relu2(self.bn2(self.conv1(o)))))
        return y + (self.shortcut(o) if self.shortcut is not None else x)


class WideResNet(nn.Module):
    """WRN-``depth``-``width`` of Zagoruyko & Komodakis 2016 (Table 1), for 32x32 images."""

    def __init__(self, depth: int = 16, width: int = 2, num_classes: int = 10,
                 dropout: float = 0.0, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0 or width < 1:
            raise UserError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...) and "
                            f"width >= 1, got depth={depth}, width={width}")
        blocks_per_group = (depth - 4) // 6
        self.conv = _conv3x3(in_channels, 16)
        blocks: list[nn.Module] = []
        c_in = 16
        for c_out, stride in ((16 * width, 1), (32 * width, 2), (64 * width, 2)):
            for b in range(blocks_per_group):
                blocks.append(WideBasicBlock(c_in, c_out, stride if b == 0 else 1, dropout))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.bn, self.relu = nn.BatchNorm2d(c_in), nn.ReLU()
        self.pool, self.flatten = nn.AdaptiveAvgPool2d(1), nn.Flatten()
        self.fc = nn.Linear(c_in, num_classes)
        _he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.blocks(self.conv(x))))
        return self.fc(self.flatten(self.pool(x)))


class PadShortcut(nn.Module):
    """He et al.'s option A shortcut: subsample by ``stride``, zero-pad the new channels."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.c_in, self.stride, self.extra = c_in, stride, c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))

    def population_layer(self) -> nn.Module:
        """This shortcut for P members in channels (:mod:`metalearn.tasks.population`)."""
        return PopulationPadShortcut(self.c_in, self.stride, self.extra)


class PopulationPadShortcut(nn.Module):
    """:class:`PadShortcut` of P members: each member's channels padded on their own."""

    def __init__(self, c_in: int, stride: int, extra: int) -> None:
        super().__init__()
        self.c_in, self.stride, self.extra = c_in, stride, extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        members = x.unflatten(1, (-1, self.c_in))  # (B, P, C, H, W)
        half = self.extra // 2
        return F.pad(members, (0, 0, 0, 0, half, self.extra - half)).flatten(1, 2)


class BasicBlock(nn.Module):
    """Post-activation block of He et al. 2016: conv-BN-ReLU-conv-BN, + shortcut, ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu1 = _conv3x3(c_in, c_out, stride), nn.BatchNorm2d(c_out), nn.ReLU()
        self.conv2, self.bn2 = _conv3x3(c_out, c_out), nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = (PadShortcut(c_in, c_out, stride)
                                    if stride != 1 or c_in != c_out else nn.Identity())
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-``depth`` of He et al. 2016 for CIFAR (Sec. 4.2): 6n+2 layers, widths 16/32/64."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise UserError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, "
                            f"56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv, self.bn, self.relu = _conv3x3(in_channels, 16), nn.BatchNorm2d(16), nn.ReLU()
        blocks: list[nn.Module] = []
        c_in = 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            for b in range(n):
                blocks.append(BasicBlock(c_in, c_out, stride if b == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool, self.flatten = nn.AdaptiveAvgPool2d(1), nn.Flatten()
        self.fc = nn.Linear(c_in, num_classes)
        _he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.relu(self.bn(self.conv(x))))
        return self.fc(self.flatten(self.pool(x)))


def _image_shape(in_shape: Sequence[int], model: str) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise UserError(f"model {model!r} takes images (channels, height, width), "
                        f"got inputs of shape {tuple(in_shape)}")
    c, h, w = (int(d) for d in in_shape)
    return c, h, w


@register_model("wrn")
def wide_resnet(in_shape: Sequence[int], num_classes: int, depth: int = 16, width: int = 2,
                dropout: float = 0.0, **_: Any) -> nn.Module:
    """WRN-d-k (Zagoruyko & Komodakis 2016)."""
    c, _h, _w = _image_shape(in_shape, "wrn")
    return WideResNet(depth, width, num_classes, dropout, in_channels=c)


@register_model("resnet")
def cifar_resnet(in_shape: Sequence[int], num_classes: int, depth: int = 20, **_: Any
                 ) -> nn.Module:
    """ResNet-20/32/44/56/110 for CIFAR (He et al. 2016)."""
    c, _h, _w = _image_shape(in_shape, "resnet")
    return CifarResNet(depth, num_classes, in_channels=c)


@register_model("nos-convnet")
def nos_convnet(in_shape: Sequence[int], num_classes: int, channels: int = 32, **_: Any
                ) -> nn.Module:
    """The two-layer ConvNet of Neural Optimizer Search (Bello et al. 2017); see the module doc."""
    c, h, w = _image_shape(in_shape, "nos-convnet")
    return nn.Sequential(
        _conv3x3(c, channels), nn.BatchNorm2d(channels), nn.ReLU(),
        _conv3x3(channels, channels), nn.BatchNorm2d(channels), nn.ReLU(),
        nn.Flatten(), nn.Linear(channels * h * w, num_classes),
    )


@register_model("proxprop-mlp")
def proxprop_mlp(in_shape: Sequence[int], num_classes: int,
                 hidden: Sequence[int] = (4000, 1000, 4000), **_: Any) -> nn.Module:
    """ProxProp's fully connected network, 3072-4000-1000-4000-10 on CIFAR (Frerix et al. 2018)."""
    in_features = math.prod(int(d) for d in in_shape)
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden:
        layers += [nn.Linear(in_features, int(width)), nn.ReLU()]
        in_features = int(width)
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


@register_model("proxprop-convnet")
def proxprop_convnet(in_shape: Sequence[int], num_classes: int, **_: Any) -> nn.Module:
    """ProxProp's ConvNet (Frerix et al. 2018): 5x5 convs of 16, 20, 20 channels, then linear."""
    c, h, w = _image_shape(in_shape, "proxprop-convnet")
    return nn.Sequential(
        nn.Conv2d(c, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 20, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(20, 20, 5, padding=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(20 * (h // 4) * (w // 4), num_classes),
    )
