"""The run folder: the one place for its file names, its log's records and their schema, and its lock.

RUN/config.yaml       the run's whole configuration
RUN/checkpoint.pt     the latest checkpoint (its fields: `checkpoint.CHECKPOINT_FIELDS`)
RUN/metrics.jsonl     the log, one JSON object a line: an `EpochRecord` after every epoch, an `EvalRecord` after
                      every evaluation
RUN/tensorboard/      the log's scalars, when tensorboard is installed
RUN/eval/             `mvformer evaluate`'s results: metrics.json (`read_evaluation`), DATASET.npz, alignment.png
RUN/.lock             held while a process trains into the folder
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mvformer.config import flatten_tree
from mvformer.errors import MVFormerError
from mvformer.files import exclusive_claim

CONFIG_NAME = "config.yaml"
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
TENSORBOARD_NAME = "tensorboard"
EVAL_NAME = "eval"
EVAL_METRICS_NAME = "metrics.json"
LOCK_NAME = ".lock"


@dataclass(frozen=True)
class EpochRecord:
    """The log's line after a training epoch."""

    epoch: int
    loss: float  # mean loss of the epoch's finite steps (NaN when none was finite)
    lr: float
    clips_per_s: float
    nonfinite_steps: int  # counted since the run began
    skipped_videos: int


@dataclass(frozen=True)
class EvalRecord:
    """The log's line after an evaluation: the mean metrics over the evaluation sets and their controls."""

    epoch: int
    eval: dict  # the protocol metrics (`evaluation.metrics.evaluate_embeddings`' form)
    time_only: dict  # the same metrics of the time-only row
    collapsed: bool
    health: dict  # per evaluation set: the spread and the metrics it makes unreadable
    eval_datasets: dict | None = None  # per evaluation set, when there are several (Penn Action's 13 actions)


Record = EpochRecord | EvalRecord


@dataclass(frozen=True)
class RunLog:
    """A run's metrics.jsonl, read and checked."""

    epochs: list[EpochRecord]
    evaluations: list[EvalRecord]

    def evaluation_after(self, epoch: int) -> EvalRecord | None:
        """The last evaluation made after `epoch`, if any."""
        return next((record for record in reversed(self.evaluations) if record.epoch == epoch), None)


def _accepted(kind: type) -> dict[str, tuple[type, ...]]:
    """Each field of a record class and the JSON types its value may have (a float field takes an integer)."""
    accepted = {}
    for name, hint in typing.get_type_hints(kind).items():
        types = typing.get_args(hint) or (hint,)
        accepted[name] = (*types, int) if float in types else types
    return accepted


def _record(value: object, where: str) -> Record:
    """One line of the log as its record, or one line naming what is wrong with it."""
    if not isinstance(value, dict):
        raise MVFormerError(f"{where}: is a JSON {type(value).__name__}, not an object (a record of the run's log)")
    kind = EvalRecord if "eval" in value else EpochRecord
    accepted = _accepted(kind)
    required = [field.name for field in dataclasses.fields(kind) if field.default is dataclasses.MISSING]
    missing = next((name for name in required if name not in value), None)
    if missing is not None:
        raise MVFormerError(f"{where}: the {kind.__name__} lacks '{missing}'")
    for name, item in value.items():
        if name not in accepted:
            raise MVFormerError(f"{where}: unknown field '{name}' in a {kind.__name__}")
        wrong_bool = isinstance(item, bool) and bool not in accepted[name]
        if wrong_bool or not isinstance(item, accepted[name]):
            raise MVFormerError(f"{where}: '{name}' is a {type(item).__name__}, not a "
                                f"{' or '.join(t.__name__ for t in accepted[name])}")
    return kind(**value)


def read_log(run_dir: str | Path) -> RunLog:
    """RUN/metrics.jsonl's records in order (empty when the run has no log); a line that is not a record of one
    of the two kinds is one error naming the file and the line."""
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        return RunLog([], [])
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise MVFormerError(f"{path}: not UTF-8 text (is it a run's metrics.jsonl?)") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise MVFormerError(f"{path} line {number}: not valid JSON ({str(error).splitlines()[0]})") from None
        records.append(_record(value, f"{path} line {number}"))
    return RunLog([r for r in records if isinstance(r, EpochRecord)], [r for r in records if isinstance(r, EvalRecord)])


def read_evaluation(run_dir: str | Path) -> dict | None:
    """RUN/eval/metrics.json ({"datasets": {name: metrics}, "mean": metrics, "time_only": ..., ...}), checked; None
    when the run has not been evaluated."""
    path = Path(run_dir) / EVAL_NAME / EVAL_METRICS_NAME
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MVFormerError(f"{path}: not valid JSON ({str(error).splitlines()[0]}); rerun `mvformer evaluate "
                            f"{run_dir} --overwrite`") from None
    if not isinstance(result, dict):
        raise MVFormerError(f"{path}: is a JSON {type(result).__name__}, not the object `mvformer evaluate` writes")
    for key in ("datasets", "mean"):
        if not isinstance(result.get(key), dict) or not result[key]:
            raise MVFormerError(f"{path}: lacks the '{key}' metrics `mvformer evaluate` writes; rerun it with "
                                f"--overwrite")
    return result


class MetricsLog:
    """Appends the run's records to RUN/metrics.jsonl (and its scalars to TensorBoard, when installed). Nothing is
    written, not even the file, before the first record."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.path = run_dir / METRICS_NAME
        self.tensorboard = None

    def write(self, record: Record) -> None:
        fields = {key: value for key, value in dataclasses.asdict(record).items()
                  if not (key == "eval_datasets" and value is None)}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(fields) + "\n")
        if self.tensorboard is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tensorboard = SummaryWriter(str(self.run_dir / TENSORBOARD_NAME))
            except ImportError:
                self.tensorboard = False  # not installed: metrics.jsonl alone
        if self.tensorboard:
            for key, value in flatten_tree(fields, "/").items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch" and \
                        math.isfinite(value):
                    self.tensorboard.add_scalar(key, value, record.epoch)

    def close(self) -> None:
        if self.tensorboard:
            self.tensorboard.close()


@contextmanager
def run_folder_lock(run_dir: Path, is_main: bool) -> Iterator[None]:
    """Hold RUN/.lock while training writes into the run folder: a second process refuses to write into it too.
    A lock left by a process that no longer runs (killed) is taken over."""
    if not is_main:
        yield
        return
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with exclusive_claim(run_dir / LOCK_NAME, str(run_dir)):
            yield
    finally:
        if created and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a run that failed before writing anything leaves no folder behind
