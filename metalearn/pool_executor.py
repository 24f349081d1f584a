"""The ``pool`` executor: one machine, a worker process per GPU (or per CPU share).

``--executor pool [--workers N]``: N worker processes, started with the ``spawn``
method (CUDA cannot be used in a forked child), each pinned to one device:
with ``--device cuda`` worker *i* trains on ``cuda:(i mod #GPUs)`` (N defaults to
the number of GPUs); on the CPU each worker gets ``cpu_count // N`` threads (N
defaults to the number of cores). A worker keeps its datasets in memory between
jobs, as the inline executor does.

Why not ``concurrent.futures.ProcessPoolExecutor``: when one of its workers dies
the whole pool is broken and every job in flight is lost, and a single worker
cannot be killed. Here each worker has its own pipe, so the driver knows which
job each worker holds and when it started, kills a worker whose job is stuck past
its time limit, and re-runs the job of a worker that died (see ``job_limits``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import traceback
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .evaluator import Evaluation, Evaluator, Job
from .executors import Executor
from .job_limits import MAX_ATTEMPTS, default_grace, timed_out, worker_died


def worker_devices(device: str, workers: int | None = None) -> list[str]:
    """The device of each worker: every visible GPU in turn for ``"cuda"``, else ``device``."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise UserError(f"workers must be a whole number >= 1, got {workers!r}")
    if device == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise UserError("device 'cuda' was asked for, but no CUDA device is visible")
        gpus = [f"cuda:{i}" for i in range(count)]
    elif device.startswith("cuda:"):
        gpus = [device]
    else:
        return [device] * (workers or os.cpu_count() or 1)
    return [gpus[i % len(gpus)] for i in range(workers or len(gpus))]


@dataclass
class _Ticket:
    """A submitted job and the attempts it has been given."""

    job: Job
    attempts: int = 0
    died_on: int | None = None   # the worker whose death ended the last attempt


@dataclass
class _Worker:
    index: int
    device: str
    process: BaseProcess
    conn: Connection
    ticket: int | None = None
    started: float | None = None  # when the worker began the job (its "started" message)


