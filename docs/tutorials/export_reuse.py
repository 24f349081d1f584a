"""Export a discovery and reuse it in plain PyTorch, without metalearn."""

import importlib.util
import os

import torch

import metalearn as ml
from metalearn.export import export_run

TINY = os.environ.get("METALEARN_TUTORIAL_TINY") == "1"
BUDGET, STEPS = (3, 30) if TINY else (30, 1000)

# Two small searches: a loss (TaylorGLO, CMA-ES) and an optimizer (Bello et al.'s DSL,
# regularized evolution seeded with known optimizers).
loss_run = ml.search(space="loss", strategy="cmaes", task="mnist1d-mlp", budget=BUDGET,
                     steps=STEPS, run="runs/tutorial-export-loss", progress=not TINY)
opt_run = ml.search(space="optimizer", strategy="evolution", task="mnist1d-mlp", budget=BUDGET,
                    steps=STEPS, run="runs/tutorial-export-optimizer",
                    init=["adam", "powersign", "addsign"], progress=not TINY)

# `metalearn export RUN -o FILE` does the same: the best candidate as a .py file that
# depends on torch alone.
export_run(loss_run.path, "discovered_loss.py")
export_run(opt_run.path, "discovered_optimizer.py")
print(open("discovered_optimizer.py").read()[:600])


def load(path):
    """Import a file by path, as you would after copying it into your project."""
    spec = importlib.util.spec_from_file_location(path.removesuffix(".py"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


loss_fn = load("discovered_loss.py").TaylorGLOLoss()
Optimizer = load("discovered_optimizer.py").DiscoveredOptimizer

# A plain PyTorch training loop on MNIST-1D with both discoveries in it.
data = ml.get_task("mnist1d-mlp").load_data()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(40, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
optimizer = Optimizer(model.parameters(), lr=0.01, total_steps=STEPS)
for _ in range(STEPS):
    index = torch.randint(0, len(data.y_train), (128,))
    loss = loss_fn(model(data.x_train[index]), data.y_train[index])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
with torch.no_grad():
    accuracy = (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
print(f"test accuracy with the discovered loss and optimizer: {accuracy:.3f}")

# The exported loss is the searched loss, number for number.
space = ml.get_space("loss")
built = space.build(space.parse(loss_run.best(k=1).iloc[0]["candidate"]))
logits, targets = torch.randn(8, 10), torch.arange(8)
assert torch.equal(loss_fn(logits, targets), built(logits, targets))
