"""Part of benchmarks/gpu_check.py: the checks among its figures and the one table, read from the JSON report.
Not a script of its own."""

from __future__ import annotations

from gpu_check_setup import PENN_ACTIONS


def _fmt(value: float | None, unit: str = "", digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}{unit}"


def verdicts(sections: dict) -> dict[str, bool]:
    """The checks among the figures (the rest are measurements): True where one passed; a section that failed
    counts as a failed check, one skipped or not run is absent."""
    found = {name: False for name, section in sections.items() if section["status"] == "failed"}
    ran = {name: section for name, section in sections.items() if section["status"] == "ok"}
    if "head_equivalence" in ran:
        found["head_equivalence"] = ran["head_equivalence"]["passed"]
    if "demo_training" in ran:
        demo = ran["demo_training"]
        found["demo_loss_finite_and_falls"] = demo["loss_finite"] and demo["loss_falls"]
        found["demo_resume"] = demo["resume"] != "differs"
    if "cuda_tests" in ran and ran["cuda_tests"]["returncode"] is not None:
        found["cuda_tests"] = ran["cuda_tests"]["failed"] == ran["cuda_tests"]["errors"] == 0
    if "torchrun" in ran:
        found["torchrun_resume"] = ran["torchrun"]["resume"] != "differs"
        found["torchrun_export"] = ran["torchrun"]["export_equal"]
    return found


def table_rows(report: dict) -> list[tuple[str, str, str]]:
    """(section, what, result) rows of the one table, all read from the JSON report; the verdict last."""
    rows = []
    for name, section in report["sections"].items():
        if section["status"] != "ok":
            rows.append((name, section["status"], section.get("error") or section.get("note") or ""))
            continue
        rows.extend((name, what, result) for what, result in SECTION_ROWS[name](section))
    failed = [name for name, passed in report["checks"].items() if not passed]
    rows.append(("checks", f"{len(report['checks'])} checks", f"FAILED: {', '.join(failed)}" if failed else
                 "all passed"))
    return rows


def _head_rows(section: dict) -> list[tuple[str, str]]:
    verdict = "pass" if section["passed"] else "FAIL"
    return [(f"fast head = straightforward form, {section['dtype']}, features {tuple(section['shape'])}",
             f"{verdict}: {section['check_output']}")]


def _demo_rows(section: dict) -> list[tuple[str, str]]:
    losses = section["losses"]
    trend = "falls" if section["loss_falls"] else "does NOT fall"
    resume = section["resume"]
    if resume != "bit-identical":
        resume += (f" (max abs diff {section['resume_max_abs_diff']:.2g}; two uninterrupted runs differ by "
                   f"{_fmt(section['rerun_max_abs_diff'], '', 2)}; tolerance {_fmt(section['tolerance'], '', 2)})")
    return [(f"loss over {section['epochs']} epochs", f"{losses[0]:.4f} -> {losses[-1]:.4f}, "
             f"{'finite' if section['loss_finite'] else 'NOT finite'}, {trend}"),
            (f"cut at epoch {section['interrupted_at']['epoch']} step {section['interrupted_at']['step']}, resumed",
             resume)]


def _penn_rows(section: dict) -> list[tuple[str, str]]:
    rows = []
    for label, entry in section["backbones"].items():
        if entry["status"] != "ok":
            rows.append((label, entry.get("note") or entry.get("error") or entry["status"]))
            continue
        shape = tuple(entry["feature_shape"])
        fps = ", ".join(f"{precision} {value:.0f}" for precision, value in entry["backbone_frames_per_s"].items())
        rows.append((f"{label} backbone alone ({entry['image_size']} px, blocks {entry['blocks']})",
                     f"frames/s: {fps}"))
        for precision, sources in entry["steps"].items():
            for source, row in sources.items():
                rows.append((f"{label} {precision} {source.replace('_', ' ')} (features {shape})",
                             f"{row['s_per_step']:.3f} s/step, peak {_fmt(row['peak_mib'], ' MiB', 4)}, "
                             f"epoch {row['epoch_min']:.1f} min, 500 epochs {row['epochs_500_h']:.1f} h"
                             + (f", {row['nonfinite_steps']} steps skipped (non-finite; in fp16 the scaler's overflows)"
                                if row["nonfinite_steps"] else "")))
        rows.extend((f"{label} {precision}", f"FAILED: {error}") for precision, error in entry["failures"].items())
        if entry["note"]:
            rows.append((label, entry["note"]))
    return rows


def _tests_rows(section: dict) -> list[tuple[str, str]]:
    return [("pytest -m cuda tests/test_cuda.py", f"{section['passed']} passed, {section['failed']} failed, "
             f"{section['skipped']} skipped, {section['errors']} errors ({section['summary']})")]


def _torchrun_rows(section: dict) -> list[tuple[str, str]]:
    cut = section["interrupted_at"]
    export = "loads the same weights" if section["export_equal"] else "DIFFERS"
    return [(f"torchrun, {section['processes']} {section['backend']} process: cut at epoch {cut['epoch']} step "
             f"{cut['step']}, resumed by the CLI", f"{section['resume']} (max abs diff "
             f"{section['resume_max_abs_diff']:.2g}), export {export}, {section['seconds']:.0f} s"),
            ("process group", section["process_group"])]


def _loader_rows(section: dict) -> list[tuple[str, str]]:
    decoded = ", ".join(f"{workers} workers {rate:.1f}" for workers, rate in section["decoded_clips_per_s"].items())
    rows = [(f"decoded clips/s (2 x {section['clip_len']} frames at {section['image_size']} px)", decoded),
            ("cached-token items/s (main process)",
             f"{section['cache_items_per_s']:.1f} ({_fmt(section['cache_mib_per_item'], ' MiB')} per item)")]
    for precision, rates in section["step_rates"].items():
        rows.append((f"ViT-B/8 {precision} steps/s: on the fly / from tokens",
                     f"{rates['on_the_fly']:.1f} / {rates['from_tokens']:.1f}; decoding keeps up: "
                     f"{'yes' if section['keeps_up'][precision] else 'NO'}; cache reads would take "
                     f"{section['cache_read_share'][precision]:.0%} of a step from tokens"))
    return rows


def _evaluation_rows(section: dict) -> list[tuple[str, str]]:
    return [(f"protocol metrics, {section['datasets']} datasets, {section['train_videos']} + {section['val_videos']} "
             f"videos ({section['frames']} frames)", f"CPU {section['cpu_seconds']:.1f} s, all {PENN_ACTIONS} actions "
             f"{section['projected_penn_s']:.0f} s; GPU {section['gpu']}")]


SECTION_ROWS = {"head_equivalence": _head_rows, "demo_training": _demo_rows, "penn_step": _penn_rows,
                "cuda_tests": _tests_rows, "torchrun": _torchrun_rows, "loader": _loader_rows,
                "evaluation": _evaluation_rows}


def print_table(report: dict) -> None:
    facts = report["device"]
    print(f"mvformer GPU check on {facts['name']} ({facts['kind']}), torch {facts['torch']}, CUDA {facts['cuda']}, "
          f"TF32 matmul {'on' if facts['tf32_matmul'] else 'off'}, {report['started']}; {report['elapsed_s']:.0f} s "
          f"of a {report['budget_s']:.0f} s budget"
          f"{' (--quick: small shapes, tiny backbones)' if report['quick'] else ''}")
    print("| section | what | result |")
    print("|---|---|---|")
    for section, what, result in table_rows(report):
        cell = result.replace("|", "\\|")  # a bar inside a cell, escaped for Markdown
        print(f"| {section} | {what} | {cell} |")
