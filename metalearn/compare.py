"""``metalearn compare``: which kind of meta-learning pays off on this problem?

One search per space (``backprop``, ``optimizer``, ``loss`` by default), all with the
same task, evaluation budget and seed; each is a normal resumable run under
``OUT/runs/<space>``. Then the ``top`` candidates of each space are retrained for the
task's full length with several seeds and scored on the held-out test split, next to
the task's own default recipe (the baseline); that retraining is one more run folder,
``OUT/retrain``, so the whole comparison resumes when the same command is run again.
A space's winner is chosen on *validation* accuracy of the retrained seeds and
reported on *test* accuracy, so the test split never steers a choice.

Writes ``report.md``, ``report.html`` (self-contained), ``comparison.csv`` (one row
per space plus the baseline), ``candidates.csv``, ``retrain.csv`` and figures under
``plots/``, each beside a JSON file of the numbers it shows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import document as doc
from .errors import UserError

if TYPE_CHECKING:  # imported where used, so that the command line's --help stays quick
    import pandas as pd

    from .evaluator import Evaluation
    from .run import Run

#: space name of the baseline row (the task's default recipe); equals ``evaluator.BASELINE``
BASELINE = "baseline"

DEFAULT_SPACES = ("backprop", "optimizer", "loss")
#: defaults sized so that ``metalearn compare`` on mnist1d-mlp ends within 10 minutes on 2 CPU cores
DEFAULT_BUDGET = 30
DEFAULT_SEEDS = 3
DEFAULT_TOP = 2
#: a search job trains this fraction of the task's length; retraining trains all of it
SEARCH_FRACTION = 0.25
#: a space's strategy when none is given: CMA-ES on the continuous boxes (as TaylorGLO),
#: regularized evolution on programs (it works on every space)
DEFAULT_STRATEGIES = {"loss": "cmaes", "hparams": "cmaes", "optimizer": "evolution",
                      "backprop": "evolution"}

#: how the verdict names what a space searches
SEARCHED = {"loss": "the loss function", "optimizer": "the optimizer", "backprop": "the backprop rule",
            "hparams": "the hyperparameters"}

COMPARISON_COLUMNS = ("space", "strategy", "evaluations", "failed", "search_best_val",
                      "search_wall_s", "name", "candidate", "key", "seeds", "ok", "val_mean", "test_mean",
                      "test_std", "test_min", "test_max", "delta_vs_baseline", "p_vs_baseline")


def default_strategy(space: str) -> str:
    """The strategy ``compare`` uses for ``space`` when none is given."""
    from .registry import get_space
    from .searchspaces.base import is_continuous

    if space in DEFAULT_STRATEGIES:
        return DEFAULT_STRATEGIES[space]
    return "cmaes" if is_continuous(get_space(space)) else "evolution"


def default_strategy_options(strategy: str, space: str) -> dict[str, Any]:
    """Population sizes fit for a comparison's small budget; they depend on the space alone,
    so a comparison resumed with a larger budget keeps them.

    CMA-ES gets its textbook population ``4 + floor(3 ln n)`` (Hansen 2016) instead of
    TaylorGLO's 20, evolution a population of 10 with tournaments of 3.
    """
    from .registry import get_space

    if strategy == "cmaes":
        dimension = int(getattr(get_space(space), "dimension", 8))
        return {"population_size": 4 + int(3 * math.log(max(dimension, 1)))}
    if strategy == "evolution":
        return {"population_size": 10, "tournament_size": 3}
    return {}


@dataclass
class Comparison:
    """What ``compare`` produced: the tables it wrote and where."""

    out: Path
    table: pd.DataFrame        #: comparison.csv: one row per space, then the baseline
    candidates: pd.DataFrame   #: candidates.csv: every retrained candidate
    wall_s: float
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def winner(self) -> str:
        """The row (space or ``baseline``) with the highest mean test accuracy; a space that
        only ties the baseline (its search kept the default rule, say) does not pay off."""
        ranked = self.table.dropna(subset=["test_mean"]).assign(
            searched=lambda t: t["space"] != BASELINE).sort_values(
            ["test_mean", "searched"], ascending=[False, True], kind="stable")
        return str(ranked.iloc[0]["space"]) if len(ranked) else ""


def known_points(space: str, budget: int) -> list[str]:
    """The named points ``compare`` seeds a search of ``space`` with (``init="known"``): the
    space's known rules in its own order (backprop first, SGD first, cross-entropy's
    expansion), at most half of the budget, so that the search has its own half."""
    from .registry import get_space

    return list(get_space(space).named())[:max(1, budget // 2)]


def resolve_init(init: str | Mapping[str, Sequence[str]], spaces: Sequence[str],
                 budget: int) -> dict[str, list[str]]:
    """Each space's ``init`` points for ``compare``: ``"known"``, ``"none"`` or a mapping."""
    if isinstance(init, str):
        if init not in ("known", "none"):
            raise UserError(f"init must be 'known' (each space's named points) or 'none', "
                            f"got {init!r}")
        return {s: known_points(s, budget) if init == "known" else [] for s in spaces}
    return {s: list(init.get(s, ())) for s in spaces}


