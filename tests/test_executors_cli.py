"""The executor flags of ``metalearn search``: --executor, --address, --workers."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from metalearn.cli import main


class _Called(Exception):
    pass


def test_address_and_workers_reach_the_executor(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def search(**kwargs: Any) -> None:
        seen.update(kwargs)
        raise _Called

    # the module, whatever the package attribute of that name is (the public function)
    monkeypatch.setattr(importlib.import_module("metalearn.search"), "search", search)
    with pytest.raises(_Called):
        main(["search", "--space", "hparams", "--strategy", "random", "--budget", "3",
              "--executor", "ray", "--address", "head:6379", "--workers", "4",
              "--job-timeout", "30"])
    assert seen["executor"] == "ray" and seen["job_timeout"] == 30.0
    assert seen["executor_options"] == {"address": "head:6379", "workers": 4}
    with pytest.raises(_Called):
        main(["search", "--space", "hparams", "--strategy", "random", "--budget", "3"])
    assert seen["executor"] == "inline" and seen["executor_options"] == {}


@pytest.mark.parametrize("flags, message", [
    (["--workers", "2"], "--address and --workers need --executor pool"),
    (["--executor", "pool", "--address", "head:6379"], "--address is for --executor ray"),
    (["--executor", "pool", "--workers", "0"], "--workers: expected a whole number >= 1"),
    (["--executor", "spark"], "unknown executor 'spark'; accepted: "),
])
def test_executor_mistakes_are_one_line_and_exit_2(flags: list[str], message: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["search", "--space", "hparams", "--strategy", "random", "--budget", "1",
                 "--steps", "1", "--run", str(tmp_path / "R"), "--no-progress", *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_ray_executor_without_ray_installed_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    import sys

    from metalearn.errors import UserError
    from metalearn.evaluator import Evaluator
    from metalearn.executors import make_executor

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(UserError, match=r"pip install 'metalearn\[ray\]'"):
        make_executor("ray", Evaluator("cpu"))
