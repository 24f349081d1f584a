"""The optimizer space of Neural Optimizer Search (Bello et al. 2017): its named points
follow the reference formulas, its text, decisions and mutations stay well-typed, its
optimizer resumes and exports exactly."""

from __future__ import annotations

import ast
import copy
import importlib.util
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import metalearn as ml
from metalearn.errors import ParseError
from metalearn.recipe import Recipe
from metalearn.searchspaces.expr import Leaf, depth
from metalearn.searchspaces.optimizer_dsl import NAMED, OptimizerSpace
from metalearn.searchspaces.optimizer_runtime import _decays

SPACE = OptimizerSpace()
STEPS = 200



def network(dtype: torch.dtype = torch.float64) -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(),
                               torch.nn.Linear(12, 3)).to(dtype)


def batch(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(48, 6, generator=g, dtype=dtype), torch.randint(0, 3, (48,), generator=g)


def flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def train(make: Callable[..., torch.optim.Optimizer], steps: int = STEPS,
          dtype: torch.dtype = torch.float64, **options: Any) -> torch.Tensor:
    """Parameters after ``steps`` full-batch steps of ``make(params, **options)``."""
    model = network(dtype)
    optimizer = make(model.parameters(), **options)
    x, y = batch(dtype)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return flat(model)


def train_reference(update: Callable[[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], int],
                                     torch.Tensor], steps: int = STEPS) -> torch.Tensor:
    """The same training with ``w <- update(w, g, state, t)`` written out by hand."""
    model = network()
    x, y = batch()
    states: list[dict[str, torch.Tensor]] = [{} for _ in model.parameters()]
    for t in range(steps):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p, state in zip(model.parameters(), states):
                assert p.grad is not None
                p.copy_(update(p, p.grad, state, t))
    return flat(model)


def build(name: str) -> Callable[..., torch.optim.Optimizer]:
    return SPACE.build(SPACE.named()[name])


# ------------------------------------------------------------- named points vs references


def test_adam_follows_torch_adam() -> None:
    ours = train(build("adam"), dtype=torch.float32, lr=1e-2)
    theirs = train(torch.optim.Adam, dtype=torch.float32, lr=1e-2)
    assert (ours - theirs).abs().max() <= 1e-6
    moved = train(build("adam"), dtype=torch.float32, steps=0)
    assert (ours - moved).abs().max() > 1e-2


def test_adam_with_weight_decay_is_adamw() -> None:
    ours = train(build("adam"), dtype=torch.float32, lr=1e-2, weight_decay=0.5)
    theirs = train(torch.optim.AdamW, dtype=torch.float32, lr=1e-2, weight_decay=0.5)
    plain = train(torch.optim.Adam, dtype=torch.float32, lr=1e-2)
    assert (ours - theirs).abs().max() <= 1e-6
    assert (ours - plain).abs().max() > 1e-3


def test_sgd_and_momentum_follow_torch_sgd() -> None:
    assert (train(build("sgd"), lr=0.1) - train(torch.optim.SGD, lr=0.1)).abs().max() <= 1e-6
    # m = 0.9 m + 0.1 g is heavy-ball momentum scaled by 1 - beta
    ours = train(build("momentum"), lr=0.5)
    theirs = train(torch.optim.SGD, lr=0.05, momentum=0.9)
    assert (ours - theirs).abs().max() <= 1e-6
    assert (ours - train(torch.optim.SGD, lr=0.05)).abs().max() > 1e-3


def test_rmsprop_follows_reference_formula() -> None:
    lr = 1e-2

    def rmsprop(w: torch.Tensor, g: torch.Tensor, s: dict[str, torch.Tensor], t: int) -> torch.Tensor:
        s["v"] = 0.999 * s.get("v", torch.zeros_like(g)) + 0.001 * g * g
        return w - lr * g / (torch.sqrt(s["v"]) + 1e-8)

    ours = train(build("rmsprop"), lr=lr)
    assert (ours - train_reference(rmsprop)).abs().max() <= 1e-6
    assert (ours - train(build("adam"), lr=lr)).abs().max() > 1e-3


