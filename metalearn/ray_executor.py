"""The ``ray`` executor: jobs as Ray tasks, on this machine or on a cluster.

``--executor ray [--address HOST:PORT] [--workers N]``: every job is one Ray task
that asks for ``num_cpus`` CPUs and, when the evaluator's device is CUDA,
``num_gpus`` GPUs (fractions share a GPU: ``num_gpus=0.5`` puts two jobs on each).
Ray sets ``CUDA_VISIBLE_DEVICES`` for the task, so a worker trains on ``cuda``.
At most ``capacity`` jobs are in flight (what the cluster can run at once, or
``--workers``), and results are taken as they finish (``ray.wait``), so an
asynchronous strategy refills a worker the moment it frees. Workers only return
:class:`~metalearn.evaluator.Evaluation` objects; the driver alone writes the ledger.

Without ``--address`` a local cluster is started (``--workers`` CPUs, all cores
by default) and stopped with the search. With one, the driver joins that cluster:
every node needs the same environment (``pip install metalearn[ray]``, the same
datasets), and population-based training's checkpoints a folder every node shares.

Faults (see ``job_limits``): a worker that dies is retried once by Ray
(``max_retries=1``), then the job is recorded as ``error``; a job past its time
limit plus grace is cancelled with its worker killed (``ray.cancel(force=True)``)
and recorded as ``timeout``. The clock of that limit starts when the job starts
on a worker, not when it is queued: workers report their starts to a small actor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .evaluator import Evaluation, Evaluator, Job, Status
from .executors import Executor
from .job_limits import MAX_ATTEMPTS, default_grace, timed_out, worker_died

#: seconds between checks of the time limits while jobs run
POLL_S = 1.0
#: seconds between looks at the cluster's size (it may grow or shrink)
RESIZE_S = 10.0


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("the ray executor needs Ray: pip install 'metalearn[ray]'") from None
    return ray


class RayExecutor(Executor):
    """Jobs as Ray tasks; results consumed as they finish.

    Args:
        evaluator: its device, checkpoint folder and time limit are given to every task.
        address: a running cluster (``HOST:PORT``, ``auto``, ``ray://HOST:PORT``);
            ``None`` starts a local one.
        workers: jobs in flight at most (and a local cluster's CPUs); the cluster's
            size by default.
        num_cpus: CPUs each job asks for.
        num_gpus: GPUs each job asks for when the device is CUDA (1 by default; a
            fraction shares a GPU).
        grace: seconds past the time limit after which a stuck job is cancelled.
    """

    def __init__(self, evaluator: Evaluator, address: str | None = None,
                 workers: int | None = None, num_cpus: float = 1.0,
                 num_gpus: float | None = None, grace: float | None = None,
                 **options: Any) -> None:
        if options:
            raise UserError(f"unknown option(s) {sorted(options)} of the ray executor; accepted: "
                            "address, workers, num_cpus, num_gpus, grace")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                    or workers < 1):
            raise UserError(f"workers must be a whole number >= 1, got {workers!r}")
        cuda = evaluator.device.startswith("cuda")
        num_gpus = (1.0 if cuda else 0.0) if num_gpus is None else float(num_gpus)
        if num_cpus <= 0 or num_gpus < 0 or (cuda and num_gpus == 0) or (not cuda and num_gpus):
            raise UserError(f"a job needs num_cpus > 0 and, on a CUDA device only, num_gpus > 0; "
                            f"got num_cpus={num_cpus}, num_gpus={num_gpus} on {evaluator.device}")
        ray = self._ray = _ray()
        self._owns_connection = not ray.is_initialized()
        if self._owns_connection:
            quiet: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
            if address is None:
                cpus = workers * num_cpus if workers is not None else None
                ray.init(num_cpus=cpus, include_dashboard=False, **quiet)
            else:
                ray.init(address=address, **quiet)
        self.workers, self.num_cpus, self.num_gpus = workers, float(num_cpus), num_gpus
        if num_gpus and address is None and not ray.cluster_resources().get("GPU"):
            if self._owns_connection:
                ray.shutdown()
            raise UserError(f"device {evaluator.device} was asked for, but the local Ray cluster "
                            "has no GPU; use --device cpu, or --address of a cluster with GPUs")
        self.device = "cuda" if cuda else "cpu"  # Ray picks the GPU and sets CUDA_VISIBLE_DEVICES
        self.limit = evaluator.job_timeout
        self.grace = grace if grace is not None else default_grace(self.limit or 0.0)
        threads = max(1, int(num_cpus))
        self._config = (self.device, evaluator.checkpoint_dir, self.limit, threads)
        self._task = ray.remote(_evaluate_on_worker).options(
            num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=MAX_ATTEMPTS - 1,
            retry_exceptions=False, name="metalearn-job")
        self._starts = (ray.remote(num_cpus=0)(StartLog).remote()
                        if self.limit is not None else None)
        self._refs: dict[Any, _InFlight] = {}
        self._done: list[Evaluation] = []
        self._count = 0
        self._capacity, self._sized = 1, float("-inf")

    # -- the Executor interface
    @property
    def capacity(self) -> int:
        """``workers`` if given, else the jobs the cluster can run at once (it may grow)."""
        if self.workers is not None:
            return self.workers
        if time.monotonic() - self._sized > RESIZE_S:
            resources = self._ray.cluster_resources()
            slots = resources.get("CPU", 0.0) / self.num_cpus
            if self.num_gpus:
                slots = min(slots, resources.get("GPU", 0.0) / self.num_gpus)
            self._capacity, self._sized = max(1, int(slots + 1e-9)), time.monotonic()
        return self._capacity

    @capacity.setter
    def capacity(self, jobs: int) -> None:
        self.workers = jobs

    def submit(self, job: Job) -> None:
        ref = self._task.remote(self._config, self._count, job, self._starts)
        self._refs[ref] = _InFlight(self._count, job, time.monotonic())
        self._count += 1

    def wait(self) -> list[Evaluation]:
        ray = self._ray
        while not self._done and self._refs:
            ready, _ = ray.wait(list(self._refs), num_returns=1, timeout=self._until_check())
            if ready:  # take every job that has finished, not only the first
                ready, _ = ray.wait(list(self._refs), num_returns=len(self._refs), timeout=0)
            for ref in ready:
                self._collect(ref)
            if self.limit is not None and self._refs:
                self._enforce_limit()
        done, self._done = self._done, []
        return done

    @property
    def in_flight(self) -> int:
        return len(self._refs) + len(self._done)

    def close(self) -> None:
        ray = self._ray
        if not ray.is_initialized():
            return
        for ref in self._refs:
            ray.cancel(ref, force=True)
        self._refs.clear()
        if self._starts is not None:
            ray.kill(self._starts)
            self._starts = None
        if self._owns_connection:
            ray.shutdown()

    # -- results and faults
    def _collect(self, ref: Any) -> None:
        ray = self._ray
        job = self._refs.pop(ref).job
        try:
            evaluation: Evaluation = ray.get(ref)
        except ray.exceptions.RayTaskError as err:  # the task raised: not the candidate's fault
            cause = getattr(err, "cause", None)
            if isinstance(cause, UserError):
                raise UserError(str(cause)) from None
            raise RuntimeError(f"a Ray worker failed outside the evaluator on {job.candidate}:\n"
                               f"{err}") from None
        except ray.exceptions.TaskCancelledError:
            return
        except ray.exceptions.OutOfMemoryError as err:  # the node's memory monitor killed it
            evaluation = Evaluation(job=job, status=Status.OOM, device=self.device,
                                    error=f"OutOfMemoryError: {_first_line(err)}")
        except ray.exceptions.RayError as err:  # the worker or its node died, twice
            evaluation = worker_died(job, f"{type(err).__name__}: {_first_line(err)}", self.device)
        evaluation.job = job
        self._done.append(evaluation)

    def _until_check(self) -> float | None:
        """How long ``ray.wait`` may block before the time limits need a look."""
        if self.limit is None:
            return None
        # a job cannot have run for longer than it has been submitted: until the oldest
        # could be late, the start log need not be asked (no cost to jobs within limits)
        oldest = min(flight.submitted for flight in self._refs.values())
        until = oldest + self.limit + self.grace - time.monotonic()
        return POLL_S if until <= 0 else until + 0.01

    def _suspects(self) -> list[Any]:
        assert self.limit is not None
        now = time.monotonic()
        return [ref for ref, flight in self._refs.items()
                if now - flight.submitted > self.limit + self.grace]

    def _enforce_limit(self) -> None:
        assert self.limit is not None and self._starts is not None
        ray = self._ray
        suspects = {self._refs[ref].ticket: ref for ref in self._suspects()}
        if not suspects:
            return
        try:
            elapsed: dict[int, float] = ray.get(self._starts.elapsed.remote(list(suspects)))
        except ray.exceptions.RayError:  # the start log is lost (its node died): count from submission
            now = time.monotonic()
            elapsed = {t: now - self._refs[ref].submitted for t, ref in suspects.items()}
        for ticket, seconds in elapsed.items():
            ref = suspects[ticket]
            if seconds <= self.limit + self.grace or ray.wait([ref], timeout=0)[0]:
                continue  # within its limit (it was queued a while), or it finished just now
            job = self._refs.pop(ref).job
            ray.cancel(ref, force=True)
            self._done.append(timed_out(job, seconds, self.limit, self.grace, self.device))


@dataclass(frozen=True)
class _InFlight:
    ticket: int
    job: Job
    submitted: float


class StartLog:
    """A Ray actor where workers note when they start a job, on one clock (the actor's)."""

    def __init__(self) -> None:
        self.started: dict[int, float] = {}

    def mark(self, ticket: int) -> None:
        self.started[ticket] = time.monotonic()  # a retried job's clock starts again

    def elapsed(self, tickets: Sequence[int]) -> dict[int, float]:
        now = time.monotonic()
        return {t: now - self.started[t] for t in tickets if t in self.started}


_EVALUATORS: dict[tuple[Any, ...], Evaluator] = {}


def _evaluate_on_worker(config: tuple[str, Path | None, float | None, int], ticket: int,
                        job: Job, starts: Any) -> Evaluation:
    """A Ray task: evaluate one job (the worker process keeps its evaluator and datasets)."""
    import torch

    if starts is not None:
        starts.mark.remote(ticket)
    device, checkpoint_dir, job_timeout, threads = config
    torch.set_num_threads(threads)
    if config not in _EVALUATORS:
        _EVALUATORS[config] = Evaluator(device=device, checkpoint_dir=checkpoint_dir,
                                        job_timeout=job_timeout)
    return _EVALUATORS[config].evaluate(job)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
