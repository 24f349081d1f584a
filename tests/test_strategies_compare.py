"""Strategies against random search on the synthetic rule-matching task (slow; also a script).

Each strategy searches the optimizer space (Bello et al. 2017) for a rule whose
updates point like PowerSign's (task ``synthetic-rule-match``), with the same budget
and five seeds (three under CI), through the whole search loop and ledger. Run as a script to print
the table of docs/strategies.md::

    python tests/test_strategies_compare.py [--budget 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import metalearn as ml
from metalearn.ledger import Ledger
from metalearn.search import search
from metalearn.strategies.base import Strategy

STRATEGIES = ["random", "evolution", "backprop-evolution", "controller", "tpe"]
# five seeds for the table of docs/strategies.md; three in CI, to keep its run well under 30 min
SEEDS = range(3) if os.environ.get("CI") else range(5)
BUDGET = 300


def space_name() -> str:
    """The optimizer space; the tests' two-unit version of it until it is registered."""
    if "optimizer" in ml.list_spaces():
        return "optimizer"
    sys.path.insert(0, str(Path(__file__).parent))
    import test_strategies_support  # noqa: F401  (registers mini-optimizer)

    return "mini-optimizer"


def replayed(folder: Path, strategy: str, seed: int) -> Strategy:
    """The run's strategy as it stood at the end, rebuilt from the ledger (as a resume does)."""
    ledger = Ledger(folder / "ledger.db", readonly=True)
    try:
        evaluations, proposals = ledger.evaluations(), ledger.proposals()
    finally:
        ledger.close()
    rebuilt = ml.get_strategy(strategy, space_name(), seed=seed)
    told = 0
    for proposal in proposals:
        rebuilt.tell(evaluations[told:proposal.told_before])
        told = max(told, proposal.told_before)
        rebuilt.ask_one()
    rebuilt.tell(evaluations[told:])
    return rebuilt


def compare(root: Path, budget: int = BUDGET, strategies: list[str] = STRATEGIES
            ) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for strategy in strategies:
        bests, rewards, start = [], [], time.perf_counter()
        for seed in SEEDS:
            folder = root / f"{strategy}-{seed}"
            run = search(space=space_name(), strategy=strategy, task="synthetic-rule-match",
                         budget=budget, run=folder, seed=seed, progress=False)
            bests.append(float(run.to_pandas()["fitness"].max()))
            run.close()
            if strategy == "controller":
                rewards.append(replayed(folder, strategy, seed).mean_rewards)  # type: ignore[attr-defined]
        results[strategy] = {"bests": bests, "median": statistics.median(bests),
                             "rewards": rewards, "seconds": time.perf_counter() - start}
    return results


def reward_rise(rewards: list[list[float]], batches: int = 5) -> tuple[float, float]:
    """Mean batch reward of the first ``batches`` and of the next ``2 * batches`` (all seeds)."""
    first = float(np.mean([r[:batches] for r in rewards]))
    later = float(np.mean([r[batches:3 * batches] for r in rewards]))
    return first, later


@pytest.mark.slow
@pytest.mark.timeout(3000)  # 3,600-6,000 evaluations; the controller's LSTM dominates (minutes)
def test_evolution_backprop_evolution_and_controller_beat_random_search(tmp_path: Path) -> None:
    warnings.simplefilter("ignore")
    results = compare(tmp_path, strategies=["random", "evolution", "backprop-evolution",
                                            "controller"])
    for strategy in ("evolution", "backprop-evolution", "controller"):
        assert results[strategy]["median"] > results["random"]["median"], results
    first, later = reward_rise(results["controller"]["rewards"])
    assert later > first + 0.05, "the controller's mean reward rises over its first batches"


def table(results: dict[str, dict[str, Any]], budget: int) -> str:
    lines = [f"space `{space_name()}`, task `synthetic-rule-match` (target PowerSign), "
             f"budget {budget} evaluations, seeds {list(SEEDS)}", "",
             f"| strategy | median best fitness | best fitness per seed | wall time ({len(SEEDS)} seeds) |",
             "|---|---|---|---|"]
    for name, r in results.items():
        per_seed = ", ".join(f"{b:.4f}" for b in r["bests"])
        lines.append(f"| `{name}` | {r['median']:.4f} | {per_seed} | {r['seconds']:.0f} s |")
    if "controller" in results:
        first, later = reward_rise(results["controller"]["rewards"])
        lines += ["", f"controller mean reward per batch of 10 samples: {first:.3f} over batches "
                  f"1-5, {later:.3f} over batches 6-15 (mean of {len(SEEDS)} seeds)"]
    return "\n".join(lines)


if __name__ == "__main__":
    import tempfile

    parser = argparse.ArgumentParser(description="strategies against random search")
    parser.add_argument("--budget", type=int, default=BUDGET)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as folder:
        found = compare(Path(folder), args.budget, args.strategies.split(","))
    print(table(found, args.budget))
