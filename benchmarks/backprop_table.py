"""Validation accuracy of the named backward rules on a task, with plain SGD (momentum 0).

Prints the markdown table of docs/spaces/backprop.md::

    python benchmarks/backprop_table.py --task mnist1d-mlp --steps 2000 --seeds 0 1 2

Every rule trains the same steps from the same seeds; the DSL rules use the task's
learning rate, ProxProp the paper's setting (learning rate 1, tau_prox 0.05: with
learning rate 1 SGD takes the proximal step). ``zero signal`` sends nothing below
any layer, so only the classifier learns: the bar a rule must clear to show that
its signal teaches the hidden layers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from metalearn.registry import get_space, get_task

ROWS = [
    ("backprop", "backprop", None),
    ("feedback alignment", "feedback_alignment", None),
    ("sign symmetry", "sign_symmetry", None),
    ("direct feedback alignment", "direct_feedback_alignment", None),
    ("ProxProp cg3", "proxprop(cg3, tau=0.05)", 1.0),
    ("ProxProp exact", "proxprop(exact, tau=0.05)", 1.0),
    ("zero signal (classifier only)", "sub(apply(d, W), apply(d, W))", None),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mnist1d-mlp")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lr", type=float, default=None, help="the DSL rules' learning rate")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip", nargs="*", default=[], help="row names to leave out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    space, task = get_space("backprop"), get_task(args.task)
    base_lr = args.lr if args.lr is not None else float(task.default_recipe().hparams["lr"])
    print(f"task {args.task}, {args.steps} steps, SGD momentum 0, seeds {args.seeds}\n")
    print("| rule | text | lr | val. accuracy, mean | +- std | min | max | s/run |")
    print("|---|---|---|---|---|---|---|---|")
    for label, text, lr in ROWS:
        if label in args.skip:
            continue
        lr = base_lr if lr is None else lr
        genome = space.resolve(text)
        accuracies, start = [], time.perf_counter()
        for seed in args.seeds:
            recipe = space.fill(task.default_recipe(), genome).replace(
                hparams={"lr": lr, "momentum": 0.0})
            accuracies.append(task.run(recipe, seed=seed, steps=args.steps)["accuracy"])
        seconds = (time.perf_counter() - start) / len(args.seeds)
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        print(f"| {label} | `{space.format(genome)}` | {lr:g} | {statistics.mean(accuracies):.3f} "
              f"| {spread:.3f} | {min(accuracies):.3f} | {max(accuracies):.3f} | {seconds:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
