"""`mvformer evaluate-embeddings`: the protocol metrics for frame embeddings made by any model, read from .npz files.

One file is one dataset (e.g. one Penn Action action): `train_embs` (frames, D), `train_labels` (frames,) and
`train_lens` (videos,), the videos' frames concatenated in order and split by their lengths, and the same three for
`val_`; the format `mvformer evaluate` writes to embeddings.npz. Other arrays (e.g. `*_names`) are ignored.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mvformer.data.datasets import MAX_CLASSES
from mvformer.errors import MVFormerError
from mvformer.evaluation.metrics import CLASSIFIERS, TASKS, evaluate_embeddings, mean_of_metrics
from mvformer.evaluation.scorable import skip_lines, unscorable_tasks
from mvformer.progress import note as say

SPLITS = ("train", "val")
REQUIRED_ARRAYS = tuple(f"{split}_{kind}" for split in SPLITS for kind in ("embs", "labels", "lens"))
# What a damaged or foreign file can raise while NumPy reads it.
READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
MAX_STRIDE_OR_K = 100_000  # --stride and --ks: beyond any video's frame count
# Largest embedding value: the probes work in float32 and square the values, which must stay finite there.
MAX_EMBEDDING_VALUE = 1e15
# Short column names of the table: metric key -> prefix.
COLUMN_PREFIXES = {"classification": "class", "progression": "prog", "kendalls_tau": "tau", "retrieval": "AP"}


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The required arrays of one .npz file; anything unreadable or missing is a one-line error naming the file."""
    if path.is_dir():
        raise MVFormerError(f"{path}: is a folder, not an .npz file")
    if not path.is_file():
        raise MVFormerError(f"{path}: no such file")
    try:
        archive = np.load(path, allow_pickle=False)
    except READ_ERRORS:  # NumPy's own message would suggest unpickling the file
        raise MVFormerError(f"{path}: not an .npz archive (NumPy cannot read it as one)") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise MVFormerError(f"{path}: not an .npz archive (it holds a single .npy array)")
    with archive:
        missing = [name for name in REQUIRED_ARRAYS if name not in archive.files]
        if missing:
            raise MVFormerError(f"{path}: missing array(s) {', '.join(missing)} "
                                f"(needed: {', '.join(REQUIRED_ARRAYS)})")
        try:
            return {name: archive[name] for name in REQUIRED_ARRAYS}
        except READ_ERRORS as error:
            reason = (str(error) or type(error).__name__).splitlines()[0]
            raise MVFormerError(f"{path}: cannot read its arrays ({reason})") from None
        except MemoryError:
            raise MVFormerError(f"{path}: its arrays are too large to load into memory") from None


def _is_integer_array(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.integer)


def _check_embeddings(path: Path, split: str, embs: np.ndarray) -> None:
    """(frames, D) with D >= 1, of real numbers, all finite and small enough to square in float32."""
    if embs.ndim != 2 or not (np.issubdtype(embs.dtype, np.floating) or _is_integer_array(embs)):
        raise MVFormerError(f"{path}: {split}_embs must be a 2-D (frames, D) array of real numbers, "
                            f"got {embs.dtype} of shape {embs.shape}")
    if embs.shape[1] == 0:
        raise MVFormerError(f"{path}: {split}_embs has shape {embs.shape}: every frame needs at least one value")
    values = embs if np.issubdtype(embs.dtype, np.floating) else embs.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        bad_frames = int(np.count_nonzero(~finite.all(axis=1)))
        raise MVFormerError(f"{path}: {split}_embs holds NaN or Inf values (in {bad_frames} frame(s))")
    largest = float(np.abs(values).max(initial=0))
    if largest > MAX_EMBEDDING_VALUE:
        raise MVFormerError(f"{path}: {split}_embs holds a value of magnitude {largest:.3g}, above the "
                            f"{MAX_EMBEDDING_VALUE:.0e} the float32 probes can square; scale the embeddings down")


def _check_labels(path: Path, split: str, labels: np.ndarray, num_frames: int) -> None:
    """(frames,) integers, each -1 (unlabelled) or a class in [0, MAX_CLASSES)."""
    if labels.ndim != 1 or not _is_integer_array(labels):
        raise MVFormerError(f"{path}: {split}_labels must be a 1-D integer array, "
                            f"got {labels.dtype} of shape {labels.shape}")
    if len(labels) != num_frames:
        raise MVFormerError(f"{path}: {split}_labels has {len(labels)} entries but {split}_embs has "
                            f"{num_frames} rows (frames)")
    bad = labels[(labels < -1) | (labels >= MAX_CLASSES)]
    if bad.size:
        raise MVFormerError(f"{path}: {split}_labels holds {int(bad[0])}; a label is -1 (unlabelled) or a class "
                            f"in 0..{MAX_CLASSES - 1}")


