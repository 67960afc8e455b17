"""The benchmark datasets in the layouts their publishers distribute, read in place or converted to the generic one.

`open_dataset(root, split, format, subset)` reads any of them as a VideoDataset; `prepare(format, src, dest)` writes
the generic layout of mvformer.data.datasets (hard links where possible, resumable). Accepted layouts, ROOT being
the folder you pass; record keys are those of the CARL (minghchen/CARL_code) and MV-Former
(facebookresearch/video_rep_learning) downloads:

penn_action   13 actions (PENN_ACTION_PHASES); each is its own dataset for evaluation (subset=ACTION), all of them
              pooled when subset is None. Frame labels are per-action phase indices 0..C-1.
  (a) preprocessed pickles (CARL / MV-Former download):
      ROOT/train.pkl, ROOT/val.pkl   the tuple (records, action_to_indices); action_to_indices is a list of 13 lists
                                     of record indices, in PENN_ACTION_PHASES order
      record: {"id": int, "name": "0001_baseball_pitch", "video_file": "videos/0001_baseball_pitch.mp4" (relative to
               ROOT), "frame_label": int tensor/array (seq_len,), "seq_len": int, "action_label": int}
  (b) official release (upenn.box.com/PennAction) plus per-frame phase labels:
      ROOT/frames/NNNN/NNNNNN.jpg    one folder of numbered frames per video
      ROOT/labels/NNNN.mat           MATLAB file with (among others) `action` (e.g. "pushup"), `nframes` and
                                     `train` (1 = training video, -1 = test video, used as val)
      ROOT/phases/**/NNNN.npy        phase labels: a 1-D integer array (nframes,) per video, found anywhere below
                                     ROOT/phases/ (or ROOT/penn_action_labels/); the CARL/TCC label download
                                     penn_action_labels/{train,val}/ACTION/NNNN.npy fits as it is, and there its
                                     train/ or val/ folder decides the split instead of the `train` flag.
      Videos are named NNNN_ACTION. jump_rope and strum_guitar (no published phases) are left out; a video of the
      13 actions without a phase file is left out and listed in `dataset.skipped`.
pouring       ROOT/train.pkl, ROOT/val.pkl, ROOT/test.pkl: a list of records {"id", "name", "video_file",
              "frame_label", "seq_len"} as above; 5 phases.
finegym       subset "99" or "288" (FineGym99 / FineGym288, required):
              ROOT/gym{99,288}_train_v1.0.pkl (or _v1.1) split train, ROOT/gym{99,288}_val.pkl split val,
              ROOT/additional_v1.0.pkl split additional (MV-Former's extra event videos);
              a list of records {"id", "name" (event id), "video_file": "processed_videos/EVENT.mp4",
              "seq_len", "frame_label": float or int (seq_len,), the sub-action class 0..98 / 0..287 of each frame,
              -1 between sub-actions, "event_label"}.
kinetics400   unlabelled, for pre-training; unreadable or missing videos are skipped and counted in
              `dataset.skipped`, never fatal:
              ROOT/annotations/SPLIT.csv or ROOT/SPLIT.csv with the official header label,youtube_id,time_start,
                  time_end,split: videos ROOT/SPLIT/[LABEL/]{youtube_id}_{time_start:06d}_{time_end:06d}.mp4;
              or such a CSV without header (CARL's list): first column a video path relative to ROOT, or to the
                  folder above when it starts with ROOT's name (CARL: Kinetics400/train/CLASS/ID.mp4);
              or no CSV: ROOT/SPLIT/CLASS/*.mp4 (class sub-folders) or ROOT/SPLIT/*.mp4.

Every record's length is checked against its video (frames counted from packets, or images of a frame folder):
a video that is missing, unreadable, or disagrees with its labels is an error naming the file, except in kinetics400.
Pickles are read with a restricted unpickler: plain containers, numbers, strings, numpy arrays and torch tensors only.

prepare writes DEST/videos/NAME.ext (hard link of the source file) or DEST/videos/NAME/ (hard-linked frames),
DEST/labels/NAME.csv, DEST/classes.txt (class indices "0".."C-1", so every split knows C), DEST/splits/SPLIT.txt.
penn_action without a subset writes one such root per action, DEST/ACTION/, and the pooled one, DEST/all/.
"""

from __future__ import annotations

