"""The run's log: metrics.jsonl, always written; TensorBoard scalars as well when tensorboard is installed."""

import json
from pathlib import Path

from mvformer.checkpoint import METRICS_NAME
from mvformer.config import flatten_tree


class MetricsLog:
    """Appends one JSON record per line (a training epoch, an evaluation) to RUN/metrics.jsonl."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / METRICS_NAME
        self.path.touch()
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            self.tensorboard = None

    def write(self, record: dict) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for key, value in flatten_tree(record, "/").items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.tensorboard.add_scalar(key, value, record["epoch"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
