"""Training throughput of 1 against 2 processes under torchrun (gloo, CPU), in one run.

Run by hand (about three minutes):  python benchmarks/distributed.py [--epochs 3]

The demo model (patches backbone) on 32 synthetic training videos, global batch 8, clips of 32 frames, no
evaluation. Each process count runs `torchrun --nproc_per_node N -m mvformer train` in a subprocess with one
torch thread per process, so two processes use the machine's two cores; for comparison, one process with two
threads. Printed: clips per second of the last epoch (the first one includes start-up) and the ratios. On this two-core machine the second process can at best
double the throughput; gloo's all-reduce of the head's gradients and BatchNorm statistics is the overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mvformer.config import load_config, save_config
from mvformer.data.synthetic import generate_pouring_dataset


def clips_per_second(config_path: Path, processes: int, threads: int, run_dir: Path) -> float:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
               str(29500 + processes), "-m", "mvformer", "train", str(config_path), "--no-progress",
               "--set", f"train.output_dir={run_dir}"]
    subprocess.run(command, check=True, capture_output=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [record for record in records if "clips_per_s" in record][-1]["clips_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        root = generate_pouring_dataset(folder / "data", num_train=32, num_val=4, seed=0)
        config = load_config("demo", [f"data.root={root}", f"train.epochs={args.epochs}", "train.batch_size=8",
                                      "train.eval_every=1000", "train.device=cpu", "data.clip_len=32"])
        save_config(config, folder / "config.yaml")
        rates = {(n, t): clips_per_second(folder / "config.yaml", n, t, folder / f"run{n}-{t}")
                 for n, t in ((1, 1), (2, 1), (1, 2))}
    print(f"demo model, 32 videos, global batch 8, {args.epochs} epochs; clips/s of the last epoch")
    for (processes, threads), rate in rates.items():
        print(f"{processes} gloo process{'es' if processes > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}: "
              f"{rate:6.1f} clips/s   ratio {rate / rates[1, 1]:.2f}")


if __name__ == "__main__":
    main()