def compare(
    task: str = "mnist1d-mlp",
    budget: int = DEFAULT_BUDGET,
    out: str | Path = "runs/compare",
    spaces: Sequence[str] | None = None,
    strategy: str | None = None,
    seed: int = 0,
    seeds: int = DEFAULT_SEEDS,
    top: int = DEFAULT_TOP,
    steps: int | None = None,
    retrain_steps: int | None = None,
    strategy_options: Mapping[str, Mapping[str, Any]] | None = None,
    task_options: Mapping[str, Any] | None = None,
    executor: str = "inline",
    executor_options: Mapping[str, Any] | None = None,
    device: str = "auto",
    job_timeout: float | None = None,
    progress: bool = True,
    init: str | Mapping[str, Sequence[str]] = "known",
) -> Comparison:
    """Search each space on ``task`` with the same budget and seed, retrain, test, report.

    Args:
        task: the task every search and retraining uses.
        budget: evaluations per space.
        out: the comparison's folder (resumed when it exists).
        spaces: the spaces to compare; by default those of backprop, optimizer and loss
            that this installation provides.
        strategy: one strategy for every space; by default each space's own
            (:data:`DEFAULT_STRATEGIES`).
        seed: seed of every search.
        seeds: retraining seeds per candidate (0, 1, ...).
        top: candidates of each space to retrain.
        steps: training steps of a search job (a quarter of the task's length by default).
        retrain_steps: training steps of a retraining job (the task's length by default).
        strategy_options: per space, options of its strategy (replacing the defaults).
        init: what each search evaluates first: ``"known"`` (default) the space's named
            points (:func:`known_points`; "random or seeded with known rules", as Alber et
            al. 2018 seeded backprop evolution), ``"none"``, or per space a list of named
            points or DSL texts.
    """
    from .evaluator import Job, baseline_candidate
    from .registry import get_space, get_strategy, get_task, list_spaces
    from .retrain import retrain_jobs, run_jobs, summarize, top_candidates
    from .search import search

    for name, value in (("budget", budget), ("seeds", seeds), ("top", top)):
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be a whole number >= 1, got {value!r}")
    start = time.perf_counter()
    the_task = get_task(task, **dict(task_options or {}))
    skipped: list[str] = []
    if spaces is None:
        available = set(list_spaces())
        skipped = [s for s in DEFAULT_SPACES if s not in available]
        spaces = [s for s in DEFAULT_SPACES if s in available]
    spaces = list(dict.fromkeys(spaces))
    if not spaces:
        raise UserError("no space to compare; give --spaces (see 'metalearn list')")
    search_steps = steps if steps is not None else max(1, round(the_task.steps * SEARCH_FRACTION))
    seeded = resolve_init(init, spaces, budget)
    plan: dict[str, tuple[str, dict[str, Any]]] = {}
    for space in spaces:
        name = strategy or default_strategy(space)
        given = (strategy_options or {}).get(space)
        options = dict(given) if given is not None else default_strategy_options(name, space)
        get_strategy(name, get_space(space), seed=seed, init=seeded[space],
                     **options)  # fail before any training
        plan[space] = (name, options)

    out = Path(out)
    runs: dict[str, Run] = {}
    for space, (name, options) in plan.items():
        runs[space] = search(space=space, strategy=name, task=task, budget=budget,
                             run=out / "runs" / space, seed=seed, steps=search_steps,
                             init=seeded[space], executor=executor, device=device,
                             strategy_options=options,
                             task_options=task_options, executor_options=executor_options,
                             job_timeout=job_timeout, progress=progress)

    chosen = {space: top_candidates(run, top) for space, run in runs.items()}
    seed_list = list(range(seeds))
    jobs = retrain_jobs([c for cs in chosen.values() for c in cs] + [baseline_candidate()],
                        the_task, seed_list, retrain_steps)
    # the default recipe at the search's length: the line a search has to beat
    reference = Job(candidate=baseline_candidate(), steps=search_steps, seed=seed, task=the_task)
    evaluations = run_jobs(out / "retrain", [*jobs, reference], {
        "kind": "compare-retrain", "task": task, "seeds": seed_list, "top": top,
        "steps": jobs[0].steps}, executor=executor, device=device, job_timeout=job_timeout,
        executor_options=executor_options, progress=progress)
    retrained, reference_eval = evaluations[:-1], evaluations[-1]

    candidates = summarize(retrained)
    table = _comparison_table(plan, runs, candidates, retrained)
    wall = time.perf_counter() - start
    comparison = Comparison(out=out, table=table, candidates=candidates, wall_s=wall)
    comparison.files = _write(comparison, runs, retrained, reference_eval, plan, skipped, {
        "task": task, "budget": budget, "seed": seed, "seeds": seeds, "top": top,
        "search_steps": search_steps, "retrain_steps": jobs[0].steps, "init": seeded})
    for run in runs.values():
        run.close()
    return comparison


