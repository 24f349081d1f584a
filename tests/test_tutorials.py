"""Every tutorial under docs/tutorials is a script the test suite runs (small), and the page shows it."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT

import metalearn as ml

TUTORIALS = ROOT / "docs" / "tutorials"
PNG = b"\x89PNG\r\n\x1a\n"


def rows(run: Path, columns: str = "space, name, candidate, task, status, fitness, member",
         cached: bool = False) -> list[tuple]:
    """Evaluations of a run in order (with those answered from the ledger when ``cached``)."""
    where = "" if cached else "WHERE cached = 0"
    db = sqlite3.connect(run / "ledger.db")
    try:
        return db.execute(f"SELECT {columns} FROM evaluations {where} ORDER BY id").fetchall()
    finally:
        db.close()


def check_search_in_python(cwd: Path, out: str) -> None:
    found = rows(cwd / "runs" / "tutorial-loss")
    assert len(found) == 3 and found[0][1] == "cross_entropy_taylor", "init point first"
    best = max(f for *_, f, _ in found if f is not None)
    assert f"retrained by hand: {best:.4f}" in out


def check_compare_searches(cwd: Path, out: str) -> None:
    folder = cwd / "runs" / "tutorial-compare"
    table = pd.read_csv(folder / "comparison.csv")
    assert table["space"].tolist() == ["backprop", "optimizer", "loss", "baseline"]
    assert table["test_mean"].notna().iloc[-1]
    assert f"pays off most: {table.sort_values('test_mean').iloc[-1]['space']}" in out
    assert (folder / "report.html").read_text().count("data:image/png;base64,") == 3


def check_custom_space(cwd: Path, out: str) -> None:
    found = rows(cwd / "runs" / "tutorial-label-smoothing")
    assert [r[0] for r in found] == ["label-smoothing"] * 3
    assert found[0][2] == "epsilon=0.0" and found[0][1] == "none"
    both = rows(cwd / "runs" / "tutorial-hparams-label-smoothing")
    assert len(both) == 2 and all(" | epsilon=" in r[2] for r in both)


def check_custom_task(cwd: Path, out: str) -> None:
    found = rows(cwd / "runs" / "tutorial-spirals")
    assert {r[3] for r in found} == {"spirals-tanh"} and len(found) == 3
    assert re.search(r"default recipe: validation accuracy 0\.\d{3}", out)


def check_pbt_epbt(cwd: Path, out: str) -> None:
    pbt = rows(cwd / "runs" / "tutorial-pbt")
    assert len(pbt) == 6 and {r[6] for r in pbt} == {0, 1, 2}
    epbt = rows(cwd / "runs" / "tutorial-epbt", cached=True)
    assert {r[0] for r in epbt} == {"hparams+loss"}
    assert len(epbt) == 6, "each of 3 members trained 2 intervals"
    space = ml.get_space("hparams+loss")
    start = space.format(space.named()["default+cross_entropy_taylor"])
    assert epbt[0][2] == start, "member 0 starts from the known point"
    assert (cwd / "runs" / "tutorial-epbt" / "schedule.png").read_bytes().startswith(PNG)


def check_run_on_ray(cwd: Path, out: str) -> None:
    found = rows(cwd / "runs" / "tutorial-ray")
    assert len(found) == 4 and {r[0] for r in found} == {"optimizer"}


def check_export_reuse(cwd: Path, out: str) -> None:
    for name in ("discovered_loss.py", "discovered_optimizer.py"):
        assert "import torch" in (cwd / name).read_text()
    assert re.search(r"test accuracy with the discovered loss and optimizer: 0\.\d{3}", out)


#: script -> (what it needs: spaces, strategies, executors), its check
CASES: dict[str, tuple[dict[str, list[str]], Callable[[Path, str], None]]] = {
    "search_in_python": ({"spaces": ["loss"], "strategies": ["cmaes"]}, check_search_in_python),
    "compare_searches": ({"spaces": ["backprop", "optimizer", "loss"]}, check_compare_searches),
    "custom_space": ({"strategies": ["random", "cmaes"]}, check_custom_space),
    "custom_task": ({"spaces": ["loss"], "strategies": ["cmaes"]}, check_custom_task),
    "pbt_epbt": ({"spaces": ["hparams", "loss"], "strategies": ["pbt", "epbt"]}, check_pbt_epbt),
    "run_on_ray": ({"spaces": ["optimizer"], "strategies": ["evolution"], "executors": ["ray"]},
                   check_run_on_ray),
    "export_reuse": ({"spaces": ["loss", "optimizer"], "strategies": ["cmaes", "evolution"]},
                     check_export_reuse),
}


def missing(needs: dict[str, list[str]]) -> list[str]:
    from metalearn.executors import EXECUTORS

    have = {"spaces": ml.list_spaces(), "strategies": ml.list_strategies(),
            "executors": list(EXECUTORS)}
    gone = [f"{kind[:-1]} {name!r}" for kind, names in needs.items()
            for name in names if name not in have[kind]]
    if "ray" in needs.get("executors", []):
        try:
            import ray  # noqa: F401
        except ImportError:
            gone.append("package ray")
    return gone


def test_every_tutorial_script_has_a_page_that_includes_it_and_a_test() -> None:
    scripts = {p.stem for p in TUTORIALS.glob("*.py")}
    pages = {p.stem for p in TUTORIALS.glob("*.md")}
    assert scripts == pages == set(CASES)
    for name in scripts:
        page = (TUTORIALS / f"{name}.md").read_text()
        assert f'--8<-- "docs/tutorials/{name}.py"' in page, f"{name}.md must show the tested code"
    nav = (ROOT / "mkdocs.yml").read_text()
    assert all(f"tutorials/{name}.md" in nav for name in scripts)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_tutorial_runs(name: str, tmp_path: Path) -> None:
    needs, check = CASES[name]
    gone = missing(needs)
    if gone:
        pytest.skip(f"tutorial {name} needs {', '.join(gone)}, not available in this installation")
    env = {**os.environ, "METALEARN_TUTORIAL_TINY": "1", "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, str(TUTORIALS / f"{name}.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    check(tmp_path, done.stdout)


@pytest.mark.slow
def test_docs_build_strict(tmp_path: Path) -> None:
    if shutil.which("mkdocs") is None and not (Path(sys.executable).parent / "mkdocs").exists():
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    mkdocs = shutil.which("mkdocs") or str(Path(sys.executable).parent / "mkdocs")
    done = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    page = (tmp_path / "site" / "tutorials" / "search_in_python" / "index.html").read_text()
    assert "cross_entropy_taylor" in page, "the tutorial's code is on its page"
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "Search" in api and "retrain" in api, "the API reference is generated from docstrings"
