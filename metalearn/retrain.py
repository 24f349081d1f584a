"""Retraining: the best candidates of a search, trained again with several seeds and tested.

A search scores candidates on validation data, often with shortened training. Before a
discovery is believed it is retrained for the task's full length with several seeds and
scored once on the held-out test split. On another task (same data, bigger model, longer
training) this is the transfer experiment of *Backprop Evolution* (Alber, Bello, Zoph,
Kindermans, Ramachandran & Le, 2018, section 4.2), which retrained the best rules found on
a small network on a Wide ResNet.

Retraining is recorded in its own ledger (a run folder), job by job, so it resumes
like a search: a job whose result is already in the ledger is not run again. The jobs'
seeds differ from each other; each job also records ``test_accuracy`` (``Job.test``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from .candidate import Candidate
from .errors import UserError
from .evaluator import Evaluation, Evaluator, Job, Status, baseline_candidate
from .executors import make_executor
from .ledger import Ledger, evaluation_from_row
from .run import LEDGER, Run
from .tasks.base import Task

#: columns of the per-candidate summary, in order
SUMMARY_COLUMNS = ("space", "name", "candidate", "key", "seeds", "ok", "val_mean", "test_mean",
                   "test_std", "test_min", "test_max", "wall_s")


def top_candidates(run: str | Path | Run, k: int) -> list[Candidate]:
    """The ``k`` best distinct candidates of ``run`` (by validation fitness; one per key)."""
    run = run if isinstance(run, Run) else Run(run)
    frame = run.to_pandas()
    frame = frame[(frame["status"] == "ok") & frame["fitness"].notna()]
    frame = frame.sort_values(["fitness", "id"], ascending=[False, True], kind="stable")
    chosen: list[Candidate] = []
    seen: set[tuple[str, str]] = set()
    for row in frame.itertuples():
        if (row.space, row.key) in seen:
            continue
        seen.add((row.space, row.key))
        chosen.append(Candidate(space=row.space, text=row.candidate, key=row.key, name=row.name or ""))
        if len(chosen) == k:
            break
    return chosen


def retrain_jobs(candidates: Sequence[Candidate], task: Task, seeds: Sequence[int],
                 steps: int | None = None) -> list[Job]:
    """One job per candidate and seed, ``steps`` long (the task's default), scored on test too."""
    if len(set(seeds)) != len(seeds):
        raise UserError(f"retraining seeds must differ from each other, got {list(seeds)}")
    length = steps if steps is not None else task.steps
    return [Job(candidate=c, steps=length, seed=s, task=task, test=True)
            for c in candidates for s in seeds]


def run_jobs(folder: str | Path, jobs: Sequence[Job], options: Mapping[str, Any] | None = None,
             executor: str = "inline", device: str = "auto", job_timeout: float | None = None,
             executor_options: Mapping[str, Any] | None = None, progress: bool = True,
             desc: str = "retrain") -> list[Evaluation]:
    """Evaluate ``jobs`` into the ledger at ``folder``; jobs already there are not run again.

    Returns one evaluation per job, in the order of ``jobs``. A job recorded earlier
    as ``timeout`` or ``oom`` (faults that may pass) is run again.
    """
    folder = Path(folder)
    ledger = Ledger(folder / LEDGER)
    try:
        if options:
            ledger.set_options(options)
        todo, queued = [], set()
        for job in jobs:
            if job.key not in queued and ledger.lookup(job.key) is None:
                todo.append(job)
                queued.add(job.key)
        if todo:
            runner = make_executor(executor, Evaluator(device=device, job_timeout=job_timeout),
                                   **dict(executor_options or {}))
            bar = tqdm(total=len(todo), unit="job", desc=desc, disable=not progress,
                       dynamic_ncols=True)
            try:
                while todo or runner.in_flight:
                    while todo and runner.in_flight < runner.capacity:
                        runner.submit(todo.pop(0))
                    for evaluation in runner.wait():
                        ledger.record([evaluation])
                        bar.update(1)
            finally:
                bar.close()
                runner.close()
        return [_latest(ledger, job) for job in jobs]
    finally:
        ledger.close()


def _latest(ledger: Ledger, job: Job) -> Evaluation:
    rows = list(ledger.rows("WHERE job_key = ? AND cached = 0 ORDER BY id DESC LIMIT 1", (job.key,)))
    if not rows:
        raise RuntimeError(f"job {job.key} has no result in {ledger.path}")
    evaluation = evaluation_from_row(rows[0], job.task)
    evaluation.job = job  # keeps the fields the ledger has no column for (test)
    return evaluation


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value; NaN for none)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def per_job_table(evaluations: Sequence[Evaluation]) -> pd.DataFrame:
    """One row per retraining job: candidate, seed, status, validation and test accuracy."""
    return pd.DataFrame([{
        "space": e.job.candidate.space, "name": e.job.candidate.name,
        "candidate": e.job.candidate.text, "key": e.job.candidate.key, "seed": e.job.seed,
        "steps": e.job.steps, "status": e.status.value,
        "val_accuracy": e.fitness if e.ok else None,
        "test_accuracy": e.metrics.get("test_accuracy") if e.ok else None,
        "wall_s": e.wall_s, "error": e.error,
    } for e in evaluations])


