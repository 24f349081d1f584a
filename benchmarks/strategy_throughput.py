"""Proposals per second of each search strategy on its own (no training), against random search.

Each strategy asks and is told ``--n`` proposals one at a time, as the inline
executor drives it; the fitness is a fixed pseudo-random number of the candidate's
key (one in ten fails), so only the strategy's own work and its space's
``sample``/``mutate``/``key`` are timed. Discrete strategies run on the optimizer
space (Bello et al. 2017), continuous ones on TaylorGLO's 8 parameters. The baseline
is ``random`` on the same space; the target is above 100 proposals/s for every
strategy but the RNN controller.

    python benchmarks/strategy_throughput.py [--n 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
import warnings

import metalearn as ml
from metalearn.evaluator import Evaluation, Job, Status

DISCRETE = ["random", "evolution", "backprop-evolution", "controller", "tpe",
            "optuna:RandomSampler", "halving:evolution"]
CONTINUOUS = ["random", "evolution", "cmaes", "ng:DE", "ng:NGOpt", "tpe", "optuna:CmaEsSampler",
              "halving:cmaes"]
OPTIONS = {"halving:evolution": {"max_steps": 2000}, "halving:cmaes": {"max_steps": 2000}}


def fake_fitness(job: Job) -> Evaluation:
    value = int(job.candidate.key, 16) % 1000
    if value < 100:
        return Evaluation(job=job, status=Status.DIVERGED)
    return Evaluation(job=job, status=Status.OK, fitness=value / 1000)


def proposals_per_second(strategy_name: str, space: str, n: int, seed: int) -> float:
    strategy = ml.get_strategy(strategy_name, space, seed=seed, **OPTIONS.get(strategy_name, {}))
    start = time.perf_counter()
    for _ in range(n):
        job = strategy.ask_one()
        if job is None:
            raise RuntimeError(f"{strategy_name} waited with nothing in flight")
        strategy.tell([fake_fitness(job)])
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=300, help="proposals per strategy")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # experimental-sampler and CMA injection notices
    print(f"{'strategy':<22} {'space':<10} {'proposals/s':>12} {'x random':>9}")
    for space, names in (("optimizer", DISCRETE), ("loss", CONTINUOUS)):
        baseline = proposals_per_second("random", space, args.n, args.seed)
        for name in names:
            rate = baseline if name == "random" else proposals_per_second(name, space, args.n,
                                                                          args.seed)
            print(f"{name:<22} {space:<10} {rate:>12.0f} {rate / baseline:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
