"""Backward rules built from the DSL equal autograd and the defining formulas of their papers."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metalearn.registry import get_space
from metalearn.searchspaces.backprop_layers import BackpropRule, RuleConv2d, RuleLinear

SPACE = get_space("backprop")



def rule(text: str) -> BackpropRule:
    built = SPACE.build(SPACE.resolve(text))
    assert isinstance(built, BackpropRule)
    return built


def grad(t: torch.Tensor) -> torch.Tensor:
    assert t.grad is not None
    return t.grad


def mlp(seed: int = 0) -> Any:  # Any: tests read the converted layers' buffers
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(),
                         nn.Linear(8, 5))


def convnet(seed: int = 0) -> Any:
    """Strides, padding, dilation, no bias, a reflect-padded and a 'same' convolution."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.Tanh(),
        nn.Conv2d(6, 6, 3, padding=2, dilation=2, bias=False), nn.Tanh(),
        nn.Conv2d(6, 4, (3, 2), stride=(1, 2), padding=(1, 0), padding_mode="reflect"), nn.Tanh(),
        nn.Conv2d(4, 4, 3, padding="same"), nn.Tanh(),
        nn.Flatten(), nn.Linear(4 * 4 * 2, 5),
    )


Observe = Callable[[torch.Tensor], None]


def grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, observe: Observe | None = None
          ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x = x.clone().requires_grad_()
    logits = model(x)
    if observe is not None:
        observe(logits)
    F.cross_entropy(logits, y).backward()
    return grad(x), [grad(p).clone() for p in model.parameters()]


@pytest.mark.parametrize("make, shape", [(mlp, (32, 12)), (convnet, (8, 3, 8, 8))])
@pytest.mark.parametrize("text", ["backprop", "max(apply(d, W), apply(d, W))"])
def test_backprop_rule_equals_autograd(make: Callable[[], nn.Module], shape: tuple[int, ...],
                                       text: str) -> None:
    # the second text avoids the fast path: the general evaluator must be exact too
    reference, model = make(), make()
    converted = rule(text)
    converted.apply(model, torch.Generator().manual_seed(1))
    assert sum(isinstance(m, (RuleLinear, RuleConv2d)) for m in model.modules()) >= 3
    x, y = torch.randn(*shape), torch.randint(0, 5, (shape[0],))
    gx_ref, gp_ref = grads(reference, x, y)
    gx, gp = grads(model, x, y, converted.observe_output)
    torch.testing.assert_close(gx, gx_ref, atol=1e-6, rtol=0)
    for g, g_ref in zip(gp, gp_ref, strict=True):
        torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=0)


Feedback = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def _manual_mlp_grads(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, feedback: Feedback
                      ) -> list[torch.Tensor]:
    """Weight/bias gradients of a Tanh MLP whose layer i sends ``feedback(i, d, e)`` below."""
    layers = [m for m in model if isinstance(m, nn.Linear)]
    hs, zs = [x], []  # inputs and pre-activations of each layer
    for i, layer in enumerate(layers):
        zs.append(hs[-1] @ layer.weight.detach().t() + layer.bias.detach())
        if i < len(layers) - 1:
            hs.append(torch.tanh(zs[-1]))
    logits = zs[-1].clone().requires_grad_()
    F.cross_entropy(logits, y).backward()
    e = grad(logits)
    out: list[torch.Tensor] = []
    d = e
    for i in reversed(range(len(layers))):
        out = [d.t() @ hs[i], d.sum(0)] + out
        if i > 0:  # the signal to the layer below, then through tanh'
            d = feedback(i, d, e) * (1 - torch.tanh(zs[i - 1]) ** 2)
    return out


@pytest.mark.parametrize("name", ["feedback_alignment", "sign_symmetry",
                                  "direct_feedback_alignment"])
def test_rule_matches_its_defining_formula(name: str) -> None:
    model = mlp(3)
    converted = rule(name)
    converted.apply(model, torch.Generator().manual_seed(5))
    layers: list[Any] = [m for m in model if isinstance(m, nn.Linear)]
    x, y = torch.randn(32, 12), torch.randint(0, 5, (32,))
    _, got = grads(model, x, y, converted.observe_output)  # D is drawn at the first step

    def feedback(i: int, d: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        if name == "feedback_alignment":  # Lillicrap et al.: d @ B with B fixed random
            return d @ layers[i].feedback_G
        if name == "sign_symmetry":  # Liao et al.: d @ sign(W)
            return d @ layers[i].weight.detach().sign()
        return e @ layers[i].feedback_D  # Nokland: every hidden layer gets e @ B_i

    want = _manual_mlp_grads(model, x, y, feedback)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)
    # and the rule is not backprop in disguise
    _, bp = grads(mlp(3), x, y)
    assert (got[0] - bp[0]).abs().max() > 1e-3