class PoolExecutor(Executor):
    """Worker processes on this machine, one job each at a time.

    Args:
        evaluator: its device, checkpoint folder and time limit are given to every worker.
        workers: number of worker processes (GPUs, or CPU cores, by default).
        threads: torch threads per worker (``cpu_count // workers`` by default).
        grace: seconds past the time limit after which a stuck job's worker is killed.
    """

    def __init__(self, evaluator: Evaluator, workers: int | None = None,
                 threads: int | None = None, grace: float | None = None,
                 **options: Any) -> None:
        if options:
            raise UserError(f"unknown option(s) {sorted(options)} of the pool executor; accepted: "
                            "workers, threads, grace (--address is for --executor ray)")
        self.devices = worker_devices(evaluator.device, workers)
        self.capacity = len(self.devices)
        self.limit = evaluator.job_timeout
        self.grace = grace if grace is not None else default_grace(self.limit or 0.0)
        self.threads = threads or max(1, (os.cpu_count() or 1) // self.capacity)
        self._config = (evaluator.checkpoint_dir, self.limit, self.threads)
        self._context = mp.get_context("spawn")
        self._workers = [self._start(i, device) for i, device in enumerate(self.devices)]
        self._tickets: dict[int, _Ticket] = {}
        self._queue: deque[int] = deque()
        self._done: list[Evaluation] = []
        self._count = 0

    # -- the Executor interface
    def submit(self, job: Job) -> None:
        self._tickets[self._count] = _Ticket(job)
        self._queue.append(self._count)
        self._count += 1
        self._dispatch()

    def wait(self) -> list[Evaluation]:
        while not self._done and self._tickets:
            self._dispatch()
            self._poll()
        done, self._done = self._done, []
        return done

    @property
    def in_flight(self) -> int:
        return len(self._tickets) + len(self._done)

    def close(self) -> None:
        for worker in self._workers:
            try:
                worker.conn.send(None)
            except OSError:
                pass
        deadline = time.monotonic() + 5.0
        for worker in self._workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            self._stop(worker)
        self._workers = []

    # -- workers
    def _start(self, index: int, device: str) -> _Worker:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(target=_serve, args=(theirs, device, *self._config),
                                        name=f"metalearn-worker-{index}", daemon=True)
        process.start()
        theirs.close()
        return _Worker(index, device, process, ours)

    def _stop(self, worker: _Worker) -> None:
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=5.0)
        worker.conn.close()

    def _replace(self, worker: _Worker) -> None:
        """Kill ``worker`` (if it still lives) and start a fresh process in its place.

        Its pipe is closed with it, so nothing the old process might still say is ever
        read: a job that was killed or retried can never deliver a second result.
        """
        self._stop(worker)
        self._workers[worker.index] = self._start(worker.index, worker.device)

    # -- scheduling
    def _dispatch(self) -> None:
        idle = [w for w in self._workers if w.ticket is None]
        while self._queue and idle:
            ticket = self._queue.popleft()
            died_on = self._tickets[ticket].died_on
            # a retry goes to another worker (another GPU) when one is free
            worker = next((w for w in idle if w.index != died_on), idle[0])
            idle.remove(worker)
            try:
                worker.conn.send((ticket, self._tickets[ticket].job))
            except OSError:  # the idle worker had died: replace it and try again
                self._queue.appendleft(ticket)
                self._replace(worker)
                idle.append(self._workers[worker.index])
                continue
            worker.ticket, worker.started = ticket, None
            self._tickets[ticket].attempts += 1

    def _poll(self) -> None:
        busy = [w for w in self._workers if w.ticket is not None]
        if not busy:
            return
        wait([w.conn for w in busy] + [w.process.sentinel for w in busy], self._until_limit(busy))
        for worker in busy:
            self._read(worker)
            if worker.ticket is not None and not worker.process.is_alive():
                self._died(worker)
        if self.limit is not None:
            self._enforce_limit(busy)

    def _until_limit(self, busy: list[_Worker]) -> float | None:
        """Seconds until the first started job passes its limit plus grace (None: no limit)."""
        if self.limit is None:
            return None
        now = time.monotonic()
        ends = [w.started + self.limit + self.grace - now for w in busy if w.started is not None]
        return max(0.0, min(ends)) if ends else None  # a "started" message wakes us otherwise

    def _read(self, worker: _Worker) -> None:
        while worker.ticket is not None:
            try:
                if not worker.conn.poll():
                    return
                message = worker.conn.recv()
            except (EOFError, OSError):
                return  # the worker died; its sentinel tells
            kind, ticket = message[0], message[1]
            if ticket != worker.ticket:
                continue  # not the job this worker holds now
            if kind == "started":
                worker.started = time.monotonic()
                continue
            job = self._tickets.pop(ticket).job
            worker.ticket = worker.started = None
            if kind == "raised":
                _, _, users_mistake, text, trace = message
                if users_mistake:
                    raise UserError(text)
                raise RuntimeError(f"worker {worker.index} failed outside the evaluator on "
                                   f"{job.candidate}:\n{trace}")
            evaluation: Evaluation = message[2]
            evaluation.job = job
            self._done.append(evaluation)

    def _died(self, worker: _Worker) -> None:
        assert worker.ticket is not None
        ticket, state = worker.ticket, self._tickets[worker.ticket]
        code = worker.process.exitcode
        how = (f"signal {signal.Signals(-code).name}" if code is not None and code < 0
               else f"exit code {code}")
        wall = time.monotonic() - worker.started if worker.started is not None else 0.0
        worker.ticket = worker.started = None
        self._replace(worker)
        state.died_on = worker.index
        if state.attempts >= MAX_ATTEMPTS:
            del self._tickets[ticket]
            self._done.append(worker_died(state.job, f"worker process {worker.index} died ({how})",
                                          worker.device, wall))
        else:
            self._queue.appendleft(ticket)

    def _enforce_limit(self, busy: list[_Worker]) -> None:
        assert self.limit is not None
        now = time.monotonic()
        for worker in busy:
            if worker.ticket is None or worker.started is None:
                continue
            elapsed = now - worker.started
            if elapsed > self.limit + self.grace:
                job = self._tickets.pop(worker.ticket).job
                worker.ticket = worker.started = None
                self._replace(worker)
                self._done.append(timed_out(job, elapsed, self.limit, self.grace, worker.device))


def _serve(conn: Connection, device: str, checkpoint_dir: Path | None, job_timeout: float | None,
           threads: int) -> None:
    """A worker process: evaluate the jobs the driver sends until it sends ``None`` or goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    torch.set_num_threads(threads)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    evaluator = Evaluator(device=device, checkpoint_dir=checkpoint_dir, job_timeout=job_timeout)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the driver is gone
        if message is None:
            return
        ticket, job = message
        conn.send(("started", ticket))
        try:
            evaluation = evaluator.evaluate(job)
        except Exception as err:  # a user's mistake (UserError) or a bug outside the candidate
            conn.send(("raised", ticket, isinstance(err, UserError), str(err),
                       traceback.format_exc()))
            continue
        conn.send(("done", ticket, evaluation))
