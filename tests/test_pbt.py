"""Population-based training: exploit/explore, checkpoints as the only carrier of weights, resume."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ROOT, run_cli

import metalearn as ml
from metalearn import registry
from metalearn.evaluator import Evaluation, Evaluator, Job, Status, checkpoint_path
from metalearn.executors import EXECUTORS, InlineExecutor
from metalearn.report_pbt import schedule
from metalearn.search import search
from metalearn.strategies.base import Strategy
from metalearn.strategies.pbt import PopulationBasedTraining

TASK = "mnist1d-mlp"



def pbt(**options: Any) -> PopulationBasedTraining:
    options.setdefault("interval", 10)
    strategy = ml.get_strategy("pbt", options.pop("space", "hparams"), seed=options.pop("seed", 0),
                               **options)
    assert isinstance(strategy, PopulationBasedTraining)
    return strategy


def tell(strategy: Strategy, jobs: list[Job], scores: list[float | None]) -> None:
    strategy.tell([Evaluation(job=j, status=Status.OK if s is not None else Status.DIVERGED,
                              fitness=s) for j, s in zip(jobs, scores)])


def genome(job: Job) -> tuple[float, ...]:
    return ml.get_space(job.candidate.space).parse(job.candidate.text)


# -- explore, exploit, jobs (no training)

def test_each_interval_is_a_job_that_continues_its_own_checkpoint() -> None:
    strategy = pbt(population_size=4, interval=25, intervals=3, quantile=0.0)
    first = strategy.ask(10)
    assert len(first) == 4, "synchronous: one generation at a time"
    assert [(j.member, j.rung, j.steps, j.total_steps, j.checkpoint, j.resume_from, j.parent)
            for j in first] == [(i, 0, 25, 75, True, None, None) for i in range(4)]
    tell(strategy, first, [0.1, 0.2, 0.3, 0.4])
    second = strategy.ask(10)
    assert [(j.member, j.rung, j.resume_from, j.parent) for j in second] == [
        (j.member, 1, j.key, j.key) for j in first]
    assert [j.candidate for j in second] == [j.candidate for j in first], "no exploitation at quantile 0"
    tell(strategy, second, [0.5] * 4)
    third = strategy.ask(10)
    tell(strategy, third, [0.6] * 4)
    assert strategy.done() and strategy.ask(5) == []
    assert strategy.needed_checkpoints() == {j.key for j in third}


def test_bottom_quantile_copies_a_top_member_and_perturbs_it() -> None:
    strategy = pbt(population_size=8, intervals=5, resample_probability=0.0)
    first = strategy.ask(8)
    tell(strategy, first, [i / 10 for i in range(8)])  # member 7 is the best, member 0 the worst
    second = {j.member: j for j in strategy.ask(8)}
    top = {first[6].key: first[6], first[7].key: first[7]}
    for i in (0, 1):  # ceil(8 * 0.25) = 2 members at the bottom
        source = second[i].resume_from
        assert source in top and second[i].parent == source
        donor, child = genome(top[source]), genome(second[i])
        # x0.8 or x1.2 of the learning rate itself (log10 lr moves by log10 of the factor)
        assert np.isclose(10 ** child[0] / 10 ** donor[0], [0.8, 1.2]).any()
        assert np.isclose(child[1] / donor[1], [0.8, 1.2]).any() or child[1] == 0.99  # clipped
    for i in range(2, 8):
        assert second[i].resume_from == first[i].key and second[i].candidate == first[i].candidate


def test_perturbation_multiplies_the_learning_rate_not_its_logarithm() -> None:
    strategy = pbt(population_size=2, resample_probability=0.0)
    start = (-2.0, 0.5, -5.0)
    lrs = set()
    for _ in range(50):
        child = strategy.explore(start)
        lrs.add(round(10 ** child[0], 10))
        assert round(child[1], 10) in (0.4, 0.6)
        assert round(10 ** child[2] / 1e-5, 10) in (0.8, 1.2)
    assert lrs == {0.008, 0.012}


def test_resampling_happens_with_its_probability_and_stays_in_the_prior() -> None:
    strategy = pbt(population_size=2, resample_probability=0.25)
    start = (-2.0, 0.5, -5.0)
    resampled = total = 0
    for _ in range(400):
        child = strategy.explore(start)
        factors = (10 ** (child[0] + 2), child[1] / 0.5, 10 ** (child[2] + 5))
        resampled += sum(not (math.isclose(f, 0.8) or math.isclose(f, 1.2)) for f in factors)
        total += 3
        assert -4 <= child[0] <= 0 and 0 <= child[1] <= 0.99 and -7 <= child[2] <= -2
    assert 0.2 < resampled / total < 0.3


def test_hyperparameters_option_limits_search_to_those_coordinates() -> None:
    strategy = pbt(population_size=6, hyperparameters="lr,momentum", init=["default"])
    jobs = strategy.ask(6)
    genomes = [genome(j) for j in jobs]
    assert genomes[0] == (-1.0, 0.9, -7.0), "the init point is member 0"
    assert {g[2] for g in genomes} == {-7.0}, "weight decay stays at the init point's"
    assert len({g[0] for g in genomes}) == 6
    tell(strategy, jobs, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert {genome(j)[2] for j in strategy.ask(6)} == {-7.0}
    with pytest.raises(ml.UserError, match="not one of"):
        pbt(hyperparameters="lr,dropout")


def test_failed_member_exploits_whatever_its_rank_and_retires_without_donors() -> None:
    strategy = pbt(population_size=4, intervals=3, quantile=0.25)
    first = strategy.ask(4)
    tell(strategy, first, [0.5, None, 0.6, 0.7])  # member 1 diverged; bottom quantile is member 1
    second = {j.member: j for j in strategy.ask(4)}
    assert second[1].resume_from == first[3].key, "the failed member continues the best's checkpoint"
    assert all(second[i].resume_from == first[i].key for i in (0, 2, 3))
    assert strategy.needed_checkpoints() == {first[0].key, first[2].key, first[3].key}

    doomed = pbt(population_size=3, intervals=3)
    jobs = doomed.ask(3)
    tell(doomed, jobs, [None, None, None])
    assert doomed.ask(3) == [] and doomed.done(), "nobody to continue from: every member retires"


def test_asynchronous_mode_decides_for_a_member_as_soon_as_it_is_told() -> None:
    sync, asynchronous = pbt(population_size=4, intervals=3), pbt(population_size=4, intervals=3,
                                                                  synchronous=False)
    for strategy in (sync, asynchronous):
        jobs = strategy.ask(4)
        tell(strategy, jobs[:1], [0.1])
        nxt = strategy.ask(1)
        if strategy is sync:
            assert nxt == [], "synchronous: waits for the whole generation"
        else:
            assert [(j.member, j.rung, j.resume_from) for j in nxt] == [(0, 1, jobs[0].key)]
    tell(asynchronous, [*jobs[1:], nxt[0]], [0.2, 0.3, 0.9, 0.05])
    # member 1 is ready next; its latest score 0.2 is not the worst (member 0's 0.05 is)
    again = asynchronous.ask(1)[0]
    assert (again.member, again.resume_from) == (1, jobs[1].key)
    again = asynchronous.ask(1)[0]
    assert again.member == 2 and again.resume_from == jobs[2].key
    # member 3 (top) continues; member 0 (bottom) copies member 3's checkpoint, though 3 is running
    tell(asynchronous, [again], [0.4])
    three, zero, two = asynchronous.ask(4)
    assert (three.member, three.resume_from) == (3, jobs[3].key)
    assert (zero.member, zero.resume_from, zero.rung) == (0, jobs[3].key, 1)
    assert two.member == 2 and jobs[3].key in asynchronous.needed_checkpoints()


def test_products_of_discrete_spaces_offer_decisions_and_survive_copying() -> None:
    import copy
    import pickle

    from metalearn.searchspaces.product import DiscreteProductSpace, ProductSpace

    space = ml.get_space("optimizer+backprop")
    assert isinstance(space, DiscreteProductSpace)
    parts = space.parts
    assert space.decisions() == [*parts[0].decisions(), *parts[1].decisions()]  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    for _ in range(5):
        genome = space.sample(rng)
        choices = space.to_decisions(genome)
        assert space.format(space.from_decisions(choices)) == space.format(genome)
    mixed = ml.get_space("hparams+loss")
    assert type(mixed) is ProductSpace and not hasattr(mixed, "decisions")
    assert mixed.lower == (-4.0, 0.0, -7.0, *[-4.0] * 8)  # type: ignore[attr-defined]
    for clone in (copy.deepcopy(space), pickle.loads(pickle.dumps(mixed))):
        assert clone.name in ("optimizer+backprop", "hparams+loss") and type(clone) in (
            DiscreteProductSpace, ProductSpace)


# -- training: checkpoints carry the run exactly

def test_training_in_intervals_equals_training_in_one_job(tmp_path: Path) -> None:
    run = search(space="hparams", strategy="pbt", task=TASK, budget=6, run=tmp_path / "r",
                    steps=60, progress=False,
                    strategy_options={"population_size": 2, "intervals": 3, "quantile": 0.0})
    frame = run.to_pandas()
    assert list(frame["steps"]) == [20] * 6 and list(frame["total_steps"]) == [60] * 6
    task = ml.get_task(TASK)
    for member in (0, 1):
        rows = frame[frame["member"] == member]
        candidate = ml.Candidate(space="hparams", text=rows["candidate"].iloc[0],
                                 key=rows["key"].iloc[0])
        whole = Evaluator(device="cpu").evaluate(Job(candidate=candidate, steps=60, seed=0, task=task))
        assert whole.ok and rows["fitness"].iloc[-1] == whole.fitness
        assert whole.metrics["loss"] == rows["metrics"].iloc[-1]["loss"]


class SpyExecutor(InlineExecutor):
    """Inline, but records what the checkpoint folder holds when each job starts."""

    seen: list[tuple[Job, bool, int]] = []

    def wait(self) -> list[Evaluation]:
        job = self._queue[0]
        folder = self.evaluator.checkpoint_dir
        assert folder is not None
        exists = job.resume_from is None or checkpoint_path(folder, job.resume_from).exists()
        files = len(list(folder.glob("*.pt"))) if folder.exists() else 0
        SpyExecutor.seen.append((job, exists, files))
        return super().wait()


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> type[SpyExecutor]:
    SpyExecutor.seen = []
    monkeypatch.setitem(EXECUTORS, "spy", lambda evaluator, **_: SpyExecutor(evaluator))
    return SpyExecutor


def test_checkpoints_exist_when_continued_and_disk_stays_bounded_over_50_intervals(
        tmp_path: Path, spy: type[SpyExecutor]) -> None:
    population, intervals = 3, 50
    run = search(space="hparams", strategy="pbt", task=TASK, budget=population * intervals,
                    run=tmp_path / "r", steps=intervals * 2, executor="spy", progress=False,
                    strategy_options={"population_size": population, "intervals": intervals})
    assert len(spy.seen) == population * intervals
    assert all(exists for _, exists, _ in spy.seen), "a job continued from a missing checkpoint"
    assert max(files for *_, files in spy.seen) <= population
    frame = schedule(run.path)
    assert set(frame["status"]) == {"ok"}
    exploited = ((frame["source"] >= 0) & (frame["source"] != frame["member"])).sum()
    assert exploited >= 10, "the run must exercise exploitation"
    last = frame[frame["interval"] == intervals - 1]
    kept = {p.stem for p in (tmp_path / "r" / "checkpoints").glob("*.pt")}
    assert kept == set(last["job_key"]), "exactly each member's final checkpoint remains"


class Revisit(Strategy):
    """Asks A, then B from A, then A again (a duplicate), then C from A; needs only the latest."""

    plan = [(None, 3), (0, 3), (None, 3), (0, 4)]  # (continue which told job, steps)

    name = "revisit"

    def __init__(self, space: Any, seed: int = 0, **_: Any) -> None:
        super().__init__(space, seed)
        self.keys: list[str] = []
        self.candidate = space.candidate(space.named()["default"])

    def _ask(self) -> Job | None:
        if self.asked > self.told or self.asked >= len(self.plan):
            return None
        resume, steps = self.plan[self.asked]
        return Job(candidate=self.candidate, steps=steps, checkpoint=True,
                   resume_from=self.keys[resume] if resume is not None else None)

    def _tell(self, evaluation: Evaluation) -> None:
        self.keys.append(evaluation.job.key)

    def needed_checkpoints(self) -> set[str]:
        return {self.keys[-1]}


def test_a_duplicate_whose_checkpoint_was_cleaned_up_is_trained_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.STRATEGIES, "revisit", Revisit)
    run = search(space="hparams", strategy="revisit", task=TASK, budget=10, run=tmp_path / "r",
                    progress=False)
    frame = run.to_pandas(include_cached=True)
    assert len(frame) == 4 and frame["job_key"].iloc[0] == frame["job_key"].iloc[2]
    assert not frame["cached"].iloc[2], "A's checkpoint had been deleted: A must run again"
    assert list(frame["status"]) == ["ok"] * 4, "C continued from A's checkpoint"


# -- resume

def _pbt_search(run: Path, budget: int, **options: Any) -> ml.Run:
    return search(space="hparams", strategy="pbt", task=TASK, budget=budget, run=run, steps=40,
                     progress=False, strategy_options={"population_size": 3, "intervals": 4,
                                                       **options})


def _keys_and_fitness(run: ml.Run) -> list[tuple[int, str, float]]:
    frame = run.to_pandas(include_cached=True)
    return list(zip(frame["proposal"], frame["job_key"], frame["fitness"]))


def test_stopped_run_resumes_from_the_last_completed_interval(tmp_path: Path) -> None:
    stopped = _pbt_search(tmp_path / "stopped", budget=7)
    assert len(stopped) == 7
    needed = {p.stem for p in (tmp_path / "stopped" / "checkpoints").glob("*.pt")}
    resumed = _pbt_search(tmp_path / "stopped", budget=12)
    whole = _pbt_search(tmp_path / "whole", budget=12)
    assert _keys_and_fitness(resumed) == _keys_and_fitness(whole)
    frame = resumed.to_pandas()
    first_new = frame[frame["proposal"] >= 7]
    assert set(first_new["resume_from"].iloc[:2]) <= needed, "continued from kept checkpoints"
    assert frame.groupby("member")["rung"].max().tolist() == [3, 3, 3]


def test_asynchronous_run_resumes_identically(tmp_path: Path) -> None:
    _pbt_search(tmp_path / "stopped", budget=5, synchronous=False)
    resumed = _pbt_search(tmp_path / "stopped", budget=12, synchronous=False)
    whole = _pbt_search(tmp_path / "whole", budget=12, synchronous=False)
    assert _keys_and_fitness(resumed) == _keys_and_fitness(whole)


def _ledger_count(run: Path) -> int:
    try:
        db = sqlite3.connect(f"file:{run / 'ledger.db'}?mode=ro", uri=True)
        try:
            return int(db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_sigkill_midway_then_resume_gives_the_uninterrupted_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    args = ["search", "--space", "hparams", "--strategy", "pbt", "--task", TASK, "--budget", "24",
            "--steps", "240", "--option", "population_size=4", "--option", "intervals=6",
            "--no-progress"]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the same arithmetic in every process
    process = subprocess.Popen([sys.executable, "-m", "metalearn.cli", *args, "--run", str(killed)],
                               cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and _ledger_count(killed) < 9:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 9 <= _ledger_count(killed) < 24, "the kill must land midway"
    run_cli(*args, "--run", str(killed), check=True)
    run_cli(*args, "--run", str(whole), check=True)
    assert _keys_and_fitness(ml.load_run(killed)) == _keys_and_fitness(ml.load_run(whole))
    assert len(list((killed / "checkpoints").glob("*.pt"))) == 4


# -- PBT against the same configurations trained without exploitation

def pbt_versus_static(folder: Path, seed: int, steps: int, population: int = 8,
                      intervals: int = 10) -> tuple[float, float]:
    """Best final member of PBT over lr and momentum, and the best of its initial configurations
    each trained the whole length without exploitation (same seed, same data order)."""
    run = search(space="hparams", strategy="pbt", task=TASK, budget=population * intervals,
                    run=folder / f"pbt-s{seed}", seed=seed, steps=steps, progress=False,
                    strategy_options={"population_size": population, "intervals": intervals,
                                      "hyperparameters": "lr,momentum"})
    frame = schedule(run.path)
    assert len(frame) == population * intervals
    pbt_best = float(frame.loc[frame["interval"] == intervals - 1, "fitness"].max())
    space, task, evaluator = ml.get_space("hparams"), ml.get_task(TASK), Evaluator(device="cpu")
    static = []
    for text in frame.loc[frame["interval"] == 0, "candidate"]:
        job = Job(candidate=space.candidate(space.parse(text)), steps=steps, seed=seed, task=task)
        static.append(evaluator.evaluate(job).score(failed=0.0))
    return pbt_best, max(static)


@pytest.mark.slow
def test_pbt_beats_or_ties_the_best_static_configuration_over_three_seeds(tmp_path: Path) -> None:
    steps = int(os.environ.get("METALEARN_PBT_STEPS", "400"))
    results = [pbt_versus_static(tmp_path, seed, steps) for seed in (0, 1, 2)]
    print(f"\nPBT vs static, population 8, {steps} steps in 10 intervals (seed: pbt, static)")
    for seed, (ours, theirs) in enumerate(results):
        print(f"  seed {seed}: {ours:.4f} {theirs:.4f} ({ours - theirs:+.4f})")
    assert all(ours >= theirs for ours, theirs in results)
