"""The GPU path of mvformer checked and measured in one command; prints one table and writes the figures as JSON.

On one CUDA device (under 8 minutes from a bare machine; nothing is downloaded):
    python benchmarks/gpu_check.py --out gpu_check.json
On the CPU, with small shapes and tiny backbones (tests/test_gpu_check.py runs this):
    python benchmarks/gpu_check.py --device cpu --quick --out gpu_check.json

Sections, in this order; each is guarded (a failure is recorded, the next one runs), and one that the time budget
(--budget-s) could not hold is skipped with a note:
- head_equivalence: `check_same` of benchmarks/train_step.py on the device: the library's head against the
  straightforward form, embeddings, loss and every gradient, in float64 (the claim is equal mathematics, so the
  rounding bound holds on any device), at the ViT-B/8 feature shape (2, 80, 784, 2304).
- demo_training: the demo config trained on synthetic videos on the device: the loss is finite and falls; a run
  interrupted mid-epoch (its data stops after K steps, as a killed run would) and resumed ends with the weights of
  the uninterrupted run. Bit-identical where the device's kernels are deterministic (the CPU); where they are not
  (some CUDA kernels accumulate in a varying order), a second uninterrupted run sets the floor and the resumed run
  must lie within RERUN_FACTOR times it: a resume cannot be closer to the run than a rerun of it is.
- penn_step: one Penn Action training step at paper size (batch 1, two 80-frame views at 224 px, the Penn Action
  head) through the training loop's own step function, for ViT-B/8 and ViT-S/16 (randomly initialised with DINO's
  geometry, hence DINO's FLOPs; saved with save_pretrained into a temporary folder) and EfficientNet-Lite0 where the
  registry has it: s/step and peak memory (torch.cuda.max_memory_allocated) in fp32, bf16 and fp16 (with the
  gradient scaler), backbone on the fly and from cached tokens, the backbone's frames/s alone, and the projected
  epoch (1,140 steps) and 500-epoch times.
- cuda_tests: `pytest -m cuda tests/test_cuda.py` (what CPU tests cannot show), pass/fail counts.
- torchrun: `torchrun --nproc_per_node 1` (NCCL on a GPU, gloo on the CPU): two epochs of the demo config cut
  after K steps, resumed by `mvformer train --resume`, compared with an uninterrupted run, then exported and loaded.
- loader: training clips/s decoded from H.264 by the DataLoader with 0 and `data.num_workers` workers, and items/s
  read from a feature cache, beside ViT-B/8's step rates: does decoding (in workers, beside the step) keep up, and
  what share of a step from tokens would the cache's reads (between steps, in the training process) take?
- evaluation: the protocol metrics of a Penn-sized embedding set (13 actions of 100 + 80 videos of 50-90 frames,
  benchmarks/evaluation.py's), timed on the CPU (with --quick: two small sets, projected to 13); the probes and
  metrics are numpy / scikit-learn, so there is no GPU column.

JSON: {"version", "device": {...}, "quick", "budget_s", "elapsed_s", "checks": {check: passed}, "sections": {name:
{"status": ok | failed | skipped, "seconds", "note", "error", ...figures}}}; the figures of each section are listed
in `SECTION_FIELDS`. Peak memory is null on the CPU (no allocator statistics there). Times are medians after warm-up
steps. The exit status is 1 when a check failed (a failed section counts as one).

This file runs the sections under the time budget; its parts beside it: gpu_check_setup.py (sizes, the shared state,
the demo data, configs and backbones, SECTION_FIELDS), gpu_check_sections.py (the sections), gpu_check_table.py (the
checks and the table).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for folder in (REPO, HERE):  # this checkout's mvformer, also where it is not installed; this script's parts
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched: every backbone is local (read at import)

import torch  # noqa: E402
import transformers  # noqa: E402

from mvformer.config import load_config  # noqa: E402
from mvformer.data.datasets import VideoDataset  # noqa: E402
from mvformer.train import loop  # noqa: E402

from gpu_check_sections import SECTIONS  # noqa: E402
from gpu_check_setup import Check, Interrupted, SectionTimeout, interrupted_after, note  # noqa: E402
from gpu_check_table import print_table, verdicts  # noqa: E402

ESTIMATED_S = {  # seconds each section is expected to need (full size on a GPU; --quick on two CPU cores)
    "head_equivalence": (20, 5), "demo_training": (40, 20), "penn_step": (150, 30), "cuda_tests": (60, 20),
    "torchrun": (50, 45), "loader": (45, 15), "evaluation": (40, 10),
}


def _on_alarm(signum, frame):
    raise SectionTimeout("ran past its share of the time budget")


def run_section(check: Check, name: str, later: list[str]) -> dict:
    """One section, guarded: its figures, or why it failed or was skipped."""
    estimate = ESTIMATED_S[name][check.quick]
    check.reserve_s = sum(ESTIMATED_S[other][check.quick] for other in later)
    if check.left_s() < estimate:
        return {"status": "skipped", "seconds": 0.0, "note": f"time budget: {check.left_s():.0f} s left, the "
                f"section needs about {estimate} s", "error": None}
    note(f"{name} ...")
    started = time.perf_counter()
    signal.alarm(max(1, int(check.left_s())))
    try:
        figures = SECTIONS[name](check)
        outcome = {"status": "ok", "note": figures.pop("note", ""), "error": None, **figures}
    except Exception as error:  # noqa: BLE001 -- one section's failure is recorded, the others still run
        note(traceback.format_exc())
        outcome = {"status": "failed", "note": "", "error": f"{type(error).__name__}: {error}"}
    finally:
        signal.alarm(0)
    outcome["seconds"] = time.perf_counter() - started
    note(f"{name}: {outcome['status']} in {outcome['seconds']:.1f} s")
    return outcome


def device_facts(device: torch.device) -> dict:
    """What the figures were measured on; TF32 decides how fast fp32 matrix products run on a recent GPU."""
    facts = {"kind": device.type, "torch": torch.__version__, "transformers": transformers.__version__,
             "python": platform.python_version(), "cpu_count": os.cpu_count(), "cuda": torch.version.cuda,
             "name": platform.processor() or platform.machine(), "memory_gib": None,
             "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        facts.update(name=properties.name, memory_gib=properties.total_memory / 2**30)
    return facts


def interrupted_train(config_path: str, steps: int) -> None:
    """Under torchrun: train the config until its data stops after `steps` steps (the run then ends as a killed one
    would, its last checkpoint in place)."""
    config = load_config(config_path)
    train_set = VideoDataset(config.data.root, "train", size=config.data.decode_size, preload=config.data.preload)
    try:
        loop.train(config, interrupted_after(train_set, steps * config.train.batch_size))
    except Interrupted:
        return
    raise RuntimeError("the run ended before it was interrupted")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="small shapes, tiny backbones, few steps")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON file of figures")
    parser.add_argument("--budget-s", type=float, default=None, help="time budget (default 440 s, --quick 300 s)")
    parser.add_argument("--only", nargs="+", choices=tuple(SECTIONS), help="run these sections only")
    parser.add_argument("--interrupted-train", nargs=2, metavar=("CONFIG", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.interrupted_train:
        interrupted_train(args.interrupted_train[0], int(args.interrupted_train[1]))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu (and --quick for small shapes)", file=sys.stderr)
        return 2
    budget = args.budget_s if args.budget_s is not None else (300.0 if args.quick else 440.0)
    started = time.monotonic()
    signal.signal(signal.SIGALRM, _on_alarm)
    transformers.utils.logging.disable_progress_bar()  # the progress lines of this script are its own
    device = torch.device(args.device)
    report = {"version": 1, "device": device_facts(device), "quick": args.quick, "budget_s": budget,
              "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "elapsed_s": 0.0, "checks": {}, "sections": {}}
    names = [name for name in SECTIONS if not args.only or name in args.only]
    with tempfile.TemporaryDirectory(prefix="mvformer-gpu-check-") as folder:
        os.environ["MVFORMER_CACHE_DIR"] = str(Path(folder) / "feature-caches")  # never the user's caches
        os.environ.setdefault("MVFORMER_NO_PROGRESS", "1")
        check = Check(device, args.quick, Path(folder), started + budget)
        for position, name in enumerate(names):
            check.results[name] = run_section(check, name, names[position + 1:])
            report["sections"][name] = check.results[name]
            report["checks"] = verdicts(report["sections"])
            report["elapsed_s"] = time.monotonic() - started
            args.out.write_text(json.dumps(report, indent=1, default=str))  # complete after every section
    print_table(report)
    return 0 if all(report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