def decay(kind: str, t: int, total: int) -> float:
    """The schedules of the later version of the paper, written independently."""
    t = min(t, total)
    if kind == "ld":
        return max(0.0, (total - t) / total)
    if kind == "cd":
        return 0.5 * (1 + math.cos(2 * math.pi * 0.5 * t / total))
    if kind == "rd":
        return 0.5 * (1 + math.cos(math.pi * ((1 * t) % total) / total))
    return 1.0


@pytest.mark.parametrize("rule", ["powersign", "addsign"])
@pytest.mark.parametrize("schedule", ["", "ld", "cd", "rd"])
def test_sign_rules_follow_reference_formulas(rule: str, schedule: str) -> None:
    """PowerSign: e^(f(t) sign(g) sign(m)) g; AddSign: (1 + f(t) sign(g) sign(m)) g;
    m = 0.9 m + 0.1 g updated first, t counted from 0 (TensorFlow's global step)."""
    lr = 0.05

    def update(w: torch.Tensor, g: torch.Tensor, s: dict[str, torch.Tensor], t: int) -> torch.Tensor:
        s["m"] = 0.9 * s.get("m", torch.zeros_like(g)) + 0.1 * g
        agree = decay(schedule, t, STEPS) * torch.sign(g) * torch.sign(s["m"])
        u = math.e ** agree * g if rule == "powersign" else (1 + agree) * g
        return w - lr * u

    name = f"{rule}_{schedule}" if schedule else rule
    ours = train(build(name), lr=lr, total_steps=STEPS)
    assert (ours - train_reference(update)).abs().max() <= 1e-6
    if schedule:  # the schedule matters
        assert (ours - train(build(rule), lr=lr)).abs().max() > 1e-3


def test_lion_follows_reference_formula() -> None:
    lr, wd = 1e-3, 0.1

    def lion(w: torch.Tensor, g: torch.Tensor, s: dict[str, torch.Tensor], t: int) -> torch.Tensor:
        m = s.get("m", torch.zeros_like(g))
        new = w - lr * (torch.sign(0.9 * m + 0.1 * g) + wd * w)
        s["m"] = 0.99 * m + 0.01 * g
        return new

    ours = train(build("lion"), lr=lr, weight_decay=wd)
    assert (ours - train_reference(lion)).abs().max() <= 1e-6


def test_decay_schedules_match_the_paper() -> None:
    total = 100
    for t in (0, 1, 25, 50, 99, 100, 150):
        ld, cd, rd = _decays(t, total)
        for kind, value in zip(("ld", "cd", "rd"), (ld, cd, rd)):
            assert value == pytest.approx(decay(kind, t, total), abs=1e-15), (kind, t)
    assert _decays(0, total) == (1.0, 1.0, 1.0)
    assert _decays(50, total)[0] == 0.5 and _decays(total, total)[:2] == (0.0, 0.0)


