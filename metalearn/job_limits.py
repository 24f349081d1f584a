"""Time limits and worker deaths, as the executors that run jobs in other processes record them.

A job's time limit (``--job-timeout``) is first enforced inside the job: the
training loop raises ``JobTimeout`` between steps. A job stuck *inside* one step
(a hung kernel, a candidate that sleeps) never reaches that check, so the
``pool`` and ``ray`` executors also stop it from the outside: once the job has
run for its limit plus a grace period, its worker is killed and the job is
recorded as ``timeout``. The grace leaves room for what the inner check does not
count (building the model, evaluating on the validation split, saving a checkpoint).

A worker that dies (killed, segfault, host out of memory) takes only its job
with it: the job is run once more on another worker, and recorded as ``error``
with the reason if that attempt dies too.
"""

from __future__ import annotations

from .evaluator import Evaluation, Job, Status

#: attempts a job gets when its worker dies under it (the first run and one retry)
MAX_ATTEMPTS = 2


def default_grace(job_timeout: float) -> float:
    """Seconds past its limit after which a job is killed from the outside."""
    return max(10.0, 0.25 * job_timeout)


def timed_out(job: Job, elapsed: float, limit: float, grace: float, device: str = "") -> Evaluation:
    """The record of a job whose worker was killed for running past ``limit + grace`` seconds."""
    return Evaluation(
        job=job, status=Status.TIMEOUT, device=device, wall_s=elapsed,
        error=(f"JobTimeout: stopped from the outside after {elapsed:.1f} s (limit {limit:g} s "
               f"+ grace {grace:g} s); the job did not return between training steps"))


def worker_died(job: Job, reason: str, device: str = "", wall_s: float = 0.0) -> Evaluation:
    """The record of a job whose worker died under every attempt it was given."""
    return Evaluation(job=job, status=Status.ERROR, device=device, wall_s=wall_s,
                      error=f"WorkerDied: {reason} (the job was tried {MAX_ATTEMPTS} times)")