def _comparison_table(plan: Mapping[str, tuple[str, dict[str, Any]]], runs: Mapping[str, Run],
                      candidates: pd.DataFrame, retrained: Sequence[Evaluation]) -> pd.DataFrame:
    import pandas as pd
    from scipy import stats

    tests = _test_values(retrained)
    base = candidates[candidates["space"] == BASELINE].iloc[0]
    base_tests = tests.get((BASELINE, base["key"]), [])
    rows = []
    for space, (strategy, _) in plan.items():
        frame = runs[space].to_pandas()
        ok = frame[frame["status"] == "ok"]
        row: dict[str, Any] = {
            "space": space, "strategy": strategy, "evaluations": len(frame),
            "failed": int((frame["status"] != "ok").sum()),
            "search_best_val": float(ok["fitness"].max()) if len(ok) else math.nan,
            "search_wall_s": float(frame["wall_s"].sum()),
        }
        mine = candidates[(candidates["space"] == space) & (candidates["ok"] > 0)]
        if len(mine):
            best = mine.sort_values(["val_mean", "test_mean"], ascending=False, kind="stable").iloc[0]
            row.update({k: best[k] for k in ("name", "candidate", "key", "seeds", "ok",
                                             "val_mean", "test_mean", "test_std", "test_min",
                                             "test_max")})
            row["delta_vs_baseline"] = best["test_mean"] - base["test_mean"]
            values = tests.get((space, best["key"]), [])
            row["p_vs_baseline"] = _welch(values, base_tests, stats)
        rows.append(row)
    baseline_row = {k: base[k] for k in ("name", "candidate", "key", "seeds", "ok", "val_mean",
                                         "test_mean", "test_std", "test_min", "test_max")}
    rows.append({"space": BASELINE, "strategy": "-", "evaluations": 0, "failed": 0,
                 **baseline_row, "candidate": "the task's default recipe",
                 "delta_vs_baseline": 0.0 if math.isfinite(base["test_mean"]) else math.nan})
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))


