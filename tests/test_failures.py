"""A bad candidate is a recorded status, never the end of a search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import metalearn as ml
from metalearn.evaluator import Evaluator, Job, Status
from metalearn.report import show
from metalearn.searchspaces.base import ContinuousSpace


class FlakyLoss(ContinuousSpace):
    """One number x: x < 0.3 raises in the loss, 0.3 <= x < 0.6 returns NaN, else cross-entropy."""

    name = "flaky-loss"
    slots = ("loss",)
    names = ("x",)
    lower = (0.0,)
    upper = (1.0,)

    def build(self, genome: tuple[float, ...]):  # type: ignore[no-untyped-def]
        (x,) = genome

        def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            if x < 0.3:
                raise RuntimeError("candidate code failed")
            ce = torch.nn.functional.cross_entropy(logits, targets)
            return ce * float("nan") if x < 0.6 else ce

        return loss


def test_diverging_taylorglo_loss_is_recorded_as_diverged() -> None:
    space = ml.get_space("loss")
    task = ml.get_task("mnist1d-mlp")
    job = Job(candidate=space.candidate((0, 0, 0, 0, 0, 1e30, 0, 0)), steps=50, seed=0, task=task)
    evaluation = Evaluator(device="cpu").evaluate(job)
    assert evaluation.status is Status.DIVERGED and evaluation.fitness is None
    assert "nan" in evaluation.error


def test_invalid_candidate_is_recorded_as_invalid() -> None:
    task = ml.get_task("mnist1d-mlp")
    bad = ml.Candidate(space="loss", text="t0=1 t1=2", key="k")  # cannot be built: too few numbers
    evaluation = Evaluator(device="cpu").evaluate(Job(candidate=bad, steps=5, seed=0, task=task))
    assert evaluation.status is Status.INVALID and "t2" in evaluation.error


def test_search_goes_on_through_errors_and_divergence(tmp_path: Path) -> None:
    ml.register_space("flaky-loss", FlakyLoss)
    run = ml.search(space="flaky-loss", strategy="random", task="mnist1d-mlp", budget=12,
                    steps=30, run=tmp_path / "flaky", progress=False)
    frame = run.to_pandas()
    assert len(frame) == 12
    xs = frame["candidate"].str.removeprefix("x=").astype(float)
    expected = np.where(xs < 0.3, "error", np.where(xs < 0.6, "diverged", "ok"))
    assert list(frame["status"]) == list(expected)
    assert {"error", "diverged", "ok"} <= set(frame["status"]), "the seed should draw all three"
    assert frame.loc[frame.status != "ok", "fitness"].isna().all()
    assert (frame.loc[frame.status == "ok", "fitness"] > 0.1).all()
    text = show(run.path)
    assert "error" in text and "candidate code failed" in text and "diverged" in text
