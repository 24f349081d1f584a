"""EPBT: evolution of hyperparameters and TaylorGLO losses during training, and its schedule plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import metalearn as ml
from metalearn.cli import main
from metalearn.evaluator import Evaluation, Job, Status
from metalearn.report_pbt import plot_schedule
from metalearn.search import search
from metalearn.strategies.epbt import EvolutionaryPBT
from metalearn.strategies.pbt import Member

SPACE = "hparams+loss"
CE = "default+cross_entropy_taylor"



def epbt(**options: Any) -> EvolutionaryPBT:
    options.setdefault("interval", 10)
    strategy = ml.get_strategy("epbt", SPACE, seed=options.pop("seed", 0), **options)
    assert isinstance(strategy, EvolutionaryPBT)
    return strategy


def tell(strategy: EvolutionaryPBT, jobs: list[Job], scores: list[float | None]) -> None:
    strategy.tell([Evaluation(job=j, status=Status.OK if s is not None else Status.DIVERGED,
                              fitness=s) for j, s in zip(jobs, scores)])


def vector(job_or_genome: Any) -> np.ndarray:
    space = ml.get_space(SPACE)
    genome = (space.parse(job_or_genome.candidate.text) if isinstance(job_or_genome, Job)
              else job_or_genome)
    return np.asarray(space.to_vector(genome))  # type: ignore[attr-defined]


def test_elites_continue_and_children_take_the_fitter_parents_checkpoint() -> None:
    # tournaments over the whole population always pick the best; no mutation: children = the best
    strategy = epbt(population_size=6, intervals=3, tournament_size=6, mutation_sigma=0.0,
                    reset_probability=0.0, novelty_period=0, init=[CE])
    first = strategy.ask(6)
    tell(strategy, first, [0.1, 0.6, None, 0.3, 0.5, 0.2])  # member 2 failed
    second = {j.member: j for j in strategy.ask(6)}
    for elite in (1, 4, 3):  # half of the population, by fitness
        assert (second[elite].resume_from, second[elite].candidate) == (first[elite].key,
                                                                        first[elite].candidate)
    for child in (0, 2, 5):
        assert second[child].resume_from == first[1].key == second[child].parent
        assert np.array_equal(vector(second[child]), vector(first[1]))
    assert strategy.needed_checkpoints() == {first[1].key, first[4].key, first[3].key}


def test_crossover_takes_exactly_half_the_genes_from_the_second_parent() -> None:
    strategy = epbt(population_size=4)
    space = ml.get_space(SPACE)
    a = space.from_vector(np.full(11, -1.5))  # type: ignore[attr-defined]
    b = space.from_vector(np.full(11, -0.5))  # type: ignore[attr-defined]
    for _ in range(20):
        child = vector(strategy.crossover(a, b))
        assert sorted(child.tolist()) == [-1.5] * 6 + [-0.5] * 5


def test_mutation_is_multiplicative_in_natural_units_with_rare_resets() -> None:
    strategy = epbt(population_size=4, mutation_sigma=0.1, reset_probability=0.0)
    space = ml.get_space(SPACE)
    start = space.parse("log10_lr=-2.0 momentum=0.5 log10_weight_decay=-5.0 | t0=0.5 t1=0.5 t2=1.0 "
                        "t3=-1.0 t4=1.3 t5=2.0 t6=-2.0 t7=0.0")
    base = vector(start)
    lr_ratios, t2_ratios = [], []
    for _ in range(300):
        child = vector(strategy.mutate(start))
        lr_ratios.append(10 ** child[0] / 10 ** base[0])
        t2_ratios.append(child[5] / base[5])
        assert child[10] == 0.0, "zero times a factor stays zero"
    assert abs(np.std(np.log(lr_ratios)) - 0.1) < 0.02  # lr * exp(0.1 N)
    assert abs(np.std(t2_ratios) - 0.1) < 0.02 and abs(np.mean(t2_ratios) - 1.0) < 0.02

    resetting = epbt(population_size=4, reset_probability=1.0)
    lower, upper = space.bounds  # type: ignore[attr-defined]
    child = vector(resetting.mutate(start))
    assert np.all((lower <= child) & (child <= upper)) and child[10] != 0.0


def member(index: int, coordinates: list[float], score: float) -> Member:
    space = ml.get_space(SPACE)
    genome = space.from_vector(np.array([-1.0, 0.9, -7.0, *coordinates]))  # type: ignore[attr-defined]
    return Member(index, genome, key=f"k{index}", score=score, position=1, reported=True)


def test_novelty_selection_keeps_the_best_and_drops_its_near_twin() -> None:
    strategy = epbt(population_size=8)
    best = member(0, [0.5] * 8, 0.9)
    twin = member(1, [0.51] * 8, 0.89)
    far = member(2, [-3.0] * 8, 0.5)
    near = member(3, [0.6] * 8, 0.4)
    ranked = [best, twin, far, near]
    assert [m.index for m in strategy.novelty_selection(ranked, 2)] == [0, 2]
    assert [m.index for m in ranked[:2]] == [0, 1], "fitness selection would keep the twins"


def test_novelty_pulsation_alternates_every_period() -> None:
    strategy = epbt(population_size=4, novelty_period=2)
    pulses = []
    for generation in range(1, 9):
        strategy.generation = generation
        pulses.append(strategy.novelty_generation())
    assert pulses == [False, False, True, True, False, False, True, True]
    off = epbt(population_size=4, novelty_period=0)
    off.generation = 3
    assert not off.novelty_generation()


def test_epbt_needs_a_continuous_space() -> None:
    with pytest.raises(ml.UserError, match="continuous"):
        ml.get_strategy("epbt", "optimizer", interval=5)


def test_epbt_runs_end_to_end_and_draws_each_members_loss_schedule(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    population, intervals = 4, 4
    run = search(space=SPACE, strategy="epbt", task="mnist1d-mlp", budget=population * intervals,
                    run=tmp_path / "r", steps=intervals * 25, init=[CE], progress=False,
                    strategy_options={"population_size": population, "intervals": intervals})
    assert len(run) == population * intervals and run.best()["fitness"].iloc[0] > 0.3

    png = tmp_path / "schedule.png"
    frame = plot_schedule(run.path, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert frame.groupby("member").size().to_dict() == {m: intervals for m in range(population)}
    assert [list(s) for _, s in frame.groupby("member")["step"]] == [[25, 50, 75, 100]] * population
    loss = [f"loss.t{i}" for i in range(8)]
    assert set(loss) <= set(frame.columns)
    # the values drawn are the candidates trained: lr in natural units, loss parameters as given
    space = ml.get_space(SPACE)
    for row in frame.to_dict("records"):
        v = space.to_vector(space.parse(row["candidate"]))  # type: ignore[attr-defined]
        assert row["hparams.lr"] == pytest.approx(10 ** v[0])
        assert [row[c] for c in loss] == list(v[3:])
    # evolution changed losses during training: a member's loss differs between its intervals
    changed = frame.groupby("member")[loss].nunique().max(axis=1)
    assert (changed > 1).any()
    checkpoints = list((tmp_path / "r" / "checkpoints").glob("*.pt"))
    assert len(checkpoints) == population

    assert main(["show", str(run.path), "--schedule", "--plot", str(tmp_path / "again.png")]) == 0
    out = capsys.readouterr().out
    assert all(f"member {m}" in out for m in range(population)) and "t7=" in out
    assert out.count("     0-25  ") == population and (tmp_path / "again.png").exists()
