"""The image models have the parameter counts of their definitions.

Expected counts are computed here from the papers' descriptions layer by layer
(closed forms independent of the module code), and compared with the papers'
rounded figures: WRN-16-2 0.69M, WRN-28-10 36.5M (Zagoruyko & Komodakis 2016,
Table 4 lists 36.5M), ResNet-20 0.27M (He et al. 2016, Table 6).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from metalearn.errors import UserError
from metalearn.tasks.models import MODELS
from metalearn.tasks.vision_models import SeededDropout

CIFAR = (3, 32, 32)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def bn(c: int) -> int:
    return 2 * c


def wrn_params(depth: int, k: int, classes: int = 10) -> int:
    """Conv 3->16; per group, n pre-activation blocks (BN, 3x3, BN, 3x3) and a 1x1 shortcut
    where the width changes; final BN and a linear classifier."""
    n = (depth - 4) // 6
    total, c_in = 3 * 16 * 9, 16
    for c_out in (16 * k, 32 * k, 64 * k):
        for b in range(n):
            cin = c_in if b == 0 else c_out
            total += bn(cin) + cin * c_out * 9 + bn(c_out) + c_out * c_out * 9
            if b == 0 and cin != c_out:
                total += cin * c_out
        c_in = c_out
    return total + bn(c_in) + c_in * classes + classes


def resnet_params(depth: int, classes: int = 10) -> int:
    """Conv 3->16 + BN; per stage, n blocks (3x3, BN, 3x3, BN) with parameter-free shortcuts."""
    n = (depth - 2) // 6
    total, c_in = 3 * 16 * 9 + bn(16), 16
    for c_out in (16, 32, 64):
        for b in range(n):
            cin = c_in if b == 0 else c_out
            total += cin * c_out * 9 + bn(c_out) + c_out * c_out * 9 + bn(c_out)
        c_in = c_out
    return total + 64 * classes + classes


@pytest.mark.parametrize(("depth", "k", "expected", "paper"), [
    (16, 2, 691_674, 0.69e6), (10, 1, 77_850, None), (28, 10, 36_479_194, 36.5e6)])
def test_wrn_parameter_count_matches_definition(depth, k, expected, paper):
    assert wrn_params(depth, k) == expected
    model = MODELS["wrn"](CIFAR, 10, depth=depth, width=k)
    assert count(model) == expected
    if paper is not None:
        assert abs(expected - paper) / paper < 0.005
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == depth - 4 + 1  # the paper's depth counts 3x3 convs, classifier and shortcuts


def test_resnet20_parameter_count_matches_he_et_al():
    assert resnet_params(20) == 269_722
    model = MODELS["resnet"](CIFAR, 10, depth=20)
    assert count(model) == 269_722
    assert abs(269_722 - 0.27e6) / 0.27e6 < 0.005
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 19  # + the classifier = 20
    assert count(MODELS["resnet"](CIFAR, 10, depth=56)) == resnet_params(56) == 853_018


def test_resnet_shortcut_is_parameter_free_zero_padding():
    model = MODELS["resnet"](CIFAR, 10, depth=20)
    shortcut = model.get_submodule("blocks.3.shortcut")  # first block of the 32-channel stage
    x = torch.randn(2, 16, 32, 32)
    y = shortcut(x)
    assert y.shape == (2, 32, 16, 16)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()


def test_nos_convnet_parameter_count():
    expected = (3 * 32 * 9 + bn(32)) + (32 * 32 * 9 + bn(32)) + (32 * 32 * 32 * 10 + 10)
    assert count(MODELS["nos-convnet"](CIFAR, 10)) == expected == 337_898


def test_proxprop_mlp_is_3072_4000_1000_4000_10():
    model = MODELS["proxprop-mlp"](CIFAR, 10)
    widths = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert widths == [(3072, 4000), (4000, 1000), (1000, 4000), (4000, 10)]
    assert count(model) == 3072 * 4000 + 4000 + 4000 * 1000 + 1000 + 1000 * 4000 + 4000 \
        + 4000 * 10 + 10 == 20_337_010
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 3


def test_proxprop_convnet_layers_and_count():
    model = MODELS["proxprop-convnet"](CIFAR, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 16, (5, 5), (2, 2)), (16, 20, (5, 5), (2, 2)), (20, 20, (5, 5), (2, 2))]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 2
    expected = (3 * 16 * 25 + 16) + (16 * 20 * 25 + 20) + (20 * 20 * 25 + 20) + (20 * 8 * 8 * 10 + 10)
    assert count(model) == expected == 32_066
    assert model(torch.zeros(2, *CIFAR)).shape == (2, 10)


def test_bad_depths_are_user_errors():
    with pytest.raises(UserError, match="6n\\+4"):
        MODELS["wrn"](CIFAR, 10, depth=15)
    with pytest.raises(UserError, match="6n\\+2"):
        MODELS["resnet"](CIFAR, 10, depth=21)


def test_seeded_dropout_depends_on_build_seed_only():
    def build(seed: int) -> SeededDropout:
        torch.manual_seed(seed)
        return SeededDropout(0.5)

    x = torch.ones(1000)
    a, b, c = build(1), build(1), build(2)
    torch.manual_seed(123)  # the global generator's state does not matter
    mask_a = a(x)
    torch.manual_seed(456)
    assert torch.equal(mask_a, b(x))
    assert not torch.equal(mask_a, c(x))
    assert set(mask_a.unique().tolist()) == {0.0, 2.0}  # kept units are scaled by 1/(1-p)
    assert 400 < int((mask_a > 0).sum()) < 600
    assert torch.equal(a.eval()(x), x)
    assert copy.deepcopy(b).seed == b.seed
