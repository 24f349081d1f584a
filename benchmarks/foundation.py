"""Foundation numbers: evaluations per minute, framework overhead, ledger cost, `show` speed.

Baselines named in each line: a bare PyTorch training loop of the same steps (the same
MLP, data, SGD-momentum and cross-entropy) for the overhead; nothing for the ledger
(absolute ms per recorded evaluation); a 100,000-row ledger for `metalearn show`.

    python benchmarks/foundation.py [--steps 2000] [--evals 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import metalearn as ml
from metalearn.candidate import Candidate
from metalearn.evaluator import BASELINE, Evaluation, Evaluator, Job, Status
from metalearn.ledger import Ledger
from metalearn.report import show


def bare_loop(steps: int, seed: int = 0) -> float:
    """The same training as mnist1d-mlp's default recipe, written plainly."""
    task = ml.get_task("mnist1d-mlp")
    data = task.load_data()
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(40, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                                torch.nn.ReLU(), torch.nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    order, cursor = torch.randperm(len(data.y_train), generator=g), 0
    for _ in range(steps):
        if cursor + 128 > len(order):
            order, cursor = torch.randperm(len(data.y_train), generator=g), 0
        index = order[cursor:cursor + 128]
        cursor += 128
        loss = torch.nn.functional.cross_entropy(model(data.x_train[index]), data.y_train[index])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if not torch.isfinite(loss):
            break
    with torch.no_grad():
        (model(data.x_val).argmax(1) == data.y_val).float().mean().item()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--evals", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1,
                        help="PyTorch CPU threads for both loops (1: what `metalearn search` uses)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ml.get_task("mnist1d-mlp").load_data()  # generation/cache outside the timings
    bare_loop(200)

    bare = statistics.median(bare_loop(args.steps, seed) for seed in range(3))
    task = ml.get_task("mnist1d-mlp")
    evaluator = Evaluator(device="cpu")
    default = Candidate(space=BASELINE, text="default recipe", key="baseline")
    trainer = statistics.median(
        evaluator.evaluate(Job(candidate=default, steps=args.steps, seed=seed, task=task)).wall_s
        for seed in range(3))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = ml.search(space="hparams", strategy="random", task="mnist1d-mlp", budget=args.evals,
                        steps=args.steps, run=Path(tmp) / "r", progress=False, device="cpu")
        wall = time.perf_counter() - start
        training = float(run.to_pandas()["wall_s"].sum())
    print(f"bare PyTorch loop, {args.steps} steps:              {bare:.3f} s")
    print(f"metalearn's training loop, default recipe:  {trainer:.3f} s  "
          f"ratio {trainer / bare:.3f}x against the bare loop")
    print(f"search of {args.evals} evaluations: {wall:.2f} s wall, {training:.2f} s inside jobs; "
          f"bookkeeping (strategy, ledger, progress, start-up) {100 * (wall - training) / training:.2f}%"
          f" of training")
    print(f"evaluations per minute (hparams, random):   {60 * args.evals / wall:.1f}")

    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp) / "ledger.db")
        task = ml.get_task("mnist1d-mlp")
        n = 2000
        evaluations = [Evaluation(job=Job(candidate=Candidate("loss", f"t0={i}", f"k{i}"), steps=10,
                                          seed=0, task=task, proposal=i),
                                  status=Status.OK, fitness=i / n, metrics={"accuracy": i / n},
                                  curve=[(s, 1.0) for s in range(0, 2000, 40)]) for i in range(n)]
        start = time.perf_counter()
        for e in evaluations:
            ledger.add_proposal(e.job, told_before=e.job.proposal)
            ledger.record([e])
        per_record = (time.perf_counter() - start) / n
        print(f"ledger, proposal + result per evaluation: {1000 * per_record:.3f} ms")

        rows = 100_000
        ledger.db.executemany(
            "INSERT INTO evaluations (proposal, job_key, candidate, name, key, space, task, steps, "
            "seed, status, fitness, metrics, curve, cached, wall_s, error) "
            "VALUES (?, ?, ?, '', ?, 'loss', 'mnist1d-mlp', 2000, 0, ?, ?, '{}', '[]', 0, 1.0, ?)",
            [(i, f"j{i}", f"t0={i} t1=0.5 t2=1.0", f"k{i}", "ok" if i % 7 else "diverged",
              (i % 1000) / 1000 if i % 7 else None, "" if i % 7 else "Diverged: nan")
             for i in range(n, n + rows)])
        ledger.db.commit()
        ledger.close()
        start = time.perf_counter()
        show(tmp)
        print(f"metalearn show on {rows + n} evaluations: {time.perf_counter() - start:.3f} s")


if __name__ == "__main__":
    main()
