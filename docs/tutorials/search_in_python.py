"""Choose a space and a strategy in Python, search, and read the results back."""

import os

import metalearn as ml

# The test suite runs every tutorial with METALEARN_TUTORIAL_TINY=1: same code, tiny budgets.
TINY = os.environ.get("METALEARN_TUTORIAL_TINY") == "1"
BUDGET, STEPS = (3, 50) if TINY else (30, 500)

# What can be searched, how, and on what.
print("spaces:    ", ml.list_spaces())
print("strategies:", ml.list_strategies())
print("tasks:     ", ml.list_tasks())

# A space proposes values for one slot of the training recipe. Its named points are
# the known ones: here cross-entropy's Taylor expansion, a point of TaylorGLO's space.
space = ml.get_space("loss")
cross_entropy = space.named()["cross_entropy_taylor"]
print(space.format(cross_entropy))

# Search TaylorGLO losses with CMA-ES on MNIST-1D. Every evaluation goes to the run
# folder's ledger; the same call with the same folder resumes (or returns at once).
run = ml.search(
    space="loss",
    strategy="cmaes",
    task="mnist1d-mlp",
    budget=BUDGET,
    steps=STEPS,                     # training steps of each evaluation (default: the task's)
    run="runs/tutorial-loss",
    seed=0,
    init=["cross_entropy_taylor"],   # evaluate the known point first
    device="cpu",
    progress=not TINY,
)

frame = run.to_pandas()              # one row per evaluation
print(frame[["name", "status", "fitness", "wall_s"]])
best = run.best(k=1).iloc[0]
print(f"best validation accuracy {best['fitness']:.4f}: {best['candidate']}")

# The same evaluation by hand: parse the text, fill the task's recipe, train, evaluate.
task = ml.get_task("mnist1d-mlp")
recipe = space.fill(task.default_recipe(), space.parse(best["candidate"]))
metrics = task.run(recipe, seed=0, steps=STEPS, device="cpu")
print(f"retrained by hand: {metrics['accuracy']:.4f}")
assert metrics["accuracy"] == best["fitness"], "a job is reproducible from its seed"
