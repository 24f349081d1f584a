"""Run on Ray: the same search, its jobs spread over a Ray cluster's workers."""

import os

import metalearn as ml
from metalearn.executors import EXECUTORS

TINY = os.environ.get("METALEARN_TUTORIAL_TINY") == "1"

# Without an address a local Ray cluster is started for the search and stopped after
# it; with executor_options={"address": "HOST:PORT"} the search joins a running
# cluster (`ray start --head` on one machine, `ray start --address HOST:PORT` on the
# others; every node needs metalearn and the datasets). The driver alone writes the
# ledger, so a search on Ray resumes like any other.
run = ml.search(
    space="optimizer",
    strategy="evolution",
    task="mnist1d-mlp",
    budget=4 if TINY else 200,
    steps=30 if TINY else 2000,
    run="runs/tutorial-ray",
    executor="ray",
    executor_options={"workers": 2},  # jobs in flight at once (default: the cluster's CPUs)
    strategy_options={"population_size": 4 if TINY else 20, "tournament_size": 2},
    progress=not TINY,
)
frame = run.to_pandas()
print(frame.groupby("status").size())
print(run.best(k=3)[["candidate", "fitness", "device"]])
assert len(frame) == (4 if TINY else 200)

# Population batching (several candidates trained as one vmapped model on one GPU) and
# a process pool on one machine are executors too: executor="batched" or "pool".
print(sorted(EXECUTORS))