def test_fixed_matrices_are_gaussian_at_the_weights_scale() -> None:
    model = nn.Linear(400, 300)
    rule("feedback_alignment").apply(model, torch.Generator().manual_seed(0))
    w, g = model.weight.detach(), model.get_buffer("feedback_G")
    assert g.shape == w.shape and not torch.equal(g, w)
    assert abs(float(g.std()) / float(w.std()) - 1) < 0.02
    assert abs(float(g.mean())) < 0.01 * float(w.std())
    model = nn.Linear(400, 300)
    rule("apply(d, S)").apply(model, torch.Generator().manual_seed(0))
    s = model.get_buffer("feedback_S")
    assert torch.allclose(s.abs(), model.weight.detach().std().expand_as(s))
    assert 0.45 < float((s > 0).float().mean()) < 0.55


def test_direct_feedback_on_convolutions_reaches_each_layer() -> None:
    model = convnet(1)
    converted = rule("direct_feedback_alignment")
    converted.apply(model, torch.Generator().manual_seed(2))
    convs: list[Any] = [m for m in model.modules() if isinstance(m, RuleConv2d)]
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
    # the output of conv 0 is the input of conv 1: its gradient must be (e @ D1) * tanh'
    captured: dict[str, torch.Tensor] = {}
    convs[1].register_full_backward_hook(lambda m, gi, go: captured.update(gi=gi[0]))
    logits = model(x)
    converted.observe_output(logits)
    logits.retain_grad()
    F.cross_entropy(logits, y).backward()
    d1 = convs[1].feedback_D
    assert d1.shape == (5, 6, 4, 4)
    want = (grad(logits) @ d1.flatten(1)).view(8, 6, 4, 4)
    torch.testing.assert_close(captured["gi"], want, atol=1e-6, rtol=1e-5)
    assert convs[0].feedback_D.numel() == 0  # the first layer sends nothing below


def test_rule_needing_e_without_observe_output_fails_clearly() -> None:
    model = mlp()
    rule("direct_feedback_alignment").apply(model)
    loss = model(torch.randn(4, 12)).sum()
    with pytest.raises(RuntimeError, match="observe_output"):
        loss.backward()


def test_fixed_matrices_are_saved_and_restored_with_the_model_state() -> None:
    converted = rule("add(direct(e, D), apply(d, add(G, S)))")
    model = mlp(0)
    converted.apply(model, torch.Generator().manual_seed(0))
    x, y = torch.randn(16, 12), torch.randint(0, 5, (16,))
    grads(model, x, y, converted.observe_output)
    state = model.state_dict()
    assert {"2.feedback_G", "2.feedback_S", "2.feedback_D"} <= set(state)
    # a fresh model converted with another generator, loaded before its first step
    other, again = mlp(0), rule("add(direct(e, D), apply(d, add(G, S)))")
    again.apply(other, torch.Generator().manual_seed(99))
    assert not torch.equal(other[2].feedback_G, model[2].feedback_G)
    other.load_state_dict(state)
    for key in ("2.feedback_G", "2.feedback_S", "2.feedback_D", "4.feedback_D"):
        assert torch.equal(other.state_dict()[key], state[key])
    model.zero_grad()
    _, g1 = grads(model, x, y, converted.observe_output)
    _, g2 = grads(other, x, y, again.observe_output)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_a_checkpoint_made_under_another_rule_loads() -> None:
    """Population-based training continues a member's weights under a mutated rule."""
    from metalearn.searchspaces.proxprop import ProxPropRule

    source = convnet(0)
    rule("add(apply(d, G), apply(d, S))").apply(source, torch.Generator().manual_seed(0))
    state = source.state_dict()
    target = convnet(1)
    converted = rule("add(direct(e, D), apply(d, G))")
    converted.apply(target, torch.Generator().manual_seed(1))
    own_d = target[0].feedback_D
    target.load_state_dict(state)  # strict: no missing or unexpected keys
    assert torch.equal(target[2].weight, source[2].weight)
    assert torch.equal(target[2].feedback_G, source[2].feedback_G)  # shared operand: loaded
    assert "feedback_S" not in dict(target[2].named_buffers())
    assert target[0].feedback_D is own_d  # not in the checkpoint: this rule's own
    plain = convnet(2)
    ProxPropRule("cg3").apply(plain)
    plain.load_state_dict(state)
    assert torch.equal(plain[0].weight, source[0].weight)
    source.load_state_dict(plain.state_dict())


def test_R_is_fresh_each_step_and_reproducible_from_the_generator() -> None:
    def signals(seed: int) -> list[torch.Tensor]:
        model = mlp(0)
        rule("apply(d, R)").apply(model, torch.Generator().manual_seed(seed))
        x, y = torch.randn(8, 12, generator=torch.Generator().manual_seed(0)), torch.zeros(8).long()
        return [grads(model, x, y)[1][0] for _ in range(2)]

    a, b = signals(0), signals(0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.allclose(a[0], a[1])  # R was redrawn between the two steps
    assert not torch.allclose(a[0], signals(1)[0])


def test_R_read_twice_in_one_step_is_one_matrix() -> None:
    model = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 3))
    rule("sub(apply(d, R), apply(d, R))").apply(model)
    x = torch.randn(5, 6, requires_grad=True)
    model(x).sum().backward()
    assert torch.equal(grad(x), torch.zeros_like(grad(x)))


