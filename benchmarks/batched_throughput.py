"""Evaluations per minute: the ``batched`` executor against sequential evaluation.

Baseline: the inline executor's path, ``Evaluator.evaluate`` one job after another on
the same device (what ``--executor inline`` does). Measured: ``BatchedExecutor`` on
``P`` jobs at once (member construction, training, evaluation, all included). Both
train the same jobs (the same candidates and seeds, ``--steps`` steps each); the
sequential rate is measured on ``--sequential-jobs`` of them right before each
population, so that a machine shared with other work loads both alike (``--repeats N`` keeps the
best of N interleaved measurements of each).

    python benchmarks/batched_throughput.py                      # CPU, mnist1d-mlp, P = 8 32 128
    python benchmarks/batched_throughput.py --device cuda        # + cifar10-wrn-10-1 if its data is found
    python benchmarks/batched_throughput.py --space optimizer --populations 32

Prints one row per task, space and population size, with the ratio batched/sequential,
and batched against the same jobs run one at a time as populations of one (``P=1``): that
column separates the gain of batching from the batched trainer's other speed-ups (on CUDA,
the whole step replayed as one CUDA graph, which the sequential Trainer does not do).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

from metalearn.batched_executor import BatchedExecutor
from metalearn.candidate import Candidate
from metalearn.errors import UserError
from metalearn.evaluator import Evaluation, Evaluator, Job
from metalearn.registry import get_space, get_task
from metalearn.tasks.base import Task
from metalearn.tasks.batched import BatchedTrainer


def candidates(space_name: str, count: int, seed: int) -> list[Candidate]:
    """``count`` candidates that train (no early divergence, which would flatter sequential)."""
    space = get_space(space_name)
    rng = np.random.default_rng(seed)
    if space_name == "loss":  # small steps around cross-entropy's expansion
        centre = space.named()["cross_entropy_taylor"]
        genomes = [centre] + [tuple(float(v) for v in np.asarray(centre) +
                                    rng.normal(0, 0.05, len(centre))) for _ in range(count - 1)]
    elif space_name == "optimizer":  # the named rules in turn (equal rules share an update)
        named = list(space.named().values())
        genomes = [named[i % len(named)] for i in range(count)]
    else:
        genomes = [space.sample(rng) for _ in range(count)]
    return [space.candidate(g) for g in genomes]


def jobs_for(task: Task, space: str, count: int, steps: int) -> list[Job]:
    return [Job(c, steps=steps, seed=i, task=task) for i, c in enumerate(candidates(space, count, 0))]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def sequential_rate(evaluator: Evaluator, jobs: Sequence[Job]) -> tuple[float, list[Evaluation]]:
    """Evaluations per minute, one job after another."""
    sync(evaluator.device)
    start = time.perf_counter()
    results = [evaluator.evaluate(job) for job in jobs]
    sync(evaluator.device)
    return 60 * len(jobs) / (time.perf_counter() - start), results


def batched_rate(evaluator: Evaluator, jobs: Sequence[Job]) -> tuple[float, list[Evaluation], list[str]]:
    """Evaluations per minute, all ``jobs`` as one population."""
    executor = BatchedExecutor(evaluator, population=len(jobs))
    sync(evaluator.device)
    start = time.perf_counter()
    results = executor.evaluate(jobs)
    sync(evaluator.device)
    return 60 * len(jobs) / (time.perf_counter() - start), results, executor.notes


def population_of_one_rate(evaluator: Evaluator, jobs: Sequence[Job]) -> float:
    """Evaluations per minute, each job alone as a population of one: the batched trainer's
    own speed-ups (population layers, the CUDA graph of the step) without the batching."""
    executor = BatchedExecutor(evaluator, population=1)
    sync(evaluator.device)
    start = time.perf_counter()
    for job in jobs:
        member, _ = executor._member(job)
        assert member is not None and job.steps is not None
        trainer = BatchedTrainer(job.task, [member], evaluator.device,  # type: ignore[arg-type]
                                 total_steps=job.steps)
        trainer.train(job.steps)
        trainer.evaluate()
    sync(evaluator.device)
    return 60 * len(jobs) / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--tasks", nargs="+", help="default: mnist1d-mlp (+ cifar10-wrn-10-1 on CUDA)")
    parser.add_argument("--space", default="loss", help="loss, hparams or optimizer")
    parser.add_argument("--populations", nargs="+", type=int, default=[8, 32, 128])
    parser.add_argument("--steps", type=int, default=200, help="training steps of each job")
    parser.add_argument("--sequential-jobs", type=int, default=8,
                        help="jobs timed one after another for the baseline rate")
    parser.add_argument("--repeats", type=int, default=1,
                        help="measure both rates this many times, interleaved, and keep the best")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--batched-threads", type=int, default=None,
                        help="threads while a population trains (default: --threads); e.g. "
                             "--threads 1 --batched-threads 2 compares metalearn's CPU defaults: "
                             "one thread per sequential job, every core for one population")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda asked for, but CUDA is not available", file=sys.stderr)
        return 2
    tasks = args.tasks or (["mnist1d-mlp", "cifar10-wrn-10-1"] if args.device.startswith("cuda")
                           else ["mnist1d-mlp"])
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    print(f"device {args.device} ({name}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads ({args.batched_threads or torch.get_num_threads()} "
          f"for populations), space {args.space}, {args.steps} steps per job")
    print(f"{'task':<18} {'P':>5} {'sequential/min':>15} {'P=1/min':>9} {'batched/min':>12} "
          f"{'ratio':>7} {'vs P=1':>7}  notes")
    evaluator = Evaluator(device=args.device)
    for task_name in tasks:
        try:
            task = get_task(task_name)
            task.load_data()  # type: ignore[attr-defined]
        except UserError:
            if not task_name.startswith("cifar10-"):
                raise
            import vision_epoch  # noqa: F401  (registers the synthetic CIFAR-10 stand-in)

            task = get_task(task_name, dataset="cifar10-synthetic", data_args={})
            print(f"{task_name:<18} (no CIFAR-10 folder: synthetic uint8 tensors of its shape)")
        except KeyError as err:
            print(f"{task_name:<18} skipped: {err}")
            continue
        evaluator.evaluate(jobs_for(task, args.space, 1, min(args.steps, 20))[0])  # warm up
        for population in args.populations:
            jobs = jobs_for(task, args.space, population, args.steps)
            # warm-up of this population size: cuDNN's autotuning of its grouped convolutions
            # and the first CUDA graph capture are paid once per size, not per population
            batched_rate(evaluator, jobs_for(task, args.space, population, 5))
            seq = one = bat = 0.0
            for _ in range(args.repeats):  # best of: the least disturbed by other work
                rate, seq_results = sequential_rate(evaluator, jobs[:args.sequential_jobs])
                seq = max(seq, rate)
                one = max(one, population_of_one_rate(evaluator, jobs[:args.sequential_jobs]))
                threads = torch.get_num_threads()
                torch.set_num_threads(args.batched_threads or threads)
                rate, bat_results, notes = batched_rate(evaluator, jobs)
                torch.set_num_threads(threads)
                bat = max(bat, rate)
            agree = all(a.status == b.status and (a.fitness is None or b.fitness is None
                        or abs(a.fitness - b.fitness) < 0.01)
                        for a, b in zip(seq_results, bat_results))
            failed = sum(not r.ok for r in bat_results)
            note = "; ".join([*notes, f"{failed}/{population} failed (diverged...)"] if failed
                             else notes) + ("" if agree else " FITNESS DIFFERS FROM SEQUENTIAL")
            print(f"{task_name:<18} {population:>5} {seq:>15.1f} {one:>9.1f} {bat:>12.1f} "
                  f"{bat / seq:>6.2f}x {bat / one:>6.2f}x  {note}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
