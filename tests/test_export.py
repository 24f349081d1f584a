"""Exported files run in a fresh process with torch alone and behave like the built candidate."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

import metalearn as ml
from metalearn.export import export_candidate
from metalearn.recipe import Recipe

# run a script with ``metalearn`` made unimportable: the exported file must need torch alone
FRESH = """
import importlib.util, sys
sys.modules["metalearn"] = None
spec = importlib.util.spec_from_file_location("exported", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
"""


def fresh(script: str, *args: str | Path) -> None:
    """Run ``FRESH + script`` (which sees ``module`` and ``sys.argv``) in a new interpreter."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", FRESH + script, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def loss_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(64, 10, generator=generator) * 3, torch.randint(0, 10, (64,), generator=generator)


def test_exported_loss_equals_the_built_loss_bit_for_bit(tmp_path: Path) -> None:
    space = ml.get_space("loss")
    genome = space.sample(np.random.default_rng(7))
    path = tmp_path / "loss.py"
    path.write_text(export_candidate("loss", space.format(genome)))
    logits, targets = loss_inputs()
    torch.save({"logits": logits, "targets": targets}, tmp_path / "inputs.pt")
    fresh("""
import torch
inputs = torch.load(sys.argv[2], weights_only=True)
logits = inputs["logits"].requires_grad_()
loss = module.TaylorGLOLoss()(logits, inputs["targets"])
loss.backward()
torch.save({"loss": loss.detach(), "grad": logits.grad}, sys.argv[3])
""", path, tmp_path / "inputs.pt", tmp_path / "out.pt")
    theirs = torch.load(tmp_path / "out.pt", weights_only=True)
    logits.requires_grad_()
    ours = space.build(genome)(logits, targets)
    ours.backward()
    assert torch.equal(theirs["loss"], ours.detach())
    assert logits.grad is not None and torch.equal(theirs["grad"], logits.grad)


def sgd_trajectory(make_optimizer, steps: int = 5) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    """Parameters after each of ``steps`` optimizer steps on a fixed quadratic."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(4, 3))
    optimizer = make_optimizer([weight])
    out = []
    for _ in range(steps):
        optimizer.zero_grad()
        (weight ** 2).sum().backward()
        optimizer.step()
        out.append(weight.detach().clone())
    return out


TRAJECTORY = """
import torch
torch.manual_seed(0)
weight = torch.nn.Parameter(torch.randn(4, 3))
optimizer = module.make_optimizer([weight])
out = []
for _ in range(5):
    optimizer.zero_grad()
    (weight ** 2).sum().backward()
    optimizer.step()
    out.append(weight.detach().clone())
torch.save({"trajectory": torch.stack(out), "hparams": torch.tensor(
    [module.HPARAMS["lr"], module.HPARAMS["momentum"], module.HPARAMS["weight_decay"]],
    dtype=torch.float64)}, sys.argv[2])
"""


def test_exported_hparams_train_like_the_recipe_they_fill(tmp_path: Path) -> None:
    space = ml.get_space("hparams")
    genome = space.sample(np.random.default_rng(3))
    path = tmp_path / "hparams.py"
    path.write_text(export_candidate("hparams", space.format(genome)))
    fresh(TRAJECTORY, path, tmp_path / "out.pt")
    theirs = torch.load(tmp_path / "out.pt", weights_only=True)
    built = space.build(genome)
    expected = torch.tensor([built["lr"], built["momentum"], built["weight_decay"]],
                            dtype=torch.float64)
    assert torch.equal(theirs["hparams"], expected)
    recipe = space.fill(Recipe(), genome)
    ours = sgd_trajectory(lambda params: recipe.make_optimizer(params, total_steps=5))
    assert torch.equal(theirs["trajectory"], torch.stack(ours))
    assert not torch.equal(ours[0], ours[-1]), "the trajectory moves"


def test_exported_product_holds_both_parts(tmp_path: Path) -> None:
    space = ml.get_space("hparams+loss")
    genome = space.sample(np.random.default_rng(11))
    path = tmp_path / "both.py"
    path.write_text(export_candidate("hparams+loss", space.format(genome)))
    logits, targets = loss_inputs()
    torch.save({"logits": logits, "targets": targets}, tmp_path / "inputs.pt")
    fresh(TRAJECTORY.replace("sys.argv[2]", "sys.argv[3]") + """
inputs = torch.load(sys.argv[2], weights_only=True)
torch.save(module.TaylorGLOLoss()(inputs["logits"], inputs["targets"]), sys.argv[4])
""", path, tmp_path / "inputs.pt", tmp_path / "opt.pt", tmp_path / "loss.pt")
    recipe = space.fill(Recipe(), genome)
    ours = sgd_trajectory(lambda params: recipe.make_optimizer(params, total_steps=5))
    assert torch.equal(torch.load(tmp_path / "opt.pt", weights_only=True)["trajectory"],
                       torch.stack(ours))
    assert torch.equal(torch.load(tmp_path / "loss.pt", weights_only=True),
                       recipe.loss(logits, targets))


def test_product_export_refuses_parts_that_would_disagree() -> None:
    if "optimizer" not in ml.list_spaces():
        pytest.skip("optimizer space not available")
    space = ml.get_space("hparams+optimizer")
    genome = space.sample(np.random.default_rng(0))
    with pytest.raises(ml.UserError, match="separately"):
        export_candidate("hparams+optimizer", space.format(genome))


def test_every_space_exports_a_file_that_imports_with_torch_alone(tmp_path: Path) -> None:
    paths = []
    # the project's spaces (other tests may register spaces of their own in this process)
    for name in [n for n in ("backprop", "optimizer", "loss", "hparams") if n in ml.list_spaces()]:
        space = ml.get_space(name)
        genome = space.sample(np.random.default_rng(1))
        path = tmp_path / f"{name}.py"
        path.write_text(export_candidate(name, space.format(genome)))
        tree = ast.parse(path.read_text())
        roots = {alias.name.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.Import) for alias in node.names}
        roots |= {node.module.split(".")[0] for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and node.module}
        assert roots - {"torch", "__future__"} <= set(sys.stdlib_module_names), (name, roots)
        paths.append(path)
    fresh("""
for path in sys.argv[2:]:
    spec = importlib.util.spec_from_file_location("m", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
""", paths[0], *paths)


@pytest.mark.slow
def test_export_command_writes_the_best_candidate_of_a_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_cli("search", "--space", "loss", "--strategy", "random", "--budget", "3", "--steps", "20",
            "--run", str(run), "--no-progress", check=True)
    best = ml.load_run(run).best(k=1).iloc[0]
    run_cli("export", str(run), "-o", str(tmp_path / "best.py"), check=True)
    source = (tmp_path / "best.py").read_text()
    space = ml.get_space("loss")
    assert source == space.export_source(space.parse(best["candidate"]))