def two_step_updates(text: str, lr: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The updates ``-(w_t - w_{t-1}) / lr`` of two steps with fixed gradients, and w_0."""
    w = torch.tensor([0.5, -1.5, 2.0, -0.25, 1.0], dtype=torch.float64, requires_grad=True)
    optimizer = SPACE.build(SPACE.parse(text))([w], lr=lr, total_steps=4)
    updates = []
    for grad in GRADS:
        before = w.detach().clone()
        w.grad = grad.clone()
        optimizer.step()
        updates.append((before - w.detach()) / lr)
    return updates[0], updates[1], torch.tensor([0.5, -1.5, 2.0, -0.25, 1.0], dtype=torch.float64)


GRADS = (torch.tensor([0.3, -0.2, 1.5, -0.01, 0.7], dtype=torch.float64),
         torch.tensor([-0.4, -0.1, 2.0, 0.02, 0.5], dtype=torch.float64))


def full(value: float) -> torch.Tensor:
    return torch.full((5,), value, dtype=torch.float64)


def test_operands_and_functions_follow_their_definitions() -> None:
    """Second-step value of each operand and function, from the definitions in the paper."""
    g1, g = GRADS
    m = 0.9 * (0.1 * g1) + 0.1 * g
    v = 0.999 * (0.001 * g1**2) + 0.001 * g**2
    y = 0.999 * (0.001 * g1**3) + 0.001 * g**3
    m_hat, v_hat = m / (1 - 0.9**2), v / (1 - 0.999**2)
    expected = {
        "g": g, "g2": g**2, "g3": g**3, "m": m, "v": v, "y": y,
        "sign_g": torch.sign(g), "sign_m": torch.sign(m), "1": full(1.0), "2": full(2.0),
        "adam": m_hat / (torch.sqrt(v_hat) + 1e-8), "rmsprop": g / (torch.sqrt(v) + 1e-8),
        "m99": 0.01 * g1,  # Lion's momentum, before this step's update
        # t = 1 of T = 4: ld = 3/4, cd = (1 + cos(2 pi 0.5 / 4)) / 2, rd = (1 + cos(pi / 4)) / 2
        "ld": full(3 / 4), "cd": full(0.5 * (1 + math.cos(math.pi / 4))),
        "rd": full(0.5 * (1 + math.cos(math.pi / 4))),
        "neg(g)": -g, "exp(g)": torch.exp(g), "log(g)": torch.log(g.abs()),
        "sqrt(g)": torch.sqrt(g.abs()), "clip3(g)": g.clamp(-1e-3, 1e-3),
        "clip4(g)": g.clamp(-1e-4, 1e-4), "clip5(g)": g.clamp(-1e-5, 1e-5), "sign(m)": torch.sign(m),
        "add(g, m)": g + m, "sub(g, m)": g - m, "mul(g, m)": g * m, "div(g, m)": g / (m + 1e-8),
        "pow(g2, v)": (g**2) ** v, "left(g, m)": g, "interp(g, m)": 0.9 * g + 0.1 * m,
        "sub(1, g)": 1 - g, "div(2, g)": 2 / (g + 1e-8), "pow(2, g)": 2**g, "interp(1, g)": 0.9 + 0.1 * g,
        "div(g, ld)": g / (0.75 + 1e-8),
    }
    for text, value in expected.items():
        _, second, _ = two_step_updates(text)
        assert torch.allclose(second, value.to(torch.float64), rtol=1e-12, atol=1e-15), text
    for name, scale in (("wd4", 1e-4), ("wd3", 1e-3), ("wd2", 1e-2), ("wd1", 1e-1)):
        first, _, w0 = two_step_updates(name, lr=0.5)
        assert torch.allclose(first, scale * w0, rtol=1e-12), name


def test_noise_and_drop_have_the_stated_distributions() -> None:
    w = torch.zeros(200_000, dtype=torch.float64, requires_grad=True)
    w.grad = torch.ones_like(w)
    generator = torch.Generator().manual_seed(0)
    SPACE.build(SPACE.parse("noise"))([w], lr=1.0, generator=generator).step()
    assert abs(float(w.detach().std()) - 0.01) < 2e-4 and abs(float(w.detach().mean())) < 1e-4
    for rate in (10, 30, 50):
        w = torch.zeros(200_000, dtype=torch.float64, requires_grad=True)
        w.grad = torch.full_like(w, 3.0)
        SPACE.build(SPACE.parse(f"drop{rate}(g)"))([w], lr=1.0, generator=generator).step()
        kept = -w.detach()
        assert set(kept.unique().tolist()) == {0.0, 3.0}  # not rescaled
        assert abs(float((kept == 0).double().mean()) - rate / 100) < 5e-3


# ------------------------------------------------------------- text, decisions, mutation


def test_parse_print_round_trip_of_sampled_rules() -> None:
    rng = np.random.default_rng(0)
    texts = set()
    for _ in range(10_000):
        rule = SPACE.sample(rng)
        text = SPACE.format(rule)
        assert SPACE.parse(text) == rule
        texts.add(text)
    assert len(texts) > 9_000


def test_named_points_are_encodable_points_of_the_space() -> None:
    assert set(NAMED) == {
        "sgd", "momentum", "adam", "rmsprop", "sign_sgd", "powersign", "addsign", "lion",
        *(f"{r}_{d}" for r in ("powersign", "addsign") for d in ("ld", "cd", "rd"))}
    assert SPACE.format(SPACE.named()["powersign"]) == "mul(exp(mul(sign(g), sign(m))), g)"
    keys = set()
    for name, rule in SPACE.named().items():
        assert SPACE.from_decisions(SPACE.to_decisions(rule)) == rule, name
        keys.add(SPACE.key(rule))
    assert len(keys) == len(NAMED)
    assert ml.get_space("optimizer").key(SPACE.parse("mul(exp(mul(sign_m, sign_g)), g)")) \
        == SPACE.key(SPACE.named()["powersign"])


def test_decisions_round_trip_and_always_decode() -> None:
    sizes = SPACE.decisions()
    assert len(sizes) == 77 and max(sizes) == len(SPACE.grammar.operands) + 1
    rng = np.random.default_rng(1)
    for _ in range(1000):
        rule = SPACE.sample(rng)
        assert SPACE.from_decisions(SPACE.to_decisions(rule)) == rule
        decoded = SPACE.from_decisions([int(rng.integers(n)) for n in sizes])
        SPACE.grammar.check(decoded, unit_form=True)
        assert SPACE.from_decisions(SPACE.to_decisions(decoded)) == decoded


def test_mutation_never_returns_an_ill_typed_rule() -> None:
    rng = np.random.default_rng(2)
    rule = SPACE.named()["powersign"]
    for _ in range(2000):
        child = SPACE.mutate(rule, rng)
        SPACE.grammar.check(child, unit_form=True)
        assert depth(child) <= SPACE.max_depth
        assert SPACE.key(child) != SPACE.key(rule)
        rule = child if rng.random() < 0.8 else SPACE.sample(rng)


def test_malformed_text_gives_one_parse_error() -> None:
    cases = {
        "mul(exp(g), ": (12, "an operand (g, g2"),
        "mul(g)": (5, "',' and a second argument of mul"),
        "exp(g, m)": (5, "')' closing exp"),
        "mull(g, m)": (0, "a function (id, neg"),
        "mul(g, m))": (9, "end of text"),
        "mul(g; m)": (5, "an operand, a function"),
        "sign": (4, "'(' after sign"),
    }
    for text, (position, expected) in cases.items():
        with pytest.raises(ParseError) as info:
            SPACE.parse(text)
        assert (info.value.position, info.value.text) == (position, text)
        assert expected in info.value.expected, (text, info.value.expected)
    assert SPACE.parse("  mul( 2 ,g ) ") == SPACE.parse("mul(2, g)")


# ------------------------------------------------------------- the built optimizer


def rule_updates(rule_text: str, steps: int = 20) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    return train(SPACE.build(SPACE.parse(rule_text)), steps=steps, lr=1e-2,
                 total_steps=steps, generator=generator)


def test_rule_and_its_simplified_form_give_the_same_updates() -> None:
    rng = np.random.default_rng(3)
    changed = 0
    hand = ["mul(left(g, noise), add(1, 1))", "sign(left(neg(neg(adam)), drop50(m)))",
            "add(drop30(sign_g), mul(noise, exp(log(2))))", "sub(clip3(clip5(m)), mul(g, 1))"]
    for text in hand + [SPACE.format(SPACE.sample(rng)) for _ in range(40)]:
        rule = SPACE.parse(text)
        simple = SPACE.simplify(rule)
        changed += simple != rule
        a, b = rule_updates(text), rule_updates(SPACE.format(simple))
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12, equal_nan=True), (text, SPACE.format(simple))
    assert changed >= 20
    assert SPACE.format(SPACE.simplify(SPACE.parse(hand[0]))) == "mul(2, g)"
    assert SPACE.format(SPACE.simplify(SPACE.parse(hand[3]))) == "sub(clip5(m), g)"


def test_randomness_comes_from_the_generator() -> None:
    text = "add(mul(noise, 2), drop30(adam))"
    assert torch.equal(rule_updates(text), rule_updates(text))
    other = train(SPACE.build(SPACE.parse(text)), steps=20, lr=1e-2,
                  generator=torch.Generator().manual_seed(8))
    assert not torch.allclose(rule_updates(text), other)


def test_only_the_running_averages_used_are_kept() -> None:
    expected = {"sgd": {"step"}, "powersign_cd": {"step", "m"}, "adam": {"step", "m", "v"},
                "rmsprop": {"step", "v"}, "lion": {"step", "m99"}}
    for name, keys in expected.items():
        model = network()
        optimizer = build(name)(model.parameters(), total_steps=10)
        model(batch()[0]).sum().backward()
        optimizer.step()
        assert set(optimizer.state[next(model.parameters())]) == keys, name
    left = SPACE.build(SPACE.parse("left(g, add(y, m))"))(network().parameters())
    assert left.buffer_names == ()  # type: ignore[attr-defined]


def test_state_dict_save_and_load_resumes_identically() -> None:
    rule = SPACE.parse("add(mul(drop30(adam), cd), mul(noise, add(m99, y)))")
    x, y = batch()

    def steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, n: int) -> None:
        for _ in range(n):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()

    model, generator = network(), torch.Generator().manual_seed(3)
    optimizer = SPACE.build(rule)(model.parameters(), lr=1e-2, total_steps=20, generator=generator)
    steps(model, optimizer, 10)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "generator": generator.get_state()}, buffer)
    steps(model, optimizer, 10)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_model, resumed_generator = network(), torch.Generator()
    resumed_model.load_state_dict(saved["model"])
    resumed_generator.set_state(saved["generator"])
    resumed = SPACE.build(rule)(resumed_model.parameters(), lr=1e-2, total_steps=20,
                                generator=resumed_generator)
    resumed.load_state_dict(saved["optimizer"])
    steps(resumed_model, resumed, 10)
    assert torch.equal(flat(model), flat(resumed_model))
    assert not torch.equal(flat(model), saved["model"]["0.weight"].flatten())


def test_param_groups_lr_schedulers_and_recipe_keywords() -> None:
    model = network()
    first, second = model[0], model[2]
    recipe = Recipe(optimizer=build("sgd"), hparams={"lr": 0.1, "momentum": 0.9,
                                                     "weight_decay": 0.0})
    optimizer = recipe.make_optimizer(model.parameters(), total_steps=5)
    assert isinstance(optimizer, torch.optim.Optimizer)
    optimizer = build("sgd")([{"params": first.parameters(), "lr": 0.1},
                              {"params": second.parameters(), "lr": 0.0}], momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    x, y = batch()
    for lr in (0.1, 0.05, 0.025):
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        scheduler.step()
        after = list(model.parameters())
        assert after[0].grad is not None
        assert torch.allclose(after[0], before[0] - lr * after[0].grad, rtol=0, atol=1e-15)
        assert torch.equal(after[2], before[2])  # lr 0


def test_schedules_need_total_steps() -> None:
    with pytest.raises(ValueError, match="total_steps"):
        build("powersign_ld")(network().parameters())
    build("powersign")(network().parameters())


def test_build_is_picklable_and_registered() -> None:
    import pickle

    space = ml.get_space("optimizer")
    assert isinstance(space, OptimizerSpace)
    factory = pickle.loads(pickle.dumps(space.build(space.named()["lion"])))
    assert factory.rule == space.named()["lion"]


# ------------------------------------------------------------- export


def load_exported(source: str, path: Path) -> Callable[..., torch.optim.Optimizer]:
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cls: Callable[..., torch.optim.Optimizer] = module.DiscoveredOptimizer
    return cls


def test_exported_file_trains_along_the_same_trajectory(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    rules = list(SPACE.named().values()) + [SPACE.sample(rng) for _ in range(25)]
    rules.append(SPACE.parse("sub(div(2, drop10(g)), interp(1, noise))"))
    for i, rule in enumerate(rules):
        source = SPACE.export_source(rule)
        tree = ast.parse(source)
        imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert [alias.name for n in imports for alias in n.names] == ["torch"]
        assert SPACE.format(rule) in (ast.get_docstring(tree) or "")
        exported = load_exported(source, tmp_path / f"exported_{i}.py")
        options = {"lr": 1e-2, "weight_decay": 0.01, "total_steps": 15}
        ours = train(SPACE.build(rule), steps=15, dtype=torch.float32,
                     generator=torch.Generator().manual_seed(5), **options)
        theirs = train(exported, steps=15, dtype=torch.float32,
                       generator=torch.Generator().manual_seed(5), **options)
        same = (ours == theirs) | (ours.isnan() & theirs.isnan())
        assert bool(same.all()), SPACE.format(rule)
    powersign = SPACE.export_source(SPACE.named()["powersign"])
    assert "u = torch.exp(torch.sign(g) * torch.sign(m)) * g" in powersign


def test_exported_optimizer_state_is_interchangeable(tmp_path: Path) -> None:
    rule = SPACE.named()["adam"]
    exported = load_exported(SPACE.export_source(rule), tmp_path / "adam_export.py")
    model = network()
    built = SPACE.build(rule)(model.parameters())
    model(batch()[0]).sum().backward()
    built.step()
    other = exported(copy.deepcopy(model).parameters())
    other.load_state_dict(built.state_dict())
    assert set(other.state_dict()["state"][0]) == {"step", "m", "v"}


def test_search_strategies_use_the_space(tmp_path: Path) -> None:
    """Random search and evolution run on the space through the protocol alone."""
    for strategy in ("random", "evolution"):
        run = ml.search(space="optimizer", strategy=strategy, task="mnist1d-mlp", budget=4,
                        steps=3, run=tmp_path / strategy, progress=False, init=["adam"],
                        strategy_options={"population_size": 2, "tournament_size": 2}
                        if strategy == "evolution" else {})
        frame = run.to_pandas()
        assert len(frame) == 4 and frame["candidate"].iloc[0] == "adam"
        for text in frame["candidate"]:
            SPACE.grammar.check(SPACE.resolve(text))
    assert Leaf("adam") == SPACE.named()["adam"]


@pytest.mark.gpu
def test_rules_on_cuda_follow_torch_and_are_reproducible() -> None:
    device = torch.device("cuda")
    model, x, y = network(torch.float32).to(device), *(t.to(device) for t in batch(torch.float32))

    def run(make: Callable[..., torch.optim.Optimizer], **options: Any) -> torch.Tensor:
        net = copy.deepcopy(model)
        optimizer = make(net.parameters(), **options)
        for _ in range(50):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
        return flat(net)

    assert (run(build("adam"), lr=1e-2) - run(torch.optim.Adam, lr=1e-2)).abs().max() <= 1e-6
    noisy = SPACE.build(SPACE.parse("add(mul(noise, 2), drop30(adam))"))
    first = run(noisy, lr=1e-2, generator=torch.Generator(device).manual_seed(1))
    again = run(noisy, lr=1e-2, generator=torch.Generator(device).manual_seed(1))
    assert torch.equal(first, again)