import _compat_pickle
import csv
import importlib
import io
import json
import os
import pickle
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
import torch

from mvformer.data.datasets import VideoDataset, VideoRecord
from mvformer.data.video import count_frames, frame_image_paths
from mvformer.errors import MVFormerError
from mvformer.progress import progress_bar

# Phases per Penn Action action, in the order of the published action indices (CARL's PENN_ACTION_LIST).
PENN_ACTION_PHASES = {
    "baseball_pitch": 4, "baseball_swing": 3, "bench_press": 2, "bowl": 3, "clean_and_jerk": 6, "golf_swing": 3,
    "jumping_jacks": 4, "pushup": 2, "pullup": 2, "situp": 2, "squat": 4, "tennis_forehand": 3, "tennis_serve": 4,
}
PENN_ACTIONS = list(PENN_ACTION_PHASES)
POURING_PHASES = 5
FINEGYM_SUBSETS = ("99", "288")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg")
MANIFEST = ".mvformer-prepare.json"
PREPARE_BATCH = 32  # prepare saves its manifest after at least this many videos (more as it goes)
Skipped = list[tuple[Path, str]]


# --- restricted unpickling -----------------------------------------------------------------------------------


def _load_storage(data: bytes):
    """A torch storage inside a pickle, read back by torch's weights-only loader (never arbitrary code)."""
    return torch.load(io.BytesIO(data), weights_only=True)


_ALLOWED_GLOBALS = {
    ("builtins", "set"), ("builtins", "frozenset"), ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how protocols 0-2 store bytes
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("torch._utils", "_rebuild_tensor_v2"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers, numbers, strings, numpy arrays and torch tensors; refuses every other class."""

    def __init__(self, file, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))  # Python 2 names
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if module.startswith(("numpy.core.", "numpy._core.")):  # numpy < 2 writes numpy.core, numpy >= 2 numpy._core
            module = "numpy._core" + module[module.index(".", len("numpy.")):]
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _load_storage
        if (module, name) not in _ALLOWED_GLOBALS:
            raise MVFormerError(f"{self.path}: refusing to unpickle {module}.{name} (a dataset pickle may hold only "
                                f"lists, dicts, strings, numbers, numpy arrays and tensors)")
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError:  # numpy < 2 has no numpy._core
            return getattr(importlib.import_module(module.replace("numpy._core", "numpy.core")), name)


def load_pickle(path: str | Path):
    """The object of a dataset pickle, refusing any class but containers, numbers, strings, arrays and tensors."""
    path = Path(path)
    if not path.is_file():
        raise MVFormerError(f"{path}: no such pickle file")
    try:
        with open(path, "rb") as file:
            return _RestrictedUnpickler(file, path).load()
    except MVFormerError:
        raise
    except Exception as error:  # an untrusted file: any failure is the file's fault
        raise MVFormerError(f"{path}: cannot read pickle ({type(error).__name__}: {error})") from None


# --- what the layouts describe, before the videos are looked at ----------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """One video as its layout describes it: frames and labels are checked against each other later."""

    name: str
    path: Path
    labels: np.ndarray | None  # int64 (frames,), -1 = unlabelled
    length: int | None  # frame count the layout records
    source: str  # where labels and length come from, for error messages
    group: str | None = None  # the Penn Action action


def _as_labels(values, source: str, num_classes: int | None) -> np.ndarray:
    """Frame labels as int64 (frames,): integer-valued, -1 (unlabelled) up to num_classes - 1."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise MVFormerError(f"{source}: frame labels must be a 1-D array of integers, found {array.dtype} "
                            f"{array.shape}")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array) & (array == np.round(array))):
        raise MVFormerError(f"{source}: frame labels must be whole numbers")
    labels = array.astype(np.int64)
    upper = num_classes - 1 if num_classes is not None else np.iinfo(np.int64).max
    bad = labels[(labels < -1) | (labels > upper)]
    if len(bad):
        allowed = f"[-1, {upper}]" if num_classes is not None else ">= -1"
        raise MVFormerError(f"{source}: frame label {bad[0]} is not in {allowed}")
    return labels


