"""A demo model trained for a few epochs on tiny synthetic videos, shared by the tests of the commands that read
a run (label, report)."""

from pathlib import Path

from mvformer.config import load_config
from mvformer.data.synthetic import generate_pouring_dataset
from mvformer.train.loop import train


def trained_demo_run(base: Path, eval_every: int = 1000) -> tuple[Path, Path]:
    """(run folder, dataset root) of a demo model trained three epochs on 4 + 3 short videos under `base`."""
    root = generate_pouring_dataset(base / "pouring", num_train=4, num_val=3, size=64, min_frames=16, max_frames=24,
                                    seed=0)
    config = load_config("demo", [f"data.root={root}", "data.clip_len=16", "train.epochs=3", "train.batch_size=2",
                                  f"train.output_dir={base / 'run'}", f"train.eval_every={eval_every}"])
    return train(config).run_dir, root
