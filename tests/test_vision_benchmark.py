"""benchmarks/vision_epoch.py: its FLOP count, and a CPU smoke run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from metalearn.tasks.models import MODELS

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "vision_epoch.py"


def load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vision_epoch", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("vision_epoch", module)
    spec.loader.exec_module(module)
    return module


def test_wrn_16_2_forward_flops_are_counted_layer_by_layer():
    bench = load_benchmark()
    # stem 32*32*16*27; three groups (first conv from half the channels, three full 3x3 convs,
    # a 1x1 shortcut) of 33,554,432 MACs each (the spatial halving and the
    # channel doubling cancel); classifier 128*10; 2 FLOPs per multiply-add
    macs = 32 * 32 * 16 * 27 + 3 * (32 * 32 * 32 * (144 + 3 * 288 + 16)) + 128 * 10
    assert macs == 101_106_944
    model = MODELS["wrn"]((3, 32, 32), 10, depth=16, width=2)
    assert bench.count_flops(model, (3, 32, 32)) == 2 * macs


@pytest.mark.slow
def test_benchmark_runs_on_cpu_for_a_smoke_check(capsys):
    bench = load_benchmark()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert bench.main(["--device", "cpu", "--steps", "1", "--warmup", "0",
                           "--batch-size", "8", "--workers", "0"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "0.202 GFLOP forward per image" in out
    assert "5625 steps/epoch" in out  # ceil(45000 / 8)
    assert "ratio plain / metalearn:" in out
    assert out.count("s/epoch") >= 2