def _check_lengths(path: Path, split: str, lens: np.ndarray, num_frames: int) -> np.ndarray:
    """(videos,) positive integers that sum, exactly (no integer wrap-around), to the frame count; int64."""
    if lens.ndim != 1 or not _is_integer_array(lens):
        raise MVFormerError(f"{path}: {split}_lens must be a 1-D integer array, got {lens.dtype} of shape "
                            f"{lens.shape}")
    if len(lens) == 0:
        raise MVFormerError(f"{path}: {split}_lens is empty: no {split} videos")
    if (lens < 1).any():
        raise MVFormerError(f"{path}: {split}_lens holds a length below 1 ({int(lens.min())})")
    total = sum(lens.tolist())  # Python integers: an int64 sum could wrap around to the right total
    if total != num_frames:
        raise MVFormerError(f"{path}: {split}_lens sum to {total} frames but {split}_embs has {num_frames} rows")
    return lens.astype(np.int64)


def _split_videos(path: Path, arrays: dict[str, np.ndarray], split: str) -> tuple[list, list]:
    """Check one split's three arrays and cut them into per-video embeddings (frames, D) and labels (frames,)."""
    embs, labels, lens = arrays[f"{split}_embs"], arrays[f"{split}_labels"], arrays[f"{split}_lens"]
    _check_embeddings(path, split, embs)
    _check_labels(path, split, labels, len(embs))
    cuts = np.cumsum(_check_lengths(path, split, lens, len(embs)))[:-1]
    return np.split(embs, cuts), np.split(labels.astype(np.int64), cuts)  # per video: (frames, D), (frames,)


def load_embeddings(path: str | Path) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """One dataset's per-video (train_embs, train_labels, val_embs, val_labels), checked; MVFormerError otherwise."""
    path = Path(path)
    arrays = _read_arrays(path)
    train_embs, train_labels = _split_videos(path, arrays, "train")
    val_embs, val_labels = _split_videos(path, arrays, "val")
    if train_embs[0].shape[1] != val_embs[0].shape[1]:
        raise MVFormerError(f"{path}: train_embs are {train_embs[0].shape[1]}-d but val_embs are "
                            f"{val_embs[0].shape[1]}-d")
    return train_embs, train_labels, val_embs, val_labels


def dataset_names(paths: Sequence[str | Path]) -> list[str]:
    """File names without .npz; where two coincide (e.g. runs/*/eval/embeddings.npz), enough parent folders are
    kept to tell them apart."""
    paths = [Path(p) for p in paths]
    parts = [p.with_suffix("").parts if p.suffix == ".npz" else p.parts for p in paths]
    depth = [1] * len(paths)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        repeated = {name for name in names if names.count(name) > 1}
        if not repeated:
            return names
        for index, name in enumerate(names):
            if name in repeated:
                if depth[index] >= len(parts[index]):
                    raise MVFormerError(f"{paths[index]}: given more than once")
                depth[index] += 1


def _check_options(stride: int, fractions: Sequence[float], ks: Sequence[int], tasks: Sequence[str],
                   classifier: str, num_classes: int | None) -> None:
    """Reject bad options before any file is read."""
    if not 1 <= stride <= MAX_STRIDE_OR_K:
        raise MVFormerError(f"--stride must be an integer from 1 to {MAX_STRIDE_OR_K}, got {stride}")
    if not fractions:
        raise MVFormerError("--fractions: give at least one training fraction")
    for fraction in fractions:
        if not 0 < fraction <= 1:
            raise MVFormerError(f"--fractions: training fraction {fraction} is outside (0, 1]")
    for k in ks:
        if not 1 <= k <= MAX_STRIDE_OR_K:
            raise MVFormerError(f"--ks: retrieval K must be an integer from 1 to {MAX_STRIDE_OR_K}, got {k}")
    unknown = [task for task in tasks if task not in TASKS]
    if unknown:
        raise MVFormerError(f"--tasks: unknown task(s) {unknown}; choose from {list(TASKS)}")
    if classifier not in CLASSIFIERS:
        raise MVFormerError(f"--classifier: unknown classifier {classifier!r}; choose from {list(CLASSIFIERS)}")
    if num_classes is not None and not 1 <= num_classes <= MAX_CLASSES:
        raise MVFormerError(f"--num-classes must be from 1 to {MAX_CLASSES}, got {num_classes}")


def video_names(path: str | Path) -> tuple[list[str] | None, list[str] | None]:
    """The optional `train_names` / `val_names` arrays (as `mvformer evaluate` writes them), for messages; None
    for a split whose names are absent or unreadable."""
    names = []
    with np.load(path, allow_pickle=False) as archive:
        for split in SPLITS:
            try:
                array = archive[f"{split}_names"] if f"{split}_names" in archive.files else None
            except READ_ERRORS:
                array = None
            names.append([str(name) for name in array] if array is not None and array.ndim == 1 else None)
    return names[0], names[1]


