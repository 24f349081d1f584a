"""Seconds per epoch of ``cifar10-wrn-16-2``: metalearn's loop against a plain PyTorch loop.

metalearn's loop keeps the whole dataset on the device as uint8, crops, flips and
normalises each batch there (randomness from the job's ``torch.Generator``), and trains
under bf16 autocast in channels-last layout, with no DataLoader workers. The reference is
the loop most CIFAR code uses: torchvision transforms (``RandomCrop(32, padding=4)``,
``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``) on PIL images in DataLoader
workers, pinned host memory, copies to the device each step; once in fp32 (the plain
loop) and once with the same bf16 autocast and channels-last (so the ratio separates
the data pipeline from the arithmetic). Same model, optimizer and batch size.

Real CIFAR-10 is used when found (``--data-dir`` or ``METALEARN_DATA``), otherwise
random uint8 tensors of CIFAR-10's shape (speed does not depend on the pixels).
Only training steps are timed (no evaluation); an epoch is ceil(45000 / batch) steps.
Both loops run once before timing (``--warmup`` steps: cuDNN autotuning, worker start-up).
The achieved fraction of peak counts the model's convolution and linear FLOPs
(2 per multiply-add, forward + backward = 3 x forward) against ``--peak``
(default 989e12: H100 SXM dense bf16).

The same is printed with a candidate of the optimizer DSL (PowerSign) and of the
backprop DSL (feedback alignment) in the recipe, when those spaces are available.

    python benchmarks/vision_epoch.py                        # one epoch on the GPU
    python benchmarks/vision_epoch.py --device cpu --steps 3 # a quick smoke check
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

import metalearn as ml
from metalearn.errors import UserError
from metalearn.recipe import Recipe
from metalearn.tasks import SupervisedTask
from metalearn.tasks.data import register_dataset
from metalearn.tasks.models import MODELS
from metalearn.tasks.train import Splits, Trainer
from metalearn.tasks.vision import CIFAR10_MEAN, CIFAR10_STD


@register_dataset("cifar10-synthetic")
def synthetic_cifar10(val_size: int = 5_000, **_: Any) -> Splits:
    """Random uint8 images and labels of CIFAR-10's shapes (50,000 training, 10,000 test)."""
    generator = torch.Generator().manual_seed(0)

    def images(n: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)

    def labels(n: int) -> torch.Tensor:
        return torch.randint(0, 10, (n,), generator=generator)

    n_train = 50_000 - val_size
    return Splits(images(n_train), labels(n_train), images(val_size), labels(val_size),
                  images(10_000), labels(10_000), num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD)


def count_flops(model: nn.Module, in_shape: tuple[int, ...]) -> float:
    """Forward FLOPs of one example: 2 per multiply-add of every Conv2d and Linear layer."""
    macs = 0

    def hook(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal macs
        per_output = output[0].numel()
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            macs += per_output * module.in_channels // module.groups * k
        elif isinstance(module, nn.Linear):
            macs += per_output * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *in_shape))
    for handle in handles:
        handle.remove()
    return 2.0 * macs


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_metalearn(task: SupervisedTask, recipe: Recipe, device: torch.device, steps: int,
                   warmup: int) -> float:
    """Seconds per step of metalearn's loop (after ``warmup`` steps)."""
    state = task.start(recipe, seed=0, device=device, total_steps=warmup + steps)
    assert isinstance(state, Trainer)
    state.train(warmup)
    synchronize(device)
    start = time.perf_counter()
    state.train(steps)
    synchronize(device)
    return (time.perf_counter() - start) / steps