def _as_count(value, source: str) -> int:
    """A frame count stored as int, numpy integer, integral float or 0-d tensor."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating)) and float(value).is_integer()):
        return int(value)
    raise MVFormerError(f"{source}: seq_len must be a whole number, found {value!r}")


def _check_name(name, source: str) -> str:
    """A video name that can be a file name of the generic layout."""
    if not isinstance(name, str) or not name or name.startswith(".") or any(c in name for c in "/\\\n\r"):
        raise MVFormerError(f"{source}: video name {name!r} cannot be a file name")
    return name


def _inside(root: Path, relative, source: str) -> Path:
    """ROOT/relative for a path a pickle names, which must stay inside ROOT and exist."""
    if not isinstance(relative, str) or not relative or Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise MVFormerError(f"{source}: video_file {relative!r} must be a path relative to {root}")
    path = root / relative
    if not path.exists():
        raise MVFormerError(f"{source}: names video {relative} but {path} does not exist")
    return path


def _record_entries(records, root: Path, pickle_path: Path, num_classes: int | None,
                    indices: Iterable[int] | None = None) -> list[_Entry]:
    """Entries of CARL-style records {"name", "video_file", "frame_label", "seq_len"}."""
    if not isinstance(records, list):
        raise MVFormerError(f"{pickle_path}: expected a list of video records, found {type(records).__name__}")
    entries = []
    for i in range(len(records)) if indices is None else indices:
        record = records[i]
        source = f"{pickle_path} record {i}"
        if not isinstance(record, dict):
            raise MVFormerError(f"{source}: expected a dict, found {type(record).__name__}")
        missing = [key for key in ("name", "video_file", "frame_label", "seq_len") if key not in record]
        if missing:
            raise MVFormerError(f"{source}: has no {', '.join(map(repr, missing))} "
                                f"(keys: {', '.join(map(str, record))})")
        name = _check_name(record["name"], source)
        source = f"{pickle_path} record {i} ({name})"
        path = _inside(root, record["video_file"], source)
        labels = _as_labels(record["frame_label"], source, num_classes)
        entries.append(_Entry(name, path, labels, _as_count(record["seq_len"], source), source))
    return entries


# --- Penn Action -------------------------------------------------------------------------------------------------


def _penn_is_official(root: Path) -> bool:
    if any((root / f"{split}.pkl").is_file() for split in ("train", "val")):
        return False
    if (root / "frames").is_dir() and (root / "labels").is_dir():
        return True
    raise MVFormerError(f"{root}: not a Penn Action folder: expected train.pkl and val.pkl (CARL / MV-Former "
                        f"download) or frames/ and labels/ (official release)")


def _penn_splits(root: Path, subset: str | None) -> list[str]:
    if _penn_is_official(root):
        return ["train", "val"]
    return [split for split in ("train", "val", "test") if (root / f"{split}.pkl").is_file()]


def _penn_pickle_entries(root: Path, split: str) -> list[_Entry]:
    path = root / f"{split}.pkl"
    content = load_pickle(path)
    if not (isinstance(content, (tuple, list)) and len(content) == 2 and isinstance(content[1], (list, tuple))):
        raise MVFormerError(f"{path}: expected the tuple (records, action_to_indices) of the Penn Action pickles")
    records, action_to_indices = content
    if len(action_to_indices) != len(PENN_ACTIONS):
        raise MVFormerError(f"{path}: action_to_indices has {len(action_to_indices)} lists, expected one per action "
                            f"({len(PENN_ACTIONS)})")
    entries = []
    for action, indices in zip(PENN_ACTIONS, action_to_indices):
        indices = [int(i) for i in indices]
        if any(not 0 <= i < len(records) for i in indices):
            raise MVFormerError(f"{path}: action_to_indices of {action} points past the {len(records)} records")
        for entry in _record_entries(records, root, path, PENN_ACTION_PHASES[action], indices):
            entries.append(_Entry(entry.name, entry.path, entry.labels, entry.length, entry.source, action))
    return entries


def _mat_value(mat: dict, key: str, path: Path):
    if key not in mat:
        raise MVFormerError(f"{path}: has no '{key}' field (a Penn Action label file has action, nframes, train)")
    return np.asarray(mat[key]).squeeze()


def _read_penn_mat(path: Path) -> tuple[str, bool, int]:
    """(action, is training video, nframes) of one official Penn Action label file."""
    try:
        mat = scipy.io.loadmat(path, variable_names=["action", "train", "nframes"], squeeze_me=True)
    except Exception as error:  # scipy raises many types for a damaged file
        raise MVFormerError(f"{path}: cannot read MATLAB file ({type(error).__name__}: {error})") from None
    action = _mat_value(mat, "action", path)
    train, nframes = _mat_value(mat, "train", path), _mat_value(mat, "nframes", path)
    if action.ndim or train.ndim or nframes.ndim:
        raise MVFormerError(f"{path}: action, train and nframes must be single values")
    return str(action), int(train) == 1, _as_count(nframes.item(), str(path))


def _phase_files(root: Path) -> tuple[Path, dict[str, Path]]:
    """The phase-label folder and its NNNN.npy files by video id."""
    folder = next((root / name for name in ("phases", "penn_action_labels") if (root / name).is_dir()), None)
    if folder is None:
        raise MVFormerError(f"{root}: the official Penn Action release needs per-frame phase labels in {root}/phases/ "
                            f"(one NNNN.npy per video, e.g. the CARL download penn_action_labels/)")
    files: dict[str, Path] = {}
    for path in sorted(folder.rglob("*.npy")):
        if path.stem in files:
            raise MVFormerError(f"{folder}: phase labels of video {path.stem} appear twice "
                                f"({files[path.stem]}, {path})")
        files[path.stem] = path
    return folder, files


def _penn_official_entries(root: Path, split: str) -> tuple[list[_Entry], Skipped]:
    folder, phases = _phase_files(root)
    entries, skipped = [], []
    for mat_path in sorted((root / "labels").glob("*.mat")):
        video_id = mat_path.stem
        action, is_train, nframes = _read_penn_mat(mat_path)
        if action not in PENN_ACTION_PHASES:
            continue
        frames = root / "frames" / video_id
        phase_path = phases.get(video_id)
        parts = phase_path.relative_to(folder).parts if phase_path is not None else ()
        video_split = parts[0] if len(parts) > 1 and parts[0] in ("train", "val") else "train" if is_train else "val"
        if video_split != split:
            continue
        if phase_path is None:
            skipped.append((frames, f"no phase labels {video_id}.npy under {folder}"))
            continue
        if not frames.is_dir():
            raise MVFormerError(f"{mat_path}: its frame folder {frames} does not exist")
        try:
            values = np.load(phase_path, allow_pickle=False)
        except Exception as error:
            raise MVFormerError(f"{phase_path}: cannot read phase labels ({type(error).__name__}: {error})") from None
        labels = _as_labels(values, str(phase_path), PENN_ACTION_PHASES[action])
        if len(labels) != nframes:
            raise MVFormerError(f"{phase_path}: has {len(labels)} phase labels but {mat_path.name} says the video has "
                                f"{nframes} frames")
        entries.append(_Entry(f"{video_id}_{action}", frames, labels, nframes, str(mat_path), action))
    return entries, skipped


def _penn_entries(root: Path, split: str, subset: str | None) -> tuple[list[_Entry], Skipped]:
    entries, skipped = _penn_official_entries(root, split) if _penn_is_official(root) else (
        _penn_pickle_entries(root, split), [])
    if subset is not None:
        entries = [entry for entry in entries if entry.group == subset]
    return entries, skipped


def penn_action_actions(root: str | Path, format: str = "penn_action") -> list[str]:
    """The Penn Action actions present under root, in the published order: the datasets to evaluate separately.

    format "penn_action": actions with a video in any split of the download; "generic": the sub-folders ACTION/ that
    `prepare("penn_action", src, root)` wrote.
    """
    root = Path(root)
    if format == "generic":
        return [action for action in PENN_ACTIONS if (root / action / "splits").is_dir()]
    if format != "penn_action":
        raise MVFormerError(f"{root}: Penn Action actions are listed for format penn_action or generic, not {format!r}")
    present = set()
    for split in _penn_splits(root, None):
        present.update(entry.group for entry in _penn_entries(root, split, None)[0])
    return [action for action in PENN_ACTIONS if action in present]


# --- Pouring and FineGym ---------------------------------------------------------------------------------------


def _pouring_splits(root: Path, subset: str | None) -> list[str]:
    return [split for split in ("train", "val", "test") if (root / f"{split}.pkl").is_file()]


def _pouring_entries(root: Path, split: str, subset: str | None) -> tuple[list[_Entry], Skipped]:
    path = root / f"{split}.pkl"
    if not path.is_file():
        raise MVFormerError(f"{root}: Pouring split {split!r} needs {path.name} (found: "
                            f"{', '.join(p.name for p in sorted(root.glob('*.pkl'))) or 'no pickles'})")
    return _record_entries(load_pickle(path), root, path, POURING_PHASES), []


def _finegym_pickle(root: Path, split: str, subset: str) -> Path:
    names = {"train": [f"gym{subset}_train_v1.0.pkl", f"gym{subset}_train_v1.1.pkl"],
             "val": [f"gym{subset}_val.pkl"], "additional": ["additional_v1.0.pkl"]}
    if split not in names:
        raise MVFormerError(f"{root}: FineGym has splits train, val and additional, not {split!r}")
    path = next((root / name for name in names[split] if (root / name).is_file()), None)
    if path is None:
        raise MVFormerError(f"{root}: FineGym{subset} split {split} needs {' or '.join(names[split])}")
    return path


def _finegym_splits(root: Path, subset: str | None) -> list[str]:
    present = []
    for split in ("train", "val", "additional"):
        try:
            _finegym_pickle(root, split, subset)
        except MVFormerError:
            continue
        present.append(split)
    return present


def _finegym_entries(root: Path, split: str, subset: str | None) -> tuple[list[_Entry], Skipped]:
    path = _finegym_pickle(root, split, subset)
    return _record_entries(load_pickle(path), root, path, int(subset)), []


# --- Kinetics-400 --------------------------------------------------------------------------------------------------


def _kinetics_csv(root: Path, split: str) -> Path | None:
    return next((path for path in (root / "annotations" / f"{split}.csv", root / f"{split}.csv") if path.is_file()),
                None)


def _kinetics_splits(root: Path, subset: str | None) -> list[str]:
    return [split for split in ("train", "val", "test") if _kinetics_csv(root, split) or (root / split).is_dir()]


def _kinetics_csv_paths(root: Path, split: str, csv_path: Path) -> list[Path]:
    """Video paths a Kinetics CSV lists, whether they exist or not."""
    try:
        rows = [row for row in csv.reader(csv_path.read_text(encoding="utf-8-sig").splitlines()) if row]
    except UnicodeDecodeError:
        raise MVFormerError(f"{csv_path}: is not UTF-8 text") from None
    if not rows:
        raise MVFormerError(f"{csv_path}: lists no videos")
    header = [cell.strip() for cell in rows[0]]
    if "youtube_id" not in header:  # CARL's list: video path, class label
        relative = [Path(row[0].strip()) for row in rows]
        return [root.parent / path if path.parts[0] == root.name else root / path for path in relative]
    missing = [key for key in ("youtube_id", "time_start", "time_end") if key not in header]
    if missing:
        raise MVFormerError(f"{csv_path}: header lacks {', '.join(missing)} (expected label,youtube_id,time_start,"
                            f"time_end,split)")
    column = {key: header.index(key) for key in ("youtube_id", "time_start", "time_end")}
    label_column = header.index("label") if "label" in header else None
    paths = []
    for line, row in enumerate(rows[1:], start=2):
        try:
            youtube_id = row[column["youtube_id"]].strip()
            start, end = (int(float(row[column[key]])) for key in ("time_start", "time_end"))
        except (IndexError, ValueError):
            raise MVFormerError(f"{csv_path} line {line}: expected youtube_id and whole-second time_start, time_end, "
                                f"found '{','.join(row)}'") from None
        stem = f"{youtube_id}_{start:06d}_{end:06d}.mp4"
        in_class = root / split / row[label_column].strip() / stem if label_column is not None else None
        paths.append(in_class if in_class is not None and in_class.is_file() else root / split / stem)
    return paths


def _kinetics_folder_paths(folder: Path) -> list[Path]:
    """Videos of a folder and of its class sub-folders, sorted."""
    paths = []
    for child in sorted(folder.iterdir()):
        if child.is_dir():
            paths.extend(sorted(p for p in child.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()))
        elif child.suffix.lower() in VIDEO_SUFFIXES:
            paths.append(child)
    return [path for path in paths if not path.name.startswith(".")]


def _kinetics_entries(root: Path, split: str, subset: str | None) -> tuple[list[_Entry], Skipped]:
    csv_path = _kinetics_csv(root, split)
    if csv_path is not None:
        paths, source = _kinetics_csv_paths(root, split, csv_path), str(csv_path)
    elif (root / split).is_dir():
        paths, source = _kinetics_folder_paths(root / split), str(root / split)
    else:
        raise MVFormerError(f"{root}: Kinetics split {split!r} needs annotations/{split}.csv, {split}.csv or a "
                            f"{split}/ folder of videos")
    entries, skipped, seen = [], [], set()
    for path in paths:
        if not path.is_file():
            skipped.append((path, "missing"))
        elif path.stem in seen:
            skipped.append((path, "another video of this split has the same name"))
        else:
            seen.add(path.stem)
            entries.append(_Entry(_check_name(path.stem, source), path, None, None, source))
    return entries, skipped


# --- the registry ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetFormat:
    """How to read one published layout: which splits it has and, per split, its videos and labels."""

    name: str
    splits: Callable[[Path, str | None], list[str]]
    entries: Callable[[Path, str, str | None], tuple[list[_Entry], Skipped]]
    num_classes: Callable[[str | None], int | None]
    subsets: tuple[str, ...] = ()  # allowed subset values; empty: no subsets
    subset_required: bool = False
    skip_unreadable: bool = False  # unlabelled pre-training sets: unreadable videos are skipped and counted

    def check_subset(self, subset: str | int | None) -> str | None:
        """The subset as a string (FineGym's 99 may come as a number), if this format has it."""
        subset = None if subset is None else str(subset)
        if subset is None and self.subset_required:
            raise MVFormerError(f"format {self.name} needs a subset: one of {', '.join(self.subsets)}")
        if subset is not None and subset not in self.subsets:
            allowed = f"one of {', '.join(self.subsets)}" if self.subsets else "none"
            raise MVFormerError(f"format {self.name} has no subset {subset!r} (subsets: {allowed})")
        return subset

    def read(self, root: str | Path, split: str, subset: str | None = None) -> SplitRecords:
        """The videos of one split, each counted and checked against its labels (slow part: one index per video)."""
        root, subset = Path(root), self.check_subset(subset)
        if not root.is_dir():
            raise MVFormerError(f"{root}: dataset root does not exist or is not a folder")
        entries, skipped = self.entries(root, split, subset)
        records, groups = [], []
        for entry in progress_bar(entries, desc=f"indexing {split} videos", unit="video"):
            try:
                num_frames = count_frames(entry.path)
            except MVFormerError as error:
                if not self.skip_unreadable:
                    raise
                skipped.append((entry.path, str(error).removeprefix(f"{entry.path}: ")))
                continue
            if entry.length is not None and entry.length != num_frames:
                raise MVFormerError(f"{entry.source}: says the video has {entry.length} frames but {entry.path} has "
                                    f"{num_frames}")
            if entry.labels is not None and len(entry.labels) != num_frames:
                raise MVFormerError(f"{entry.source}: has {len(entry.labels)} frame labels but {entry.path} has "
                                    f"{num_frames} frames")
            records.append(VideoRecord(entry.name, entry.path, num_frames, entry.labels))
            groups.append(entry.group)
        return SplitRecords(records, self.num_classes(subset), skipped, groups)


@dataclass
class SplitRecords:
    """A split as a format reader returns it, ready for VideoDataset.from_records."""

    records: list[VideoRecord]
    num_classes: int | None
    skipped: Skipped = field(default_factory=list)
    groups: list[str | None] = field(default_factory=list)  # per record: its Penn Action action

    def action(self, action: str) -> SplitRecords:
        """The videos of one Penn Action action."""
        keep = [i for i, group in enumerate(self.groups) if group == action]
        return SplitRecords([self.records[i] for i in keep], _penn_num_classes(action), [], [action] * len(keep))


def _penn_num_classes(action: str | None) -> int:
    """Phases of one action; pooled, the most any action has (labels of different actions share indices)."""
    return PENN_ACTION_PHASES[action] if action else max(PENN_ACTION_PHASES.values())


FORMATS = {
    "penn_action": DatasetFormat("penn_action", _penn_splits, _penn_entries, _penn_num_classes,
                                 subsets=tuple(PENN_ACTIONS)),
    "pouring": DatasetFormat("pouring", _pouring_splits, _pouring_entries, lambda subset: POURING_PHASES),
    "finegym": DatasetFormat("finegym", _finegym_splits, _finegym_entries, lambda subset: int(subset),
                             subsets=FINEGYM_SUBSETS, subset_required=True),
    "kinetics400": DatasetFormat("kinetics400", _kinetics_splits, _kinetics_entries, lambda subset: None,
                                 skip_unreadable=True),
}


def _format(name: str) -> DatasetFormat:
    if name not in FORMATS:
        raise MVFormerError(f"unknown dataset format {name!r} (formats: generic, {', '.join(FORMATS)})")
    return FORMATS[name]


def open_dataset(root: str | Path, split: str, format: str = "generic", subset: str | None = None,
                 size: int | None = None, preload: bool = False) -> VideoDataset:
    """One split of a dataset in any accepted layout (module docstring) as a VideoDataset.

    subset: the Penn Action action (None: all 13 pooled) or FineGym "99" / "288".
    size, preload: as VideoDataset. Unreadable Kinetics videos are left out and listed in `dataset.skipped`.
    """
    if format == "generic":
        if subset is not None:
            raise MVFormerError(f"{root}: the generic layout has no subsets (got {subset!r})")
        return VideoDataset(root, split, size, preload)
    data = _format(format).read(root, split, subset)
    return VideoDataset.from_records(root, split, data.records, size=size, preload=preload,
                                     num_classes=data.num_classes, skipped=data.skipped)


# --- prepare: write the generic layout ---------------------------------------------------------------------------


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not supported
        shutil.copyfile(source, target)


def _place_video(source: Path, target: Path) -> None:
    """Hard-link (else copy) a video file or the images of a frame folder to target, atomically."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    _remove(temporary)
    if source.is_dir():
        temporary.mkdir()
        for image in frame_image_paths(source):
            _link_or_copy(image, temporary / image.name)
    else:
        _link_or_copy(source, temporary)
    _remove(target)
    os.replace(temporary, target)


def _write_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _labels_csv(labels: np.ndarray) -> str:
    return "frame,label\n" + "".join(f"{frame},{label}\n" for frame, label in enumerate(labels.tolist()))


class _Manifest:
    """What prepare wrote into DEST (owned paths) and which videos are complete, saved atomically."""

    def __init__(self, dest: Path, key: dict) -> None:
        self.path = dest / MANIFEST
        self.key = key
        self.owned: set[str] = set()
        self.done: set[str] = set()
        if self.path.is_file():
            try:
                saved = json.loads(self.path.read_text(encoding="utf-8"))
                stored_key, owned, done = saved["key"], saved["owned"], saved["done"]
            except (ValueError, KeyError, TypeError):
                raise MVFormerError(f"{self.path}: damaged prepare manifest; remove {dest} and prepare again") from None
            if stored_key != key:
                raise MVFormerError(f"{dest}: was prepared from {stored_key}, not {key}; choose another destination")
            self.owned, self.done = set(owned), set(done)

    def save(self) -> None:
        text = json.dumps({"key": self.key, "owned": sorted(self.owned), "done": sorted(self.done)})
        _write_text(self.path, text)


def _existing(folder: Path) -> dict[str, list[str]]:
    """Entries of a folder by video name: videos/NAME.mp4, videos/NAME/ and labels/NAME.csv all count as NAME."""
    found: dict[str, list[str]] = {}
    if folder.is_dir():
        for entry in os.scandir(folder):
            if not entry.name.startswith("."):
                found.setdefault(entry.name if entry.is_dir() else Path(entry.name).stem, []).append(entry.name)
    return found


def _write_generic(dest: Path, splits: dict[str, list[VideoRecord]], num_classes: int | None, key: dict,
                   note: Callable[[str], None]) -> None:
    """Write one generic-layout root from the records of its splits, resuming and never overwriting others' files."""
    videos: dict[str, VideoRecord] = {}
    for records in splits.values():
        for record in records:
            other = videos.setdefault(record.name, record)
            if other.path != record.path:
                raise MVFormerError(f"{dest}: two different videos are named {record.name!r} ({other.path}, "
                                    f"{record.path})")
    dest.mkdir(parents=True, exist_ok=True)
    manifest = _Manifest(dest, key)

    def targets(record: VideoRecord) -> list[str]:
        video = f"videos/{record.name}" + ("" if record.path.is_dir() else record.path.suffix)
        return [video] + ([f"labels/{record.name}.csv"] if record.labels is not None else [])

    extra = [f"splits/{split}.txt" for split in splits] + (["classes.txt"] if num_classes else [])
    on_disk = {"videos": _existing(dest / "videos"), "labels": _existing(dest / "labels")}
    for name in videos:
        for relative in [f"{folder}/{entry}" for folder in on_disk for entry in on_disk[folder].get(name, [])]:
            if relative not in manifest.owned:
                raise MVFormerError(f"{dest / relative}: exists and was not written by mvformer prepare; move it away "
                                    f"or choose another destination")
    for relative in extra:
        if (dest / relative).exists() and relative not in manifest.owned:
            raise MVFormerError(f"{dest / relative}: exists and was not written by mvformer prepare; move it away or "
                                f"choose another destination")

    todo = [record for name, record in videos.items()
            if name not in manifest.done or not all((dest / t).exists() for t in targets(record))]
    (dest / "videos").mkdir(exist_ok=True)
    if any(record.labels is not None for record in todo):
        (dest / "labels").mkdir(exist_ok=True)
    progress = progress_bar(total=len(todo), desc=f"preparing {dest.name}", unit="video")
    start = 0
    while start < len(todo):
        batch = todo[start:start + max(PREPARE_BATCH, len(manifest.done) // 8)]  # rewrites stay linear in total
        manifest.owned.update(t for record in batch for t in targets(record))
        manifest.save()  # ownership first: a crash leaves only files the next run may overwrite
        for record in batch:
            video, *labels = targets(record)
            _place_video(record.path, dest / video)
            if labels:
                _write_text(dest / labels[0], _labels_csv(record.labels))
            progress.update()
        manifest.done.update(record.name for record in batch)
        manifest.save()
        start += len(batch)
    progress.close()

    manifest.owned.update(extra)
    manifest.save()
    (dest / "splits").mkdir(exist_ok=True)
    for split, records in splits.items():
        _write_text(dest / "splits" / f"{split}.txt", "".join(f"{record.name}\n" for record in records))
    if num_classes:
        _write_text(dest / "classes.txt", "".join(f"{c}\n" for c in range(num_classes)))
    note(f"{dest}: {len(videos)} videos ({len(todo)} written now, {len(videos) - len(todo)} already there)")


def prepare(format: str, src: str | Path, dest: str | Path, subset: str | None = None,
            note: Callable[[str], None] | None = None) -> Path:
    """Convert a dataset in a published layout into the generic layout at dest; returns dest.

    Video files and frame images are hard-linked (copied across file systems). Resumable: a rerun skips the videos
    already done. Refuses to overwrite any file in dest it did not write (dest/.mvformer-prepare.json records them).
    penn_action without a subset writes dest/ACTION/ for each action and the pooled dest/all/.
    note: receives one-line summaries (videos written, unreadable videos skipped).
    """
    note = note or (lambda line: None)
    dataset_format = _format(format)
    src, dest = Path(src), Path(dest)
    subset = dataset_format.check_subset(subset)
    if not src.is_dir():
        raise MVFormerError(f"{src}: dataset root does not exist or is not a folder")
    if dest.resolve() == src.resolve():
        raise MVFormerError(f"{dest}: the destination must differ from the source")
    split_names = dataset_format.splits(src, subset)
    if not split_names:
        raise MVFormerError(f"{src}: holds no split of format {format} (see mvformer.data.formats)")
    data = {split: dataset_format.read(src, split, subset) for split in split_names}
    for split, split_data in data.items():
        if split_data.skipped:
            path, reason = split_data.skipped[0]
            note(f"{src}: {split}: left out {len(split_data.skipped)} videos, e.g. {path} ({reason})")
    key = {"format": format, "source": str(src.resolve()), "subset": subset}
    roots = [(dest, data, key)]
    if format == "penn_action" and subset is None:
        roots = [(dest / action, {split: split_data.action(action) for split, split_data in data.items()},
                  {**key, "subset": action}) for action in PENN_ACTIONS] + [(dest / "all", data, key)]
    for root, root_data, root_key in roots:
        splits = {split: split_data.records for split, split_data in root_data.items() if split_data.records}
        if splits:
            num_classes = next(iter(root_data.values())).num_classes
            _write_generic(root, splits, num_classes, root_key, note)
    return dest