def summarize(evaluations: Sequence[Evaluation]) -> pd.DataFrame:
    """One row per candidate, in first-seen order: mean/std/min/max test accuracy over its seeds."""
    groups: dict[tuple[str, str], list[Evaluation]] = {}
    for e in evaluations:
        groups.setdefault((e.job.candidate.space, e.job.candidate.key), []).append(e)
    rows = []
    for group in groups.values():
        candidate = group[0].job.candidate
        ok = [e for e in group if e.status is Status.OK]
        tests = [float(e.metrics["test_accuracy"]) for e in ok]
        vals = [float(e.fitness) for e in ok if e.fitness is not None]
        test_mean, test_std = mean_std(tests)
        rows.append({
            "space": candidate.space, "name": candidate.name, "candidate": candidate.text,
            "key": candidate.key, "seeds": len(group), "ok": len(ok), "val_mean": mean_std(vals)[0],
            "test_mean": test_mean, "test_std": test_std,
            "test_min": min(tests) if tests else math.nan,
            "test_max": max(tests) if tests else math.nan,
            "wall_s": sum(e.wall_s for e in group),
        })
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def retrain(run: str | Path, task: str | None = None, top: int = 3, seeds: int = 3,
            steps: int | None = None, out: str | Path | None = None, baseline: bool = True,
            executor: str = "inline", device: str = "auto",
            task_options: Mapping[str, Any] | None = None, job_timeout: float | None = None,
            executor_options: Mapping[str, Any] | None = None, progress: bool = True
            ) -> pd.DataFrame:
    """Retrain the ``top`` candidates of ``run`` on ``task`` with ``seeds`` seeds; test them.

    Writes ``RUN/retrain-TASK/`` (or ``out``): its ledger, ``retrain.csv`` (one row per
    job) and ``summary.csv`` (one row per candidate, best mean test accuracy first),
    and returns the summary. ``task`` defaults to the run's own task; ``steps`` to the
    task's full length. With ``baseline`` the task's default recipe is retrained too.
    """
    from .registry import get_task

    if top < 1 or seeds < 1:
        raise UserError(f"--top and --seeds must be >= 1, got {top} and {seeds}")
    source = Run(run)
    task_name = task or source.options.get("task")
    if not task_name:
        raise UserError(f"run {run} does not record its task; give --task")
    the_task = get_task(task_name, **dict(task_options or {}))
    candidates = top_candidates(source, top)
    source.close()
    if not candidates:
        raise UserError(f"run {run} has no successful evaluation to retrain")
    if baseline:
        candidates.append(baseline_candidate())
    folder = Path(out) if out is not None else Path(run) / f"retrain-{task_name}"
    jobs = retrain_jobs(candidates, the_task, list(range(seeds)), steps)
    evaluations = run_jobs(folder, jobs, {
        "kind": "retrain", "source": str(run), "task": task_name, "top": top, "seeds": seeds,
        "steps": jobs[0].steps}, executor=executor, device=device, job_timeout=job_timeout,
        executor_options=executor_options, progress=progress, desc=f"retrain on {task_name}")
    per_job_table(evaluations).to_csv(folder / "retrain.csv", index=False)
    summary = summarize(evaluations).sort_values("test_mean", ascending=False, kind="stable",
                                                 na_position="last")
    summary.to_csv(folder / "summary.csv", index=False)
    return summary.reset_index(drop=True)


def format_summary(summary: pd.DataFrame, width: int = 70) -> str:
    """The summary as a text table: test accuracy mean +- std over seeds, per candidate."""
    lines = [f"{'rank':>4}  {'test mean':>9}  {'std':>6}  {'min':>6}  {'max':>6}  {'ok':>5}  candidate"]
    for rank, row in enumerate(summary.itertuples(), 1):
        label = f"[{row.space}] " + (f"{row.name}: {row.candidate}" if row.name else row.candidate)
        if len(label) > width:
            label = label[:width - 3] + "..."
        cells = [_pct(row.test_mean), _pct(row.test_std), _pct(row.test_min), _pct(row.test_max)]
        lines.append(f"{rank:>4}  {cells[0]:>9}  {cells[1]:>6}  {cells[2]:>6}  {cells[3]:>6}  "
                     f"{f'{row.ok}/{row.seeds}':>5}  {label}")
    return "\n".join(lines)


def _pct(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}"