class ArrayImages(torch.utils.data.Dataset[tuple[Any, int]]):
    """What torchvision's CIFAR10 dataset does: HWC uint8 arrays -> PIL image -> transform."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Callable[[Any], Any]) -> None:
        self.data = x.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def _forever(loader: torch.utils.data.DataLoader[Any]) -> Iterator[Any]:
    while True:
        yield from loader


def time_plain(task: SupervisedTask, splits: Splits, device: torch.device, steps: int,
               warmup: int, workers: int, fast: bool) -> float:
    """Seconds per step of a plain PyTorch loop fed by a torchvision-style DataLoader."""
    from torchvision import transforms

    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    loader = torch.utils.data.DataLoader(
        ArrayImages(splits.x_train, splits.y_train, transform), batch_size=task.batch_size,
        shuffle=True, drop_last=True, num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0)
    torch.manual_seed(0)
    model: nn.Module = MODELS[task.model]((3, 32, 32), 10, **dict(task.model_args)).to(device)
    if fast:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4,
                                nesterov=True)
    batches = _forever(loader)
    model.train()

    def step() -> None:
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if fast:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def dsl_recipe(space_name: str, preferred: str, task: SupervisedTask) -> tuple[str, Recipe]:
    space = ml.get_space(space_name)
    named = space.named()
    name = preferred if preferred in named else next(iter(named))
    return name, space.fill(task.default_recipe(), named[name])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="cifar10-wrn-16-2")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps to time (default: one epoch, ceil(45000 / batch))")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 20, 1 on CPU)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--compile", default="none",
                        help="torch.compile mode of metalearn's loop: none, default, reduce-overhead")
    parser.add_argument("--peak", type=float, default=989e12, help="peak bf16 FLOP/s of the device")
    parser.add_argument("--data-dir", default=None, help="folder with cifar-10-batches-py/")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="DataLoader workers of the plain loop")
    parser.add_argument("--no-baseline", action="store_true", help="time metalearn's loop only")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    task = ml.get_task(args.task)
    if not isinstance(task, SupervisedTask):
        raise UserError(f"task {args.task!r} is not a supervised image task")
    if args.batch_size:
        task = task.with_options(batch_size=args.batch_size)
    if args.compile != "none":
        task = task.with_options(compile=args.compile)
    try:
        task = task.with_options(data_dir=args.data_dir)
        splits = task.load_data()
        source = "CIFAR-10 from " + str(args.data_dir or os.environ.get("METALEARN_DATA"))
    except UserError:
        task = task.with_options(dataset="cifar10-synthetic", data_args={})
        splits = task.load_data()
        source = "synthetic uint8 tensors of CIFAR-10's shape (no CIFAR-10 folder found)"
    per_epoch = math.ceil((task.epoch_size or 45_000) / task.batch_size)
    steps = args.steps or per_epoch
    warmup = args.warmup if args.warmup is not None else (1 if device.type == "cpu" else 20)

    flops = 3 * count_flops(MODELS[task.model]((3, 32, 32), 10, **dict(task.model_args)),
                            (3, 32, 32))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{args.task} on {name} ({device}), batch {task.batch_size}, {per_epoch} steps/epoch, "
          f"timing {steps} steps after {warmup} warm-up steps; data: {source}")
    print(f"model: {flops / 3 / 1e9:.3f} GFLOP forward per image, {flops / 1e9:.3f} GFLOP per "
          f"training image (fwd + bwd = 3 x fwd); peak taken as {args.peak:.3g} FLOP/s")

    def report(label: str, seconds_per_step: float) -> float:
        epoch = seconds_per_step * per_epoch
        rate = task.batch_size / seconds_per_step
        print(f"  {label:<50s} {epoch:8.2f} s/epoch  {rate:9.0f} img/s  "
              f"{100 * rate * flops / args.peak:6.2f}% of peak")
        return epoch

    ours = report("metalearn (device-resident uint8, bf16, CL)" if device.type == "cuda"
                  else "metalearn (device-resident uint8)",
                  time_metalearn(task, task.default_recipe(), device, steps, warmup))
    if not args.no_baseline:
        workers = args.workers
        plain = report(f"plain PyTorch + DataLoader ({workers} workers, fp32)",
                       time_plain(task, splits, device, steps, warmup, workers, fast=False))
        print(f"  ratio plain / metalearn: {plain / ours:.2f}x")
        if device.type == "cuda":
            fast = report(f"plain PyTorch + DataLoader ({workers} workers, bf16, CL)",
                          time_plain(task, splits, device, steps, warmup, workers, fast=True))
            print(f"  ratio plain bf16+CL / metalearn: {fast / ours:.2f}x")
    for space_name, preferred in (("optimizer", "powersign"), ("backprop", "feedback_alignment")):
        try:
            point, recipe = dsl_recipe(space_name, preferred, task)
            report(f"metalearn, {space_name} DSL: {point}",
                   time_metalearn(task, recipe, device, steps, warmup))
        except Exception as err:  # the DSL spaces are optional here
            print(f"  metalearn, {space_name} DSL: skipped ({type(err).__name__}: {err})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
