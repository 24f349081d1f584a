"""The ``batched`` executor: the jobs a strategy asks for, trained as one vectorised population.

Jobs on the same task with the same length are grouped, up to ``population`` of
them (the executor's capacity, so the search keeps that many in flight), and each
group trains as one :class:`~metalearn.tasks.batched.BatchedTrainer` on the
evaluator's device. Each member is its sequential job's twin (same initial weights,
data order and rule randomness from the job's seed), so a batched evaluation equals
the inline one to float tolerance, and the ledger cannot tell them apart except by
``device`` (``"cpu (batch of 8)"``) and ``wall_s`` (the batch's time shared equally).

Jobs that cannot be batched run one at a time through the normal
:class:`~metalearn.evaluator.Evaluator`, and the reason is logged once (and kept in
``notes``): backward rules, tasks that are not supervised, a candidate that cannot be
built (the evaluator then records it as usual), a continuation whose checkpoint is
missing, or a batch whose shared training failed. A batch that runs out of device
memory is split in halves. A batch may train for ``job_timeout`` times its number of
members, the time the same jobs would have had one after another.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .evaluator import Evaluation, Evaluator, Job, Status, checkpoint_path
from .executors import Executor
from .searchspaces.base import SearchSpace
from .tasks.base import Task
from .tasks.batched import (
    VECTORISE,
    BatchedTrainer,
    Member,
    Unbatchable,
    refusal,
    uses_sgd,
)
from .tasks.supervised import SupervisedTask

log = logging.getLogger("metalearn.batched")


class BatchedExecutor(Executor):
    """Trains up to ``population`` queued jobs at once as one vectorised model;
    ``vectorise`` (``"auto"``, ``"layers"``, ``"vmap"``) as :class:`BatchedTrainer`'s."""

    def __init__(self, evaluator: Evaluator, population: int = 32, vectorise: str = "auto",
                 **options: Any) -> None:
        if options:
            raise UserError(f"unknown option(s) {sorted(options)} of executor 'batched'; "
                            "accepted: population, vectorise")
        if not isinstance(population, int) or isinstance(population, bool) or population < 1:
            raise UserError(f"population must be a whole number >= 1, got {population!r}")
        if vectorise not in VECTORISE:
            raise UserError(f"unknown vectorise {vectorise!r} of executor 'batched'; "
                            f"accepted: {', '.join(VECTORISE)}")
        self.evaluator = evaluator
        self.capacity = population
        self.vectorise = vectorise
        self._queue: list[Job] = []
        #: why jobs ran sequentially, each reason once, in order
        self.notes: list[str] = []
        #: the sizes of the populations trained so far
        self.batches: list[int] = []
        self._refused: dict[str, str] = {}  # task config -> why its model cannot be batched

    def submit(self, job: Job) -> None:
        if job.task is None or job.steps is None or job.seed is None:
            raise ValueError("a job needs its task, steps and seed filled before evaluation")
        self._queue.append(job)

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def wait(self) -> list[Evaluation]:
        """Train the group of the oldest queued job (same task and length), up to capacity."""
        if not self._queue:
            return []
        key = _group_key(self._queue[0])
        group = [job for job in self._queue if _group_key(job) == key][:self.capacity]
        taken = {id(job) for job in group}
        self._queue = [job for job in self._queue if id(job) not in taken]
        return self.evaluate(group)

    def evaluate(self, jobs: Sequence[Job]) -> list[Evaluation]:
        """Evaluations of ``jobs``, in their order: jobs of one task and length train as
        populations of up to ``population`` members."""
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(_group_key(job), []).append(index)
        results: dict[int, Evaluation] = {}
        for indices in groups.values():
            for start in range(0, len(indices), self.capacity):
                chunk = indices[start:start + self.capacity]
                results.update(self._population([(i, jobs[i]) for i in chunk]))
        return [results[i] for i in range(len(jobs))]

    def _population(self, jobs: list[tuple[int, Job]]) -> dict[int, Evaluation]:
        results: dict[int, Evaluation] = {}
        batch: list[tuple[int, Job, Member]] = []
        for index, job in jobs:
            member, reason = self._member(job)
            if member is None:
                if reason:
                    self._note(reason)
                results[index] = self.evaluator.evaluate(job)
            else:
                batch.append((index, job, member))
        if len(batch) == 1 and not self.evaluator.device.startswith("cuda"):
            # on the CPU a population of one is slower than the sequential job (vmap's
            # overhead); on CUDA it is faster (its step replays as a CUDA graph: 6.3x the
            # sequential rate on mnist1d-mlp, 2.3x on cifar10-wrn-10-1, on an H100)
            index, job, _ = batch[0]
            results[index] = self.evaluator.evaluate(job)
        elif batch:
            results.update(self._train(batch))
        return results

    # -- one population --------------------------------------------------------------------

    def _train(self, batch: list[tuple[int, Job, Member]]) -> dict[int, Evaluation]:
        first = batch[0][1]
        start = time.perf_counter()
        out_of_memory = False
        try:
            trainer, metrics = self._fit(batch)
        except torch.cuda.OutOfMemoryError:
            out_of_memory = True  # freed below: the traceback holds the population's tensors
        except UserError:
            raise
        except Unbatchable as err:
            self._refused[_group_key(first)[0]] = str(err)
            self._note(f"not batched: {err}; its jobs run sequentially")
            return {index: self.evaluator.evaluate(job) for index, job, _ in batch}
        except Exception as err:  # the shared part failed: no candidate is to blame
            self._note(f"batched training failed ({type(err).__name__}: {err}); "
                       "its jobs ran sequentially")
            return {index: self.evaluator.evaluate(job) for index, job, _ in batch}
        if out_of_memory:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(batch) < 2:
                return {index: self.evaluator.evaluate(job) for index, job, _ in batch}
            self._note("a population ran out of device memory; it was split in halves")
            half = len(batch) // 2
            return {**self._train(batch[:half]), **self._train(batch[half:])}
        self.batches.append(len(batch))
        wall = (time.perf_counter() - start) / len(batch)
        device = f"{self.evaluator.device} (batch of {len(batch)})"
        results: dict[int, Evaluation] = {}
        for member, ((index, job, _), failure, scores) in enumerate(
                zip(batch, trainer.failures, metrics)):
            result = Evaluation(job=job, status=Status.OK, curve=trainer.member_curve(member),
                                device=device, wall_s=wall)
            if failure is not None or scores is None:
                assert failure is not None
                result.status = Status(failure.status)
                result.error = f"{type(failure.error).__name__}: {failure.error}"[:2000]
            else:
                result.metrics, result.fitness = scores, scores["accuracy"]
                if job.checkpoint and self.evaluator.checkpoint_dir is not None:
                    _save(trainer.member_checkpoint(member),
                          checkpoint_path(self.evaluator.checkpoint_dir, job.key))
            results[index] = result
        return results

    def _fit(self, batch: list[tuple[int, Job, Member]]
             ) -> tuple[BatchedTrainer, list[dict[str, float] | None]]:
        first = batch[0][1]
        task, steps = first.task, first.steps
        assert isinstance(task, SupervisedTask) and steps is not None
        trainer = BatchedTrainer(task, [m for _, _, m in batch], self.evaluator.device,
                                 total_steps=first.total_steps or steps, vectorise=self.vectorise)
        timeout = self.evaluator.job_timeout
        trainer.train(steps, deadline=time.monotonic() + timeout * len(batch) if timeout else None)
        return trainer, trainer.evaluate()

    def _member(self, job: Job) -> tuple[Member | None, str]:
        """The job as a population member, or ``None`` and why it runs sequentially."""
        from .registry import get_space

        task = job.task
        assert task is not None and job.seed is not None
        try:
            space = get_space(job.candidate.space)
            genome = space.parse(job.candidate.text)
            recipe = space.fill(task.default_recipe(), genome)
        except Exception:  # the evaluator records it (invalid) or raises it (user mistake)
            return None, ""
        reason = self._refused.get(task.config_json()) or refusal(task, recipe)
        if reason is not None:
            return None, f"not batched: {reason}; ran sequentially"
        resume = None
        if job.resume_from is not None:
            folder = self.evaluator.checkpoint_dir
            path = checkpoint_path(folder, job.resume_from) if folder is not None else None
            if path is None or not path.exists():
                return None, ""  # the evaluator records the missing checkpoint
            resume = torch.load(path, map_location="cpu", weights_only=True)
        return Member(recipe, job.seed, _rule_key(space, genome, recipe), resume), ""

    def _note(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)
            log.warning("batched executor: %s", note)


def _group_key(job: Job) -> tuple[Any, ...]:
    """Jobs batch together when they share the task and the training length."""
    task: Task | None = job.task
    return (task.config_json() if task is not None else "", job.steps,
            job.total_steps or job.steps)


def _rule_key(space: SearchSpace, genome: Any, recipe: Any) -> Hashable | None:
    """Identity of the optimizer rule and its hyperparameters (members with equal keys may
    share one optimizer); ``None`` for the default SGD, which is vectorised anyway."""
    if uses_sgd(recipe):
        return None
    hparams = tuple(sorted((k, float(v)) for k, v in recipe.hparams.items()))
    parts = getattr(space, "parts", None)
    pairs = list(zip(parts, genome)) if parts is not None else [(space, genome)]
    for part, part_genome in pairs:
        if "optimizer" in part.slots:
            return (part.name, part.key(part_genome), hparams)
    return ("task default", id(recipe.optimizer), hparams)  # one factory shared by every member


def _save(state: dict[str, Any], path: Path) -> None:
    """Atomically, like TrainingState.save: a checkpoint exists whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
