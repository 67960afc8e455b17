"""Penn Action: CARL / MV-Former pickles, or the official release with per-video phase labels (see the package
docstring for the paths and keys)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from mvformer.data.datasets import inside_root
from mvformer.data.formats.records import Entry, Skipped, as_count, as_labels, load_pickle, record_entries
from mvformer.errors import MVFormerError

PENN_ACTION_PHASES = {
    "baseball_pitch": 4, "baseball_swing": 3, "bench_press": 2, "bowl": 3, "clean_and_jerk": 6, "golf_swing": 3,
    "jumping_jacks": 4, "pushup": 2, "pullup": 2, "situp": 2, "squat": 4, "tennis_forehand": 3, "tennis_serve": 4,
}


PENN_ACTIONS = list(PENN_ACTION_PHASES)


def num_classes(action: str | None) -> int:
    """Phases of one action; pooled, the most any action has (labels of different actions share indices)."""
    return PENN_ACTION_PHASES[action] if action else max(PENN_ACTION_PHASES.values())


def _penn_is_official(root: Path) -> bool:
    if any((root / f"{split}.pkl").is_file() for split in ("train", "val")):
        return False
    if (root / "frames").is_dir() and (root / "labels").is_dir():
        return True
    raise MVFormerError(f"{root}: not a Penn Action folder: expected train.pkl and val.pkl (CARL / MV-Former "
                        f"download) or frames/ and labels/ (official release)")


def splits(root: Path, subset: str | None) -> list[str]:
    if _penn_is_official(root):
        return ["train", "val"]
    return [split for split in ("train", "val", "test") if (root / f"{split}.pkl").is_file()]


def _penn_pickle_entries(root: Path, split: str) -> list[Entry]:
    path = root / f"{split}.pkl"
    content = load_pickle(path, root)
    if not (isinstance(content, (tuple, list)) and len(content) == 2 and isinstance(content[1], (list, tuple))):
        raise MVFormerError(f"{path}: expected the tuple (records, action_to_indices) of the Penn Action pickles")
    records, action_to_indices = content
    if len(action_to_indices) != len(PENN_ACTIONS):
        raise MVFormerError(f"{path}: action_to_indices has {len(action_to_indices)} lists, expected one per action "
                            f"({len(PENN_ACTIONS)})")
    entries = []
    for action, indices in zip(PENN_ACTIONS, action_to_indices):
        if not isinstance(indices, (list, tuple)) or not all(isinstance(i, (int, np.integer)) for i in indices):
            raise MVFormerError(f"{path}: action_to_indices of {action} must be a list of record indices")
        indices = [int(i) for i in indices]
        if any(not 0 <= i < len(records) for i in indices):
            raise MVFormerError(f"{path}: action_to_indices of {action} points past the {len(records)} records")
        for entry in record_entries(records, root, path, PENN_ACTION_PHASES[action], indices):
            entries.append(Entry(entry.name, entry.path, entry.labels, entry.length, entry.source, action))
    if not entries:
        raise MVFormerError(f"{path}: action_to_indices assigns no record to any action (an empty split)")
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
    if action.ndim or train.ndim or nframes.ndim or train.dtype.kind not in "iuf":
        raise MVFormerError(f"{path}: action, train and nframes must be single values, train a number")
    return str(action), float(train) == 1, as_count(nframes.item(), str(path))


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


def _penn_official_entries(root: Path, split: str) -> tuple[list[Entry], Skipped]:
    folder, phases = _phase_files(root)
    entries, skipped = [], []
    for mat_path in sorted((root / "labels").glob("*.mat")):
        video_id = mat_path.stem
        action, is_train, nframes = _read_penn_mat(inside_root(root, mat_path, str(root)))
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
        inside_root(root, phase_path, str(mat_path))
        try:
            values = np.load(phase_path, allow_pickle=False)
        except Exception as error:
            raise MVFormerError(f"{phase_path}: cannot read phase labels ({type(error).__name__}: {error})") from None
        labels = as_labels(values, str(phase_path), PENN_ACTION_PHASES[action])
        if len(labels) != nframes:
            raise MVFormerError(f"{phase_path}: has {len(labels)} phase labels but {mat_path.name} says the video has "
                                f"{nframes} frames")
        entries.append(Entry(f"{video_id}_{action}", frames, labels, nframes, str(mat_path), action))
    return entries, skipped


def entries(root: Path, split: str, subset: str | None) -> tuple[list[Entry], Skipped]:
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
    for split in splits(root, None):
        present.update(entry.group for entry in entries(root, split, None)[0])
    return [action for action in PENN_ACTIONS if action in present]
