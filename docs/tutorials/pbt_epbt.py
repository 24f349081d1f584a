"""PBT and EPBT: schedules of hyperparameters (and losses) learned during one training run."""

import os

import metalearn as ml
from metalearn.report_pbt import format_schedule, plot_schedule, schedule

TINY = os.environ.get("METALEARN_TUTORIAL_TINY") == "1"
POPULATION, INTERVALS = (3, 2) if TINY else (8, 10)
STEPS = 40 if TINY else 2000          # the whole training of a member, split into intervals

# Population-based training (Jaderberg et al. 2017): members train side by side; after
# every interval the worst copy the weights of the best (exploit, by continuing from
# their checkpoint) and perturb their hyperparameters (explore). Each interval of each
# member is one job, so the budget is population x intervals.
pbt = ml.search(
    space="hparams",
    strategy="pbt",
    task="mnist1d-mlp",
    budget=POPULATION * INTERVALS,
    steps=STEPS,
    run="runs/tutorial-pbt",
    strategy_options={"population_size": POPULATION, "intervals": INTERVALS},
    progress=not TINY,
)
table = schedule(pbt.path)            # one row per interval of each member
print(format_schedule(table))
assert len(table) == POPULATION * INTERVALS
assert table["step"].max() == STEPS   # the last interval ends at the whole length

# EPBT (Liang, Gonzalez & Miikkulainen 2020) evolves hyperparameters *and* the TaylorGLO
# loss during training: elites, tournaments, crossover and mutation between intervals.
# Its genome is the product space hparams+loss, so each member's loss changes over time.
epbt = ml.search(
    space="hparams+loss",
    strategy="epbt",
    task="mnist1d-mlp",
    budget=POPULATION * INTERVALS,
    steps=STEPS,
    run="runs/tutorial-epbt",
    init=["default+cross_entropy_taylor"],   # member 0 starts from the known point, the rest at random
    strategy_options={"population_size": POPULATION, "intervals": INTERVALS},
    progress=not TINY,
)
# lineage=True follows the final weights back through the checkpoints they came from:
# the loss schedule those weights were actually trained with.
lineage = plot_schedule(epbt.path, "runs/tutorial-epbt/schedule.png", lineage=True)
print(lineage.head())
print(epbt.best(k=1)[["candidate", "fitness"]])
