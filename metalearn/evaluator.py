"""Jobs, evaluations and the evaluator that turns every failure of a candidate into a status.

A :class:`Job` is candidate x task x steps x seed, optionally continuing from the
checkpoint of an earlier job (population-based training). The :class:`Evaluator`
never raises for a bad candidate: it returns an :class:`Evaluation` whose status
says what happened. It raises only for the user's own mistakes (a missing data
folder, say), as a :class:`~metalearn.errors.UserError`.
"""

from __future__ import annotations

import dataclasses
import enum
import gc
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .candidate import Candidate, content_key
from .errors import UserError
from .tasks.base import Diverged, JobTimeout, Task


class MissingCheckpoint(RuntimeError):
    """A continuation job whose checkpoint is gone: an ``error`` of that job, not of the user."""


class Status(enum.StrEnum):
    """What became of a job."""

    OK = "ok"              #: trained and evaluated; ``fitness`` is validation accuracy
    DIVERGED = "diverged"  #: NaN or Inf in the loss or the parameters
    INVALID = "invalid"    #: the candidate cannot be built for this model
    ERROR = "error"        #: an exception in the candidate's code during training
    TIMEOUT = "timeout"    #: the job ran past its time limit
    OOM = "oom"            #: the device ran out of memory

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Job:
    """One training run to score.

    ``steps`` and ``seed`` left as ``None`` are filled by the search (the task's
    default length, the run's seed). ``resume_from`` is the key of an earlier job
    whose checkpoint this one continues; ``checkpoint`` asks for one to be saved.
    ``total_steps`` is the length decay schedules count towards (``steps`` if unset).
    ``test`` also scores the held-out test split (``metrics["test_accuracy"]``); only
    retraining and reports set it, never a search.
    """

    candidate: Candidate
    steps: int | None = None
    seed: int | None = None
    task: Task | None = None
    total_steps: int | None = None
    resume_from: str | None = None
    checkpoint: bool = False
    parent: str | None = None
    rung: int | None = None
    member: int | None = None
    proposal: int = -1
    test: bool = False

    @property
    def key(self) -> str:
        """Identity of the work: equal keys give equal results, so one is answered from the ledger."""
        task = self.task.config_json() if self.task is not None else ""
        identity: list[object] = [self.candidate.space, self.candidate.key, task, self.steps,
                                  self.seed, self.total_steps, self.resume_from, self.checkpoint]
        if self.test:  # only when set, so the keys of existing jobs stay what they were
            identity.append("test")
        return content_key(json.dumps(identity))

    def replace(self, **changes: Any) -> Job:
        return dataclasses.replace(self, **changes)


@dataclass
class Evaluation:
    """The result of one job, as the ledger keeps it."""

    job: Job
    status: Status
    fitness: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    curve: list[tuple[int, float]] = field(default_factory=list)
    wall_s: float = 0.0
    device: str = ""
    error: str = ""
    cached: bool = False
    id: int | None = None

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def score(self, failed: float = float("-inf")) -> float:
        """Fitness, or ``failed`` for a job that did not finish well."""
        return self.fitness if self.fitness is not None and self.ok else failed


#: space name of the candidate that stands for the task's own default recipe (the baseline)
BASELINE = "baseline"


def baseline_candidate() -> Candidate:
    """The task's default recipe as a candidate: compared and retrained like any other."""
    return Candidate(space=BASELINE, text="default", key=content_key(f"{BASELINE}:default"),
                     name=BASELINE)


def checkpoint_path(checkpoint_dir: Path, job_key: str) -> Path:
    return checkpoint_dir / f"{job_key}.pt"


