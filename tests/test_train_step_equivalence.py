"""The library's head equals the straightforward form kept in benchmarks/train_step.py (outputs, loss, gradients)."""

import importlib.util
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("train_step_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(module.SHAPES, "small", (16, 24, 8))  # P patches, C channels, CLS channels
    return module


def test_fast_head_equals_the_straightforward_form_on_small_shapes(bench):
    inputs = bench.build_inputs("small", clip_len=80)
    bench.check_same("small", inputs)  # exits with status 1 (failing the test) when any tensor differs


def test_the_check_fails_on_a_small_real_difference(bench, monkeypatch):
    """A time code off by one part in 10^4 in the straightforward form only is caught: the bound is not loose."""
    original = bench.sinusoidal_time_encoding
    monkeypatch.setattr(bench, "sinusoidal_time_encoding", lambda *args: original(*args) * (1 + 1e-4))
    with pytest.raises(SystemExit) as exit_info:
        bench.check_same("small", bench.build_inputs("small", clip_len=80))
    assert exit_info.value.code == 1