def _welch(a: Sequence[float], b: Sequence[float], stats: Any) -> float:
    """Two-sided p-value of Welch's t-test; NaN when either side has under two seeds."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if len(set(a)) == 1 and len(set(b)) == 1:
        return 1.0 if a[0] == b[0] else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def _test_values(evaluations: Sequence[Evaluation]) -> dict[tuple[str, str], list[float]]:
    values: dict[tuple[str, str], list[float]] = {}
    for e in evaluations:
        key = (e.job.candidate.space, e.job.candidate.key)
        values.setdefault(key, [])
        if e.ok and "test_accuracy" in e.metrics:
            values[key].append(float(e.metrics["test_accuracy"]))
    return values


def _write(comparison: Comparison, runs: Mapping[str, Run], retrained: Sequence[Evaluation],
           reference: Evaluation, plan: Mapping[str, tuple[str, dict[str, Any]]],
           skipped: Sequence[str], settings: Mapping[str, Any]) -> dict[str, Path]:
    import pandas as pd

    from .plots import accuracy_spread_plot, best_so_far_plot, search_series
    from .retrain import per_job_table

    out = comparison.out
    plots = out / "plots"
    files = {"comparison.csv": out / "comparison.csv", "candidates.csv": out / "candidates.csv",
             "retrain.csv": out / "retrain.csv", "search.csv": out / "search.csv"}
    comparison.table.to_csv(files["comparison.csv"], index=False)
    comparison.candidates.to_csv(files["candidates.csv"], index=False)
    per_job_table(retrained).to_csv(files["retrain.csv"], index=False)

    series = {space: search_series(run.to_pandas()) for space, run in runs.items()}
    pd.concat([s.assign(space=space) for space, s in series.items()]).to_csv(
        files["search.csv"], index=False)
    reference_val = reference.fitness if reference.ok else None
    task = settings["task"]
    for name, column, xlabel, title in (
            ("best_vs_evaluations", "evaluation", "evaluations", f"Search progress on {task}"),
            ("best_vs_wall_time", "wall_s", "training wall time (s)",
             f"Search progress on {task}, by time")):
        files[f"{name}.png"] = best_so_far_plot(
            {space: (s[column].tolist(), s["best_so_far"].tolist()) for space, s in series.items()},
            plots / f"{name}.png", xlabel=xlabel, title=title, baseline=reference_val,
            points={space: (s[column].tolist(), s["fitness"].tolist())
                    for space, s in series.items()})
    tests = _test_values(retrained)
    groups = {str(row.space): tests.get((str(row.space), str(row.key)), [])
              for row in comparison.table.itertuples()}
    files["test_accuracy.png"] = accuracy_spread_plot(
        groups, plots / "test_accuracy.png", baseline_label=BASELINE,
        title=f"Test accuracy after retraining ({settings['seeds']} seeds, "
              f"{settings['retrain_steps']} steps)")

    report = _report(comparison, runs, plan, skipped, settings, reference_val)
    files["report.md"] = out / "report.md"
    files["report.md"].write_text(report.to_markdown())
    files["report.html"] = out / "report.html"
    files["report.html"].write_text(report.to_html(out))
    return files


def _pct(value: Any, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"


def _percent(value: Any) -> str:
    text = _pct(value)
    return text if text == "-" else f"{text}%"


def _report(comparison: Comparison, runs: Mapping[str, Run],
            plan: Mapping[str, tuple[str, dict[str, Any]]], skipped: Sequence[str],
            settings: Mapping[str, Any], reference_val: float | None) -> doc.Document:
    task, table = settings["task"], comparison.table
    base = table[table["space"] == BASELINE].iloc[0]
    report = doc.Document(f"Which kind of meta-learning pays off on {task}?")
    report.add(_verdict(comparison, base))
    cards = []
    for row in table.itertuples():
        if row.space == BASELINE:
            cards.append(doc.Card("baseline", _percent(row.test_mean),
                                  f"± {_pct(row.test_std)} · default recipe"))
            continue
        delta = row.delta_vs_baseline
        tone = "" if delta is None or math.isnan(delta) else ("good" if delta > 0 else "bad")
        cards.append(doc.Card(f"{row.space} ({row.strategy})", _percent(row.test_mean),
                              f"± {_pct(row.test_std)} · {_pct(delta, signed=True)} points", tone))
    report.add(doc.Cards(cards))
    report.add(doc.Figure("plots/test_accuracy.png",
                          "Test accuracy of each space's chosen candidate after retraining: "
                          "one dot per seed, bar = mean ± 1 std."))
    report.add(doc.Heading("Search progress"))
    line = (f" The dashed line is the default recipe at the search's length "
            f"({_pct(reference_val)}% validation accuracy)." if reference_val is not None else "")
    report.add(doc.Paragraph("Best validation accuracy found so far, against evaluations spent "
                             "and against training time (the same budget buys different amounts "
                             f"of compute in different spaces).{line}"))
    report.add(doc.Figure("plots/best_vs_evaluations.png", "Best-so-far against evaluations."))
    report.add(doc.Figure("plots/best_vs_wall_time.png", "Best-so-far against training wall time."))

    report.add(doc.Heading("The numbers"))
    report.add(doc.Paragraph(
        f"Each space's candidate is the one of its top {settings['top']} with the best mean "
        f"*validation* accuracy after retraining; the test columns are that candidate's, over "
        f"{settings['seeds']} seeds. Δ is in accuracy points against the baseline; p is "
        "Welch's t-test over seeds."))
    rows = [[str(r.space), str(r.strategy), str(r.evaluations), str(r.failed),
             _pct(r.search_best_val), _pct(r.test_mean), _pct(r.test_std),
             f"{_pct(r.test_min)}–{_pct(r.test_max)}", _pct(r.delta_vs_baseline, signed=True),
             "-" if r.p_vs_baseline is None or math.isnan(r.p_vs_baseline) else f"{r.p_vs_baseline:.3f}"]
            for r in table.itertuples()]
    winner = comparison.winner
    highlight = next((i for i, r in enumerate(table.itertuples()) if r.space == winner), None)
    report.add(doc.Table(["space", "strategy", "evals", "failed", "search best val %", "test %",
                          "std", "range", "Δ", "p"], rows, highlight=highlight))

    report.add(doc.Heading("What each search found"))
    cand_rows = []
    for c in comparison.candidates.itertuples():
        label = c.name or ""
        cand_rows.append([str(c.space), label, str(c.candidate), f"{c.ok}/{c.seeds}",
                          _pct(c.val_mean), _pct(c.test_mean), _pct(c.test_std)])
    report.add(doc.Table(["space", "name", "candidate", "ok seeds", "val %", "test %", "std"],
                         cand_rows, code_columns=(2,)))

    out = comparison.out
    report.add(doc.Heading("Reuse a discovery"))
    lines = [f"metalearn show {out / 'runs' / space}" for space in runs]
    lines += [f"metalearn export {out / 'runs' / space} -o {space.replace('+', '_')}_best.py"
              for space in runs]
    report.add(doc.Code("\n".join(lines), "bash"))

    report.add(doc.Heading("Settings"))
    items = [
        f"task `{task}`; every search: budget {settings['budget']} evaluations of "
        f"{settings['search_steps']} steps, seed {settings['seed']}",
        "strategies: " + ", ".join(f"{space} `{name}`" + (f" ({_options(opts)})" if opts else "")
                                   for space, (name, opts) in plan.items()),
        "seeded with: " + ("; ".join(f"{space}: " + (", ".join(f"`{p}`" for p in points)
                                                    if points else "nothing (from scratch)")
                                     for space, points in settings["init"].items())),
        f"retraining: top {settings['top']} per space and the baseline, "
        f"{settings['retrain_steps']} steps, seeds 0..{settings['seeds'] - 1}, scored on the test split",
        f"wall time of this invocation: {comparison.wall_s:.0f} s (resumed parts are not re-run)",
    ]
    failures = {space: run.status_counts() for space, run in runs.items()}
    items += [f"{space} statuses: " + ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))
              for space, counts in failures.items()]
    if skipped:
        items.append("not available in this installation, so not compared: " + ", ".join(skipped))
    report.add(doc.Bullets(items))
    return report


def _options(options: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items())


def _verdict(comparison: Comparison, base: Any) -> doc.Verdict:
    table, winner = comparison.table, comparison.winner
    base_text = f"{_pct(base['test_mean'])}% ± {_pct(base['test_std'])}"
    if not winner:
        return doc.Verdict("No run finished well enough to compare.",
                           ["Every retraining job failed; see the statuses under Settings."])
    if winner == BASELINE:
        best = table[table["space"] != BASELINE].dropna(subset=["test_mean"])
        lines = [f"The task's default recipe scores {base_text} test accuracy."]
        if len(best):
            runner_up = best.sort_values("test_mean", ascending=False).iloc[0]
            lines.append(f"The best search, **{runner_up['space']}**, reached "
                         f"{_pct(runner_up['test_mean'])}% ({_pct(runner_up['delta_vs_baseline'], True)} points).")
        lines.append("A larger budget (`--budget`) or longer search jobs (`--steps`) may change this.")
        return doc.Verdict("None of the searches beat the default recipe here.", lines)
    row = table[table["space"] == winner].iloc[0]
    p = row["p_vs_baseline"]
    sure = ("" if p is None or math.isnan(p) else
            f" (p = {p:.3f}, Welch's t-test over seeds" + (": a clear difference)" if p < 0.05
                                                            else ": within seed noise)"))
    return doc.Verdict(
        f"Searching {SEARCHED.get(winner, f'space {winner}')} pays off most: "
        f"{_pct(row['test_mean'])}% test accuracy",
        [f"against {base_text} for the default recipe, {_pct(row['delta_vs_baseline'], True)} "
         f"points{sure}.",
         f"Found by `{row['strategy']}` in {row['evaluations']} evaluations: `{row['candidate']}`"])


def format_table(table: pd.DataFrame) -> str:
    """``comparison.csv`` as a short text table for the terminal."""
    lines = [f"{'space':<14}{'strategy':<11}{'test %':>8}{'std':>7}{'delta':>8}  candidate"]
    for r in table.itertuples():
        text = str(r.candidate) if isinstance(r.candidate, str) else "-"
        text = text if len(text) <= 60 else text[:57] + "..."
        lines.append(f"{r.space:<14}{r.strategy:<11}{_pct(r.test_mean):>8}{_pct(r.test_std):>7}"
                     f"{_pct(r.delta_vs_baseline, signed=True):>8}  {text}")
    return "\n".join(lines)