class Evaluator:
    """Runs one job with failure capture.

    Args:
        device: where to train (``"cpu"``, ``"cuda"``, ``"cuda:1"``); ``"auto"`` picks CUDA when present.
        checkpoint_dir: where jobs that ask for it save, and continuations load, checkpoints.
        job_timeout: seconds a job may train before it is stopped as ``timeout``.
    """

    def __init__(self, device: str = "auto", checkpoint_dir: str | Path | None = None,
                 job_timeout: float | None = None) -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.job_timeout = job_timeout

    def evaluate(self, job: Job) -> Evaluation:
        from .registry import get_space

        if job.task is None or job.steps is None or job.seed is None:
            raise ValueError("a job needs its task, steps and seed filled before evaluation")
        task, start = job.task, time.perf_counter()
        result = Evaluation(job=job, status=Status.OK, device=self.device)
        state = None
        out_of_memory: Evaluation | None = None
        try:
            if job.candidate.space == BASELINE:
                recipe = task.default_recipe()
            else:
                space = get_space(job.candidate.space)
                recipe = space.fill(task.default_recipe(), space.parse(job.candidate.text))
        except Exception as err:  # the candidate cannot be built at all
            return self._failed(result, Status.INVALID, err, start)
        try:
            state = task.start(recipe, job.seed, self.device,
                               total_steps=job.total_steps or job.steps)
            if job.resume_from is not None:
                state.load(self._checkpoint(job.resume_from))
        except MissingCheckpoint as err:
            return self._failed(result, Status.ERROR, err, start)
        except UserError:
            raise  # the user's own mistake, e.g. a missing data folder
        except torch.cuda.OutOfMemoryError as err:
            out_of_memory = self._failed(result, Status.OOM, err, start)
        except Exception as err:  # the candidate cannot be built for this model
            return self._failed(result, Status.INVALID, err, start)
        if out_of_memory is not None:
            del state
            return _release_device(out_of_memory)
        assert state is not None  # every other way out of the block above has returned
        try:
            deadline = time.monotonic() + self.job_timeout if self.job_timeout else None
            state.train(job.steps, deadline=deadline)
            result.metrics = state.evaluate()
            result.fitness = result.metrics["accuracy"]
            if job.test:
                test = state.evaluate("test")
                result.metrics.update(test_accuracy=test["accuracy"], test_loss=test["loss"])
            if job.checkpoint and self.checkpoint_dir is not None:
                state.save(checkpoint_path(self.checkpoint_dir, job.key))
        except Diverged as err:
            return self._failed(result, Status.DIVERGED, err, start, state)
        except JobTimeout as err:
            return self._failed(result, Status.TIMEOUT, err, start, state)
        except torch.cuda.OutOfMemoryError as err:
            out_of_memory = self._failed(result, Status.OOM, err, start)
        except Exception as err:
            return self._failed(result, Status.ERROR, err, start, state)
        if out_of_memory is not None:
            del state
            return _release_device(out_of_memory)
        result.curve = list(state.curve)
        result.wall_s = time.perf_counter() - start
        return result

    def _checkpoint(self, job_key: str) -> Path:
        if self.checkpoint_dir is None:
            raise MissingCheckpoint("this job continues from a checkpoint, but the evaluator has "
                                    "no checkpoint folder")
        path = checkpoint_path(self.checkpoint_dir, job_key)
        if not path.exists():
            raise MissingCheckpoint(f"checkpoint {path} to continue from does not exist")
        return path

    @staticmethod
    def _failed(result: Evaluation, status: Status, err: BaseException, start: float,
                state: Any = None) -> Evaluation:
        result.status, result.fitness = status, None
        result.error = f"{type(err).__name__}: {err}"[:2000]
        if state is not None:
            result.curve = list(getattr(state, "curve", []))
        result.wall_s = time.perf_counter() - start
        return result


def _release_device(result: Evaluation) -> Evaluation:
    """Give the device's memory back after an out-of-memory job, so the next job has it.

    Called outside the ``except`` block on purpose: until the handled exception is
    dropped, its traceback holds the training frames and, through them, the model
    and optimizer (the PyTorch FAQ's advice on recovering from OOM).
    """
    gc.collect()  # tensors caught in reference cycles (hooks, closures) too
    torch.cuda.empty_cache()
    return result
