"""The search loop: ask, evaluate, record, tell, until the budget is spent; resumable.

A search's budget is a number of evaluations. Each proposal is written to the
ledger when it is asked and each result when it arrives, so a run killed at any
moment resumes with the same call: a fresh strategy replays the recorded asks and
tells in order (rebuilding its state exactly), and only the proposals that have no
result yet (the jobs that were in flight) are run again. A proposal identical to
an earlier job (same candidate key, task, steps and seed) is answered from the
ledger and not charged to the budget.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .errors import UserError
from .evaluator import Evaluation, Evaluator, Job, Status, checkpoint_path
from .executors import Executor, make_executor
from .ledger import Ledger, evaluation_from_row
from .registry import get_space, get_strategy, get_task
from .run import CHECKPOINTS, LEDGER, Run
from .strategies.base import Strategy
from .tasks.base import Task

#: consecutive proposals answered from the ledger after which a search stops as exhausted
MAX_DUPLICATE_STREAK = 1000
#: options that must match when a run is resumed (the budget may grow)
FIXED_OPTIONS = ("space", "strategy", "task", "task_config", "seed", "steps", "strategy_options",
                 "init")


def search(
    space: str,
    strategy: str,
    task: str,
    budget: int,
    run: str | Path | None = None,
    seed: int = 0,
    steps: int | None = None,
    executor: str = "inline",
    device: str = "auto",
    init: Sequence[str] = (),
    strategy_options: Mapping[str, Any] | None = None,
    task_options: Mapping[str, Any] | None = None,
    executor_options: Mapping[str, Any] | None = None,
    job_timeout: float | None = None,
    progress: bool = True,
) -> Run:
    """Search ``space`` with ``strategy`` on ``task`` for ``budget`` evaluations.

    Resumes when the ``run`` folder already holds a ledger made with the same options.

    Args:
        space: a space name (``"optimizer"``), or several joined by ``+``.
        strategy: a strategy name (``"evolution"``).
        task: a task name (``"mnist1d-mlp"``).
        budget: number of evaluations (duplicates answered from the ledger are free).
        run: the run folder; ``runs/{space}-{strategy}-{task}-s{seed}`` by default.
        seed: seeds the strategy and every training job.
        steps: training steps of a job (the task's default otherwise).
        init: named points or DSL texts the strategy evaluates first.
        job_timeout: seconds a job may train before it is recorded as ``timeout``.
    """
    if not isinstance(budget, int) or budget < 1:
        raise UserError(f"budget must be a whole number of evaluations >= 1, got {budget!r}")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise UserError(f"steps must be a whole number >= 1, got {steps!r}")
    the_task = get_task(task, **dict(task_options or {}))
    the_space = get_space(space)
    options = dict(strategy_options or {})
    make_strategy = lambda: get_strategy(strategy, the_space, seed=seed, init=list(init), **options)  # noqa: E731
    make_strategy()  # validate the options before anything is written
    the_task.load_data() if hasattr(the_task, "load_data") else None  # a missing data folder fails here

    folder = Path(run) if run is not None else Path("runs") / f"{space}-{strategy}-{task}-s{seed}"
    ledger = Ledger(folder / LEDGER)
    try:
        _check_options(ledger, folder, {
            "space": space, "strategy": strategy, "task": task,
            "task_config": the_task.config_json(), "seed": seed, "steps": steps,
            "strategy_options": options, "init": list(init),
        }, budget=budget, executor=executor)
        evaluator = Evaluator(device=device, checkpoint_dir=folder / CHECKPOINTS,
                              job_timeout=job_timeout)
        runner = make_executor(executor, evaluator, **dict(executor_options or {}))
        try:
            _Loop(ledger, make_strategy(), runner, the_task, seed, steps, budget, progress).run()
        finally:
            runner.close()
    finally:
        ledger.close()
    return Run(folder)


def _check_options(ledger: Ledger, folder: Path, fixed: dict[str, Any], **free: Any) -> None:
    stored = ledger.options()
    if stored:
        changed = [k for k in FIXED_OPTIONS if k in stored and stored[k] != fixed[k]]
        if changed:
            was = ", ".join(f"{k}={stored[k]!r}" for k in changed)
            raise UserError(f"run {folder} was made with {was}; resume it with the same options "
                            f"or choose another --run folder")
    else:
        ledger.set_options({**fixed, "command": shlex.join(sys.argv)})
    ledger.set_options(free)


class _Loop:
    """One search's driver: the only writer of the ledger."""

    def __init__(self, ledger: Ledger, strategy: Strategy, executor: Executor, task: Task,
                 seed: int, steps: int | None, budget: int, progress: bool) -> None:
        self.ledger, self.strategy, self.executor = ledger, strategy, executor
        self.task, self.seed, self.steps, self.budget = task, seed, steps, budget
        self.progress = progress
        self.charged = 0            # evaluations that count against the budget
        self.best: float | None = None
        self.failed = 0
        self.duplicate_streak = 0
        self.in_flight: list[Job] = []
        self.checkpoints = ledger.path.parent / CHECKPOINTS
        self.checkpointed: set[str] = set()  # told jobs whose checkpoints may be on disk
        # a strategy that plans job lengths (successive halving) is told the search's default one
        if hasattr(strategy, "set_default_steps"):
            strategy.set_default_steps(steps or task.steps)

    def fill(self, job: Job) -> Job:
        return job.replace(task=self.task,
                           steps=job.steps if job.steps is not None else (self.steps or self.task.steps),
                           seed=job.seed if job.seed is not None else self.seed)

    def run(self) -> None:
        self.replay()
        bar = tqdm(total=self.budget, initial=min(self.charged, self.budget), unit="eval",
                   desc=f"{self.strategy.space.name} {self.strategy.name}", disable=not self.progress,
                   dynamic_ncols=True)
        self.bar = bar
        self._show()
        for job in self.in_flight:
            self.executor.submit(job)
        try:
            while True:
                self.propose()
                if self.executor.in_flight == 0:
                    break
                for evaluation in self.executor.wait():
                    self.finish(evaluation)
        finally:
            bar.close()

    def replay(self) -> None:
        """Rebuild the strategy from the ledger; collect the proposals that were in flight."""
        evaluations = self.ledger.evaluations(self.task)
        by_proposal = {e.job.proposal for e in evaluations}
        told = 0
        for proposal in self.ledger.proposals():
            while told < proposal.told_before:
                self.strategy.tell([evaluations[told]])
                told += 1
            job = self.strategy.ask_one()
            if job is None or self.fill(job).key != proposal.job_key:
                raise UserError(f"the ledger {self.ledger.path} does not replay: proposal "
                                f"{proposal.proposal} differs from what the strategy proposes now "
                                "(was the strategy's code changed?); start a new --run folder")
            if proposal.proposal not in by_proposal:
                self.in_flight.append(self.fill(job))
        self.strategy.tell(evaluations[told:])
        for evaluation in evaluations:
            self._account(evaluation)
        self.checkpointed.update(e.job.key for e in evaluations if e.job.checkpoint)

    def propose(self) -> None:
        while (self.executor.in_flight < self.executor.capacity
               and self.charged + self.executor.in_flight < self.budget
               and not self.strategy.done()
               and self.duplicate_streak < MAX_DUPLICATE_STREAK):
            told = self.strategy.told
            job = self.strategy.ask_one()
            if job is None:
                return
            job = self.fill(job)
            self.ledger.add_proposal(job, told_before=told)
            earlier = self.ledger.lookup(job.key)
            if (earlier is not None and job.checkpoint and earlier["status"] == Status.OK.value
                    and not checkpoint_path(self.checkpoints, job.key).exists()):
                earlier = None  # its checkpoint was cleaned up: train again to have one to continue
            if earlier is not None:
                cached = evaluation_from_row(earlier, self.task)
                cached.job, cached.cached = job, True
                self.duplicate_streak += 1
                self.finish(cached)
            else:
                self.duplicate_streak = 0
                self.executor.submit(job)
        if self.duplicate_streak >= MAX_DUPLICATE_STREAK:
            self.bar.write(f"stopping: the last {MAX_DUPLICATE_STREAK} proposals had all been "
                           "evaluated before (the space looks exhausted)")

    def finish(self, evaluation: Evaluation) -> None:
        self.ledger.record([evaluation])
        self.strategy.tell([evaluation])
        self._account(evaluation)
        self._drop_checkpoints(evaluation)
        self._show()
        if not evaluation.cached:
            self.bar.update(1)

    def _account(self, evaluation: Evaluation) -> None:
        if evaluation.cached:
            return
        self.charged += 1
        if evaluation.status is Status.OK and evaluation.fitness is not None:
            self.best = max(self.best if self.best is not None else evaluation.fitness,
                            evaluation.fitness)
        else:
            self.failed += 1

    def _drop_checkpoints(self, evaluation: Evaluation) -> None:
        """Delete checkpoints of told jobs that the strategy can no longer continue from (PBT).

        Only in the live loop, never during replay: the replayed strategy names what it
        still needs, and checkpoints of jobs not yet told are never touched.
        """
        if evaluation.job.checkpoint:
            self.checkpointed.add(evaluation.job.key)
        needed = self.strategy.needed_checkpoints()
        if needed is None:
            return
        for key in self.checkpointed - needed:
            checkpoint_path(self.checkpoints, key).unlink(missing_ok=True)
        self.checkpointed &= needed

    def _show(self) -> None:
        if self.progress:
            best = f"{self.best:.4f}" if self.best is not None else "-"
            self.bar.set_postfix_str(f"best={best} failed={self.failed}", refresh=False)
