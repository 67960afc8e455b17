"""benchmarks/gpu_check.py runs through on the CPU (--device cpu --quick) and writes every figure, so that the one
command a GPU session has time for cannot rot before a GPU arrives."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check") / "gpu_check.json"
    environment = dict(os.environ, OMP_NUM_THREADS="1", MVFORMER_NO_PROGRESS="1")
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)],
                          env=environment, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return json.loads(out.read_text()), done.stdout


@pytest.mark.slow
def test_every_section_completes_and_writes_every_field(quick_run):
    report, stdout = quick_run
    script = load_script()  # puts benchmarks/ on sys.path, where its parts live
    setup, table = sys.modules["gpu_check_setup"], sys.modules["gpu_check_table"]
    assert report["quick"] and report["device"]["kind"] == "cpu" and 0 < report["elapsed_s"] <= report["budget_s"]
    assert list(report["sections"]) == list(script.SECTIONS)
    assert report["checks"] and all(report["checks"].values()), report["checks"]
    for name, section in report["sections"].items():
        assert section["status"] == "ok", (name, section)
        assert section["seconds"] > 0 and section["error"] is None
        missing = [key for key in setup.SECTION_FIELDS[name] if key not in section]
        assert not missing, (name, missing)
    assert stdout.count("| section | what | result |") == 1  # one table
    assert len(stdout.strip().splitlines()) == 3 + len(table.table_rows(report))  # title, header, rule, rows


@pytest.mark.slow
def test_the_figures_are_sane(quick_run):
    report, _ = quick_run
    sections = report["sections"]
    head = sections["head_equivalence"]
    assert head["passed"] and head["dtype"] == "float64"

    demo = sections["demo_training"]
    assert demo["loss_finite"] and demo["loss_falls"] and len(demo["losses"]) == demo["epochs"]
    assert demo["resume"] == "bit-identical" and demo["resume_max_abs_diff"] == 0  # the CPU is deterministic
    assert demo["interrupted_at"]["epoch"] >= 1 and demo["seconds_per_run"] > 0

    penn = sections["penn_step"]
    assert penn["steps_per_epoch"] == 1140 and penn["epochs"] == 500
    for label in ("vit_b8", "vit_s16"):
        entry = penn["backbones"][label]
        assert entry["status"] == "ok", entry
        assert set(entry["steps"]) == {"fp32", "bf16", "fp16"}
        assert all(rate > 0 for rate in entry["backbone_frames_per_s"].values())
        for sources in entry["steps"].values():
            assert set(sources) == {"on_the_fly", "from_tokens"}
            for row in sources.values():
                assert row["s_per_step"] > 0 and row["peak_mib"] is None  # no allocator statistics on the CPU
                assert math.isclose(row["epoch_min"], row["s_per_step"] * 1140 / 60)
                assert math.isclose(row["epochs_500_h"], row["epoch_min"] * 500 / 60)
    assert penn["backbones"]["efficientnet_lite0"]["status"] in ("ok", "skipped")

    tests = sections["cuda_tests"]
    assert tests["returncode"] == 0 and tests["failed"] == tests["errors"] == tests["passed"] == 0
    assert tests["skipped"] > 0  # collected, and skipped without a GPU

    run = sections["torchrun"]
    assert run["backend"] == "gloo" and run["resume"] == "bit-identical" and run["export_equal"]

    loader = sections["loader"]
    assert all(rate > 0 for rate in loader["decoded_clips_per_s"].values()) and loader["cache_items_per_s"] > 0
    assert set(loader["step_rates"]) == set(loader["keeps_up"]) == {"fp32", "bf16", "fp16"}
    assert all(0 < share < 1 for share in loader["cache_read_share"].values())

    evaluation = sections["evaluation"]
    assert evaluation["cpu_seconds"] > 0 and evaluation["gpu"].startswith("not available")
    assert {"classification", "progression", "kendalls_tau", "retrieval"} <= set(evaluation["metrics"])
