"""Step time of the optimizer DSL's ``adam`` against ``torch.optim.Adam(foreach=True)``.

Two parameter lists: the shapes of a WRN-16-2 for CIFAR-10 (about 0.69M parameters
in 43 tensors, built here from the architecture of Zagoruyko & Komodakis 2016) and
a 25M-parameter stack of linear layers. Gradients are fixed random tensors, so
only the optimizer's step is timed. Goal: the DSL's step at most 1.3x Adam's.

    python benchmarks/optimizer_step.py [--device cpu|cuda] [--steps 50] [--rule adam]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from metalearn.searchspaces.optimizer_dsl import OptimizerSpace


def wrn_shapes(depth: int = 16, width: int = 2, classes: int = 10) -> list[tuple[int, ...]]:
    """Parameter shapes of WRN-depth-width (pre-activation blocks, 1x1 conv shortcuts)."""
    n = (depth - 4) // 6
    widths = [16, 16 * width, 32 * width, 64 * width]
    shapes: list[tuple[int, ...]] = [(widths[0], 3, 3, 3)]
    channels = widths[0]
    for out in widths[1:]:
        for block in range(n):
            shapes += [(channels,), (channels,), (out, channels, 3, 3), (out,), (out,),
                       (out, out, 3, 3)]
            if block == 0 and channels != out:
                shapes.append((out, channels, 1, 1))
            channels = out
    shapes += [(channels,), (channels,), (classes, channels), (classes,)]
    return shapes


def mlp_shapes(total: int = 25_000_000, width: int = 1024) -> list[tuple[int, ...]]:
    layers = max(1, round(total / (width * width + width)))
    return [s for _ in range(layers) for s in ((width, width), (width,))]


def make_params(shapes: list[tuple[int, ...]], device: torch.device) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    params = []
    for shape in shapes:
        p = torch.randn(shape, generator=generator).to(device).requires_grad_()
        p.grad = torch.randn(shape, generator=generator).to(device) * 1e-2
        params.append(p)
    return params


def time_steps(makers: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]],
               shapes: list[tuple[int, ...]], device: torch.device,
               steps: int) -> dict[str, float]:
    """Median seconds per ``optimizer.step()`` of each optimizer, their steps
    interleaved so that a busy machine slows them alike."""
    optimizers = {name: make(make_params(shapes, device)) for name, make in makers.items()}
    times: dict[str, list[float]] = {name: [] for name in makers}
    for i in range(steps + 3):
        for name, optimizer in optimizers.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 3:  # warm-up: state creation, allocator
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rule", default="adam", help="named point or DSL text to time")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    space = OptimizerSpace()
    factory = space.build(space.resolve(args.rule))
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"rule {space.format(space.resolve(args.rule))}")
    for label, shapes in (("WRN-16-2", wrn_shapes()), ("25M MLP", mlp_shapes())):
        numel = sum(torch.Size(s).numel() for s in shapes)
        timed = time_steps({"dsl": lambda p: factory(p, lr=1e-3),
                            "adam": lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True)},
                           shapes, device, args.steps)
        ours, ref = timed["dsl"], timed["adam"]
        print(f"{label:9s} {numel / 1e6:6.2f}M params in {len(shapes):3d} tensors: "
              f"dsl {ours * 1e3:8.3f} ms  torch.optim.Adam(foreach) {ref * 1e3:8.3f} ms  "
              f"ratio {ours / ref:5.2f}x")


if __name__ == "__main__":
    main()
