"""Training-step time of backward rules against plain autograd.

Measures one SGD step (forward, cross-entropy, backward, update) of

1. ``backprop`` built from the DSL (custom autograd Functions) vs plain autograd on
   the MNIST-1D MLP (40-256-256-10, batch 128) and on WRN-16-2 (CIFAR-sized
   input); the goal is a ratio of at most 1.3;
2. ProxProp cg3 (and, with ``--exact``, exact) vs backprop on the ProxProp paper's
   MLP 3072-4000-1000-4000-10 with batch 500 (Frerix et al. 2018).

Timings alternate between the variants round by round and report medians, so a
machine whose load drifts affects both alike::

    python benchmarks/backprop_step.py                 # CPU
    python benchmarks/backprop_step.py --device cuda
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from metalearn.registry import get_space
from metalearn.tasks.models import MODELS


def wrn_16_2() -> nn.Module:
    if "wrn" in MODELS:
        return MODELS["wrn"]((3, 32, 32), 10, depth=16, width=2)
    raise SystemExit("no 'wrn' model registered in metalearn.tasks.models")


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float,
              observe: Callable[[torch.Tensor], None] | None) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def step() -> None:
        logits = model(x)
        if observe is not None:
            observe(logits)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def timed(step: Callable[[], None], device: torch.device, repeats: int) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def compare(name: str, make_model: Callable[[], nn.Module], in_shape: tuple[int, ...],
            batch: int, rules: dict[str, str | None], device: torch.device, rounds: int,
            repeats: int, lr: float = 0.01) -> None:
    space = get_space("backprop")
    torch.manual_seed(0)
    base = make_model().to(device)
    x = torch.randn(batch, *in_shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    steps: dict[str, Callable[[], None]] = {}
    for label, text in rules.items():
        model = copy.deepcopy(base)
        observe = None
        if text is not None:
            rule = space.build(space.resolve(text))
            rule.apply(model, torch.Generator(device=device).manual_seed(0))
            observe = rule.observe_output
        steps[label] = make_step(model, x, y, lr, observe)
    for step in steps.values():  # warm up: allocator, kernels, lazy buffers
        timed(step, device, 2)
    times: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(rounds):
        for label, step in steps.items():
            times[label].append(timed(step, device, repeats))
    reference = next(iter(steps))
    ref = statistics.median(times[reference])
    print(f"{name} (batch {batch}, {device.type}, {torch.get_num_threads()} threads):")
    for label, values in times.items():
        median = statistics.median(values)
        ratios = [v / r for v, r in zip(values, times[reference])]
        print(f"  {label:<22} {median * 1e3:9.2f} ms/step   x{median / ref:5.2f} "
              f"(per-round ratios {min(ratios):.2f}-{max(ratios):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--wrn-batch", type=int, default=None,
                        help="WRN-16-2 batch (default 128 on CUDA, 32 on CPU)")
    parser.add_argument("--exact", action="store_true", help="also time ProxProp's exact mode")
    parser.add_argument("--only", choices=["mlp", "wrn", "proxprop"], nargs="*")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    only = set(args.only or ["mlp", "wrn", "proxprop"])
    dsl = {"autograd": None, "backprop (DSL)": "backprop"}
    if "mlp" in only:
        compare("MNIST-1D MLP 40-256-256-10", lambda: MODELS["mlp"]((40,), 10), (40,), 128, dsl,
                device, args.rounds, repeats=200 if cuda else 50)
    if "wrn" in only:
        compare("WRN-16-2", wrn_16_2, (3, 32, 32), args.wrn_batch or (128 if cuda else 32), dsl,
                device, args.rounds, repeats=20 if cuda else 2)
    if "proxprop" in only:
        rules = {"backprop (autograd)": None, "ProxProp cg3": "proxprop(cg3, tau=0.05)"}
        if args.exact:
            rules["ProxProp exact"] = "proxprop(exact, tau=0.05)"
        compare("ProxProp MLP 3072-4000-1000-4000-10",
                lambda: MODELS["mlp"]((3072,), 10, hidden=(4000, 1000, 4000)), (3072,), 500,
                rules, device, max(3, args.rounds // 2), repeats=10 if cuda else 1)


if __name__ == "__main__":
    main()