@pytest.mark.parametrize("fn, formula", [
    ("neg", lambda v: -v),
    ("abs", torch.abs),
    ("square", torch.square),
    ("sign", torch.sign),
    ("clip", lambda v: v.clamp(-1, 1)),
    ("normalize", lambda v: v / v.pow(2).mean().sqrt()),
    ("batchnorm", lambda v: (v - v.mean(0)) / (v.var(0, unbiased=False) + 1e-5).sqrt()),
])
def test_unary_functions_match_their_formulas(
        fn: str, formula: Callable[[torch.Tensor], torch.Tensor]) -> None:
    torch.manual_seed(0)
    model: Any = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 3))
    rule(f"{fn}(apply(d, W))").apply(model)
    x = torch.randn(7, 6, requires_grad=True)
    upstream = torch.randn(7, 3) * 3
    model(x).backward(upstream)
    d = formula(upstream @ model[1].weight.detach())  # what layer 1 sends to layer 0
    want = formula(d @ model[0].weight.detach())
    torch.testing.assert_close(grad(x), want, atol=1e-5, rtol=1e-5)


def test_dropout_and_noise_follow_their_definitions() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(200, 300)
    rule("dropout(apply(d, W))").apply(layer, torch.Generator().manual_seed(0))
    x = torch.randn(100, 200, requires_grad=True)
    upstream = torch.randn(100, 300)
    layer(x).backward(upstream)
    clean = upstream @ layer.weight.detach()
    dropped = grad(x) == 0
    assert 0.09 < float(dropped.float().mean()) < 0.11
    torch.testing.assert_close(grad(x)[~dropped], clean[~dropped] / 0.9)
    layer = nn.Linear(200, 300)
    rule("noise(apply(d, W))").apply(layer, torch.Generator().manual_seed(0))
    x.grad = None
    layer(x).backward(upstream)
    clean = upstream @ layer.weight.detach()
    ratio = float((grad(x) - clean).std() / clean.pow(2).mean().sqrt())
    assert 0.095 < ratio < 0.105


def test_conversion_is_in_place_on_nested_models_and_keeps_parameters() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, padding=1)
            self.heads: Any = nn.ModuleDict({"a": nn.Linear(3 * 4 * 4, 5)})

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.heads["a"](self.conv(x).flatten(1))  # type: ignore[no-any-return]

    model: Any = Block()
    before = {name: id(p) for name, p in model.named_parameters()}
    reference = copy.deepcopy(model)
    result = rule("backprop").apply(model, torch.Generator())
    assert id(result) == id(model)  # in place
    assert isinstance(model.conv, RuleConv2d) and isinstance(model.heads["a"], RuleLinear)
    assert {name: id(p) for name, p in model.named_parameters()} == before
    x = torch.randn(2, 2, 4, 4)
    torch.testing.assert_close(model(x), reference(x))
    # converting again (to another rule) replaces the first rule's state and buffers
    rule("feedback_alignment").apply(model, torch.Generator())
    assert "feedback_G" in dict(model.conv.named_buffers())


def test_linear_on_sequences_flattens_leading_dims() -> None:
    torch.manual_seed(0)
    reference = nn.Linear(6, 4)
    model = copy.deepcopy(reference)
    rule("backprop").apply(model)
    x3 = torch.randn(3, 5, 6, requires_grad=True)
    x3r = x3.detach().clone().requires_grad_()
    model(x3).square().sum().backward()
    reference(x3r).square().sum().backward()
    torch.testing.assert_close(grad(x3), grad(x3r), atol=1e-6, rtol=0)
    torch.testing.assert_close(grad(model.weight), grad(reference.weight), atol=1e-5, rtol=1e-6)


@pytest.mark.gpu
def test_backprop_rule_equals_autograd_on_cuda() -> None:
    reference, model = convnet().cuda(), convnet().cuda()
    converted = rule("backprop")
    converted.apply(model, torch.Generator(device="cuda").manual_seed(0))
    x, y = torch.randn(8, 3, 8, 8, device="cuda"), torch.randint(0, 5, (8,), device="cuda")
    gx_ref, gp_ref = grads(reference, x, y)
    gx, gp = grads(model, x, y, converted.observe_output)
    torch.testing.assert_close(gx, gx_ref, atol=1e-5, rtol=1e-5)
    for g, g_ref in zip(gp, gp_ref, strict=True):
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5)
    fa = rule("add(direct(e, D), apply(noise(d), R))")
    fa.apply(model, torch.Generator(device="cuda").manual_seed(0))
    _, gp = grads(model, x, y, fa.observe_output)
    assert all(bool(torch.isfinite(g).all()) for g in gp)