def file_skip_lines(path: str | Path, tasks: Sequence[str], fractions: Sequence[float],
                    option: str = "eval.tasks") -> list[str]:
    """The lines `score_files` prints for the tasks one file's labels do not allow (see `skip_lines`)."""
    _, train_labels, _, val_labels = load_embeddings(path)
    classes = int(max(labels.max() for labels in train_labels + val_labels)) + 1
    try:
        unscorable = unscorable_tasks(train_labels, val_labels, classes, tasks, fractions, *video_names(path))
    except MVFormerError as error:
        raise MVFormerError(f"{path}: {error}") from None
    return skip_lines(str(path), unscorable, tasks, option)


def _undefined_notes(path: Path, scores: dict, stride: int) -> list[str]:
    """Why a metric that was scored came out None (null), one line each."""
    if scores.get("kendalls_tau", 0.0) is None:
        return [f"{path}: note: kendalls_tau is undefined (null): every pair of validation videos gives a constant "
                f"match at stride {stride}"]
    return []


def score_files(
    paths: Sequence[str | Path],
    stride: int = 1,
    fractions: Sequence[float] = (0.1, 0.5, 1.0),
    ks: Sequence[int] = (5, 10, 15),
    tasks: Sequence[str] | None = None,
    classifier: str = "logistic",
    num_classes: int | None = None,
    note: Callable[[str], None] = say,
) -> dict:
    """Score each file as one dataset: {"datasets": {name: metrics}, "mean": metrics averaged over datasets}.

    Metrics are `evaluate_embeddings`'s dict (JSON-ready); tasks None means all. num_classes defaults, per file, to
    the largest label in train or val plus one. Every file is loaded and checked before any is scored, so a bad file
    fails fast. `note` receives one line for each metric that is undefined (null) and why.
    """
    tasks = TASKS if tasks is None else tasks
    _check_options(stride, fractions, ks, tasks, classifier, num_classes)
    if not paths:
        raise MVFormerError("no embedding files given")
    names = dataset_names(paths)
    loaded = []  # (path, arrays, classes) per file
    for path in map(Path, paths):
        arrays = load_embeddings(path)
        largest_label = int(max(labels.max() for labels in arrays[1] + arrays[3]))
        if num_classes is not None and largest_label >= num_classes:
            raise MVFormerError(f"{path}: label {largest_label} is out of range for --num-classes {num_classes}")
        classes = largest_label + 1 if num_classes is None else num_classes
        try:
            unscorable = unscorable_tasks(arrays[1], arrays[3], classes, tasks, fractions, *video_names(path))
        except MVFormerError as error:
            raise MVFormerError(f"{path}: {error}") from None
        loaded.append((path, arrays, classes, unscorable))
    datasets = {}
    for name, (path, (train_embs, train_labels, val_embs, val_labels), classes, skipped_tasks) in zip(names, loaded):
        for line in skip_lines(str(path), skipped_tasks, tasks, option="--tasks"):
            note(line)
        try:
            scores = evaluate_embeddings(train_embs, train_labels, val_embs, val_labels, num_classes=classes,
                                         fractions=fractions, ks=ks, stride=stride, tasks=tasks,
                                         classifier=classifier)
        except MVFormerError as error:
            raise MVFormerError(f"{path}: {error}") from None
        for line in [] if "kendalls_tau" in skipped_tasks else _undefined_notes(path, scores, stride):
            note(line)
        datasets[name] = scores
    mean = mean_of_metrics(list(datasets.values()))
    return {"datasets": datasets, "mean": mean}


def format_table(result: dict, extra_rows: dict[str, dict] | None = None) -> str:
    """`score_files`'s result as aligned text: one row per dataset, a `mean` row, then `extra_rows` (such as the
    time-only control), one column per metric."""
    rows = {**result["datasets"], "mean": result["mean"], **(extra_rows or {})}
    columns = {}  # column title -> (metric, key or None)
    for task, value in result["mean"].items():
        for key in value if isinstance(value, dict) else [None]:
            title = COLUMN_PREFIXES[task] if key is None else f"{COLUMN_PREFIXES[task]}@{key}"
            columns[title] = (task, key)
    cells = [["dataset", *columns]]
    for name, scores in rows.items():
        numbers = [scores[task] if key is None else scores[task][key] for task, key in columns.values()]
        cells.append([name, *("n/a" if number is None else f"{number:.4f}" for number in numbers)])
    widths = [max(len(row[column]) for row in cells) for column in range(len(cells[0]))]
    lines = ["  ".join(cell.ljust(width) if column == 0 else cell.rjust(width)
                       for column, (cell, width) in enumerate(zip(row, widths))) for row in cells]
    return "\n".join(lines)
