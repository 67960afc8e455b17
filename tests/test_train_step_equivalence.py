"""The library's head equals the straightforward form kept in benchmarks/train_step.py (outputs, loss, gradients)."""

import importlib.util
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"


def test_fast_head_equals_the_straightforward_form_on_small_shapes(monkeypatch):
    spec = importlib.util.spec_from_file_location("train_step_benchmark", BENCHMARK)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setitem(bench.SHAPES, "small", (16, 24, 8))  # P patches, C channels, CLS channels
    inputs = bench.build_inputs("small", clip_len=80)
    bench.check_same("small", inputs)  # exits with status 1 (failing the test) when any tensor differs
