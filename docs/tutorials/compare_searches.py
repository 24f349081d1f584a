"""Compare the three kinds of search: which one pays off on this task?"""

import os

import pandas as pd

import metalearn as ml

TINY = os.environ.get("METALEARN_TUTORIAL_TINY") == "1"

# One search per space with the same task, budget and seed; the best candidates of
# each are retrained with several seeds and scored on the test split, next to the
# task's default recipe. Everything lands in `out` and resumes when run again.
result = ml.compare(
    task="mnist1d-mlp",
    out="runs/tutorial-compare",
    spaces=["backprop", "optimizer", "loss"],
    budget=2 if TINY else 30,        # evaluations per space
    steps=30 if TINY else None,      # steps of a search job (default: a quarter of the task's)
    retrain_steps=60 if TINY else None,  # steps of a retraining job (default: the task's)
    seeds=2 if TINY else 3,          # retraining seeds per candidate
    top=1 if TINY else 2,            # candidates of each space to retrain
    progress=not TINY,
)

print(result.table[["space", "strategy", "test_mean", "test_std", "delta_vs_baseline"]])
print("pays off most:", result.winner)
print("open", result.files["report.html"])

# The CSV behind the report holds the same numbers.
table = pd.read_csv(result.files["comparison.csv"])
assert table["space"].tolist() == ["backprop", "optimizer", "loss", "baseline"]
