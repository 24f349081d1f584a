"""compare and retrain: the files they write hold the numbers the ledgers hold."""

from __future__ import annotations

import json
import math
import sqlite3
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_cli

import metalearn as ml
from metalearn.compare import BASELINE, default_strategy
from metalearn.evaluator import BASELINE as EVALUATOR_BASELINE
from metalearn.evaluator import Evaluator, Job, baseline_candidate

PNG = b"\x89PNG\r\n\x1a\n"
SEARCH_STEPS, RETRAIN_STEPS = 30, 60



def ledger(path: Path, query: str) -> list[tuple]:
    db = sqlite3.connect(path / "ledger.db")
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


def retrain_tests(path: Path) -> dict[tuple[str, str], dict[int, float]]:
    """(space, key) -> {seed: test accuracy}, read straight from a retraining ledger."""
    found: dict[tuple[str, str], dict[int, float]] = {}
    for space, key, seed, _steps, status, metrics in ledger(
            path, "SELECT space, key, seed, steps, status, metrics FROM evaluations "
                  "WHERE cached = 0 ORDER BY id"):
        if status == "ok" and "test_accuracy" in json.loads(metrics):
            found.setdefault((space, key), {})[seed] = json.loads(metrics)["test_accuracy"]
    return found


@pytest.fixture(scope="module")
def tiny_compare(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("compare")
    result = ml.compare(task="mnist1d-mlp", budget=3, out=out, spaces=["loss", "hparams"],
                        seeds=2, top=2, steps=SEARCH_STEPS, retrain_steps=RETRAIN_STEPS,
                        progress=False)
    return out, result


def test_compare_writes_every_file(tiny_compare: tuple[Path, object]) -> None:
    out, _ = tiny_compare
    for name in ("report.md", "report.html", "comparison.csv", "candidates.csv", "retrain.csv",
                 "search.csv"):
        assert (out / name).stat().st_size > 0, name
    for name in ("best_vs_evaluations", "best_vs_wall_time", "test_accuracy"):
        png = (out / "plots" / f"{name}.png").read_bytes()
        assert png.startswith(PNG) and len(png) > 5000, name
        assert json.loads((out / "plots" / f"{name}.json").read_text())
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3, "every figure inlined"
    assert "src=\"plots/" not in page, "the page must not depend on files beside it"
    markdown = (out / "report.md").read_text()
    for name in ("best_vs_evaluations", "best_vs_wall_time", "test_accuracy"):
        assert f"](plots/{name}.png)" in markdown


def test_comparison_csv_is_one_row_per_space_plus_baseline_with_ledger_numbers(
        tiny_compare: tuple[Path, object]) -> None:
    out, _ = tiny_compare
    table = pd.read_csv(out / "comparison.csv")
    assert table["space"].tolist() == ["loss", "hparams", BASELINE]
    assert table["strategy"].tolist()[:2] == ["cmaes", "cmaes"]
    tests = retrain_tests(out / "retrain")
    for row in table.itertuples():
        values = tests[(row.space, row.key)]
        assert sorted(values) == [0, 1], "every chosen candidate retrained with seeds 0 and 1"
        accs = list(values.values())
        assert row.test_mean == pytest.approx(statistics.mean(accs), abs=1e-12)
        assert row.test_std == pytest.approx(statistics.stdev(accs), abs=1e-12)
        assert (row.test_min, row.test_max) == (min(accs), max(accs))
        base = statistics.mean(tests[(BASELINE, baseline_candidate().key)].values())
        assert row.delta_vs_baseline == pytest.approx(row.test_mean - base, abs=1e-12)
    for space in ("loss", "hparams"):
        rows = ledger(out / "runs" / space, "SELECT fitness FROM evaluations WHERE cached = 0")
        assert len(rows) == 3, "a normal run with the whole budget"
        best = max(f for (f,) in rows if f is not None)
        assert table.set_index("space").loc[space, "search_best_val"] == pytest.approx(best)
        options = ml.load_run(out / "runs" / space).options
        assert (options["budget"], options["steps"], options["seed"]) == (3, SEARCH_STEPS, 0)


def test_space_winner_is_chosen_on_validation_not_test(tiny_compare: tuple[Path, object]) -> None:
    out, _ = tiny_compare
    candidates = pd.read_csv(out / "candidates.csv")
    table = pd.read_csv(out / "comparison.csv").set_index("space")
    for space in ("loss", "hparams"):
        mine = candidates[(candidates["space"] == space) & (candidates["ok"] > 0)]
        assert len(mine) == 2, "the top 2 of each space were retrained"
        assert table.loc[space, "key"] == mine.sort_values("val_mean").iloc[-1]["key"]


def test_retraining_jobs_are_full_length_with_distinct_seeds_and_test_scores(
        tiny_compare: tuple[Path, object]) -> None:
    out, _ = tiny_compare
    rows = ledger(out / "retrain", "SELECT space, key, seed, steps, metrics FROM evaluations")
    retrained = [r for r in rows if r[3] == RETRAIN_STEPS]
    assert len(retrained) == (2 * 2 + 1) * 2, "top 2 of two spaces and the baseline, 2 seeds each"
    for _, _, _, _, metrics in retrained:
        assert 0.0 <= json.loads(metrics)["test_accuracy"] <= 1.0
    reference = [r for r in rows if r[3] == SEARCH_STEPS]
    assert [(r[0], r[2]) for r in reference] == [(BASELINE, 0)], "one reference at search length"


def test_baseline_is_the_tasks_default_recipe(tiny_compare: tuple[Path, object]) -> None:
    out, _ = tiny_compare
    task = ml.get_task("mnist1d-mlp")
    state = task.start(task.default_recipe(), seed=1, device="cpu", total_steps=RETRAIN_STEPS)
    state.train(RETRAIN_STEPS)
    expected = state.evaluate("test")["accuracy"]
    assert retrain_tests(out / "retrain")[(BASELINE, baseline_candidate().key)][1] == expected


def test_plots_show_the_series_of_the_ledgers(tiny_compare: tuple[Path, object]) -> None:
    out, _ = tiny_compare
    by_evals = json.loads((out / "plots" / "best_vs_evaluations.json").read_text())
    by_time = json.loads((out / "plots" / "best_vs_wall_time.json").read_text())
    for space in ("loss", "hparams"):
        rows = ledger(out / "runs" / space,
                      "SELECT status, fitness, wall_s FROM evaluations WHERE cached = 0 ORDER BY id")
        best, running = [], -math.inf
        for status, fitness, _ in rows:
            if status == "ok":
                running = max(running, fitness)
            best.append(running if running > -math.inf else None)
        assert by_evals["series"][space] == {"x": [1, 2, 3], "y": best}
        assert by_time["series"][space]["x"] == pytest.approx(np.cumsum([w for *_, w in rows]))
        assert by_time["series"][space]["y"] == best
    reference = ledger(out / "retrain",
                       f"SELECT fitness FROM evaluations WHERE steps = {SEARCH_STEPS}")[0][0]
    assert by_evals["baseline"] == reference
    spread = json.loads((out / "plots" / "test_accuracy.json").read_text())["groups"]
    table = pd.read_csv(out / "comparison.csv").set_index("space")
    tests = retrain_tests(out / "retrain")
    assert list(spread) == ["loss", "hparams", BASELINE]
    for space, group in spread.items():
        assert group["values"] == list(tests[(space, table.loc[space, "key"])].values())
        assert group["mean"] == pytest.approx(table.loc[space, "test_mean"])


def test_same_compare_again_trains_nothing(tiny_compare: tuple[Path, object]) -> None:
    out, first = tiny_compare
    counts = {p: len(ledger(p, "SELECT id FROM evaluations"))
              for p in (out / "retrain", out / "runs" / "loss", out / "runs" / "hparams")}
    again = ml.compare(task="mnist1d-mlp", budget=3, out=out, spaces=["loss", "hparams"], seeds=2,
                       top=2, steps=SEARCH_STEPS, retrain_steps=RETRAIN_STEPS, progress=False)
    assert {p: len(ledger(p, "SELECT id FROM evaluations")) for p in counts} == counts
    pd.testing.assert_frame_equal(again.table, first.table)  # type: ignore[attr-defined]


def test_job_key_is_unchanged_unless_test_is_set() -> None:
    task = ml.get_task("mnist1d-mlp")
    job = Job(candidate=baseline_candidate(), steps=5, seed=1, task=task)
    old = ml.Candidate(space=BASELINE, text="default", key=baseline_candidate().key)
    from metalearn.candidate import content_key

    expected = content_key(json.dumps([old.space, old.key, task.config_json(), 5, 1, None, None,
                                       False]))
    assert job.key == expected
    assert job.replace(test=True).key != job.key
    assert EVALUATOR_BASELINE == BASELINE


def test_test_job_records_test_accuracy_of_the_trained_model() -> None:
    task = ml.get_task("mnist1d-mlp")
    loss = ml.get_space("loss")
    candidate = loss.candidate(loss.named()["cross_entropy_taylor"])
    result = Evaluator(device="cpu").evaluate(Job(candidate=candidate, steps=20, seed=3, task=task,
                                                  test=True))
    state = task.start(loss.fill(task.default_recipe(), loss.named()["cross_entropy_taylor"]),
                       seed=3, device="cpu", total_steps=20)
    state.train(20)
    assert result.metrics["test_accuracy"] == state.evaluate("test")["accuracy"]
    assert result.fitness == state.evaluate("val")["accuracy"]


def test_each_search_first_evaluates_its_spaces_known_points(
        tiny_compare: tuple[Path, object]) -> None:
    out, _ = tiny_compare
    for space, expected in (("loss", "cross_entropy_taylor"), ("hparams", "default")):
        first = ledger(out / "runs" / space,
                       "SELECT name FROM evaluations WHERE proposal = 0 AND cached = 0")
        assert first == [(expected,)]
    assert "seeded with: loss: `cross_entropy_taylor`; hparams: `default`" in (
        out / "report.md").read_text()


def test_known_points_take_at_most_half_the_budget_and_init_is_checked() -> None:
    from metalearn.compare import known_points, resolve_init
    from metalearn.errors import UserError

    assert known_points("optimizer", 6) == ["sgd", "momentum", "adam"]
    assert known_points("backprop", 1) == ["backprop"]
    assert resolve_init("none", ["loss", "optimizer"], 30) == {"loss": [], "optimizer": []}
    assert resolve_init({"loss": ["cross_entropy_taylor"]}, ["loss", "hparams"], 30) == {
        "loss": ["cross_entropy_taylor"], "hparams": []}
    with pytest.raises(UserError, match="'known'"):
        resolve_init("all", ["loss"], 30)


def test_a_space_that_only_ties_the_baseline_does_not_win(tmp_path: Path) -> None:
    from metalearn.compare import Comparison

    def winner(means: list[float]) -> str:
        table = pd.DataFrame({"space": ["backprop", "optimizer", BASELINE], "test_mean": means})
        return Comparison(out=tmp_path, table=table, candidates=pd.DataFrame(), wall_s=0).winner

    assert winner([0.75, 0.72, 0.75]) == BASELINE  # backprop search kept backprop itself
    assert winner([0.76, 0.72, 0.75]) == "backprop"
    assert winner([0.70, 0.72, float("nan")]) == "optimizer"


def test_default_strategies_fit_the_space() -> None:
    assert default_strategy("loss") == "cmaes"
    assert default_strategy("hparams") == "cmaes"
    assert default_strategy("optimizer") == "evolution"
    assert default_strategy("backprop") == "evolution"
    assert default_strategy("hparams+loss") == "cmaes"


@pytest.mark.slow
def test_compare_command_uses_one_strategy_for_all_and_retrain_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "cmp"
    result = run_cli("compare", "--spaces", "loss,hparams", "--strategy", "random", "--budget", "2",
                     "--steps", "20", "--retrain-steps", "20", "--seeds", "2", "--top", "1",
                     "--out", str(out), "--no-progress", check=True)
    table = pd.read_csv(out / "comparison.csv")
    assert table["strategy"].tolist() == ["random", "random", "-"]
    assert ml.load_run(out / "runs" / "hparams").options["strategy"] == "random"
    assert "baseline" in result.stdout and "report.html" in result.stdout

    # the transfer experiment's command on the same run: top 2, 2 seeds, its own resumable folder
    run = out / "runs" / "loss"
    retrain = run_cli("retrain", str(run), "--top", "2", "--seeds", "2", "--steps", "25",
                      "--no-progress", check=True)
    folder = run / "retrain-mnist1d-mlp"
    summary = pd.read_csv(folder / "summary.csv")
    assert len(summary) == 3 and BASELINE in summary["space"].tolist()
    tests = retrain_tests(folder)
    for row in summary.itertuples():
        accs = list(tests[(row.space, row.key)].values())
        assert row.test_mean == pytest.approx(statistics.mean(accs))
        assert f"{100 * row.test_mean:.2f}" in retrain.stdout
    assert summary["test_mean"].is_monotonic_decreasing
    rows = len(ledger(folder, "SELECT id FROM evaluations"))
    assert rows == 6
    run_cli("retrain", str(run), "--top", "2", "--seeds", "2", "--steps", "25", "--no-progress",
            check=True)
    assert len(ledger(folder, "SELECT id FROM evaluations")) == rows, "resumed: nothing re-run"


def test_compare_rejects_a_strategy_that_cannot_search_a_space_before_training(
        tmp_path: Path) -> None:
    with pytest.raises(ml.UserError, match="continuous"):
        ml.compare(budget=2, out=tmp_path / "x", spaces=["loss", "optimizer"], strategy="cmaes",
                   progress=False)
    assert not (tmp_path / "x" / "runs" / "loss").exists(), "nothing ran before the check"


def test_public_functions_stay_functions_after_their_modules_are_imported() -> None:
    import subprocess
    import sys

    code = ("import metalearn.search, metalearn.compare, metalearn.retrain\n"
            "from metalearn.search import search as direct\n"
            "import metalearn as ml\n"
            "assert ml.search is direct, ml.search\n"
            "assert ml.compare.__module__ == 'metalearn.compare' and callable(ml.compare)\n"
            "assert ml.retrain.__module__ == 'metalearn.retrain' and callable(ml.retrain)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_retrain_transfers_a_runs_best_to_another_task(tiny_compare: tuple[Path, object]) -> None:
    out, _ = tiny_compare
    run = out / "runs" / "loss"
    summary = ml.retrain(run, task="mnist1d-conv", top=1, seeds=2, steps=15, progress=False)
    folder = run / "retrain-mnist1d-conv"
    found = ledger(folder, "SELECT task, space, key, seed, steps FROM evaluations ORDER BY id")
    best = ml.load_run(run).best(k=1).iloc[0]
    assert [(t, s, k, seed, n) for t, s, k, seed, n in found] == [
        ("mnist1d-conv", "loss", best["key"], 0, 15), ("mnist1d-conv", "loss", best["key"], 1, 15),
        ("mnist1d-conv", BASELINE, baseline_candidate().key, 0, 15),
        ("mnist1d-conv", BASELINE, baseline_candidate().key, 1, 15)]
    tests = retrain_tests(folder)
    for row in summary.itertuples():
        assert row.test_mean == pytest.approx(statistics.mean(tests[(row.space, row.key)].values()))
    assert (folder / "summary.csv").exists() and (folder / "retrain.csv").exists()


def test_report_tables_keep_product_candidates_in_one_cell() -> None:
    from metalearn import document as doc

    table = doc.Table(["space", "candidate"], [["hparams+loss", "lr=1 | t0=2"]], code_columns=(1,))
    markdown = doc.Document("t", [table]).to_markdown()
    assert "| hparams+loss | `lr=1 \\| t0=2` |" in markdown
    page = doc.Document("t", [table]).to_html(".")
    assert "<td><code>lr=1 | t0=2</code></td>" in page
