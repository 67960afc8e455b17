"""The generic "your own videos" dataset layout, checked up front so that mistakes surface before training.

ROOT/videos/NAME.mp4 (any container PyAV reads) or ROOT/videos/NAME/ (a folder of numbered frame images)
ROOT/labels/NAME.csv    optional; header `frame,label`, one row per decoded frame, label an integer
                        (-1 = unlabelled) or a class name from classes.txt
ROOT/classes.txt        optional; one class name per line, line order = class index
ROOT/splits/SPLIT.txt   one NAME per line
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvformer.data.video import (
    IMAGE_SUFFIXES,
    FrameIndices,
    VideoIndex,
    as_frame_indices,
    count_frames,
    index_video,
    read_video,
)
from mvformer.errors import MVFormerError
from mvformer.files import write_text
from mvformer.progress import progress_bar


@dataclass(frozen=True)
class VideoRecord:
    """One video of a split: its name, file or frame folder, decoded frame count and per-frame labels."""

    name: str
    path: Path
    num_frames: int
    labels: np.ndarray | None  # int64 (num_frames,), -1 = unlabelled; None when the dataset has no labels


def _read_text(path: Path, root: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise MVFormerError(f"{root}: {path.relative_to(root)} is not UTF-8 text") from None


def _read_names(path: Path, root: Path, shown: str, what: str) -> list[str]:
    """Non-blank, stripped lines of a text file, each at most once; `shown` names the file in errors."""
    names = [line.strip() for line in _read_text(path, root).splitlines() if line.strip()]
    if not names:
        raise MVFormerError(f"{root}: {shown} lists no {what}")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise MVFormerError(f"{root}: {shown} lists {name!r} twice")
        seen.add(name)
    return names


def split_file(root: str | Path, split: str) -> Path:
    """ROOT/splits/SPLIT.txt, the list of a split's video names."""
    return Path(root) / "splits" / f"{split}.txt"


def has_generic_split(root: str | Path, split: str) -> bool:
    return split_file(root, split).is_file()


def is_generic_root(root: str | Path) -> bool:
    """Whether `root` is laid out in the generic layout (it has a splits/ folder)."""
    return (Path(root) / "splits").is_dir()


def split_names(root: str | Path, split: str) -> list[str] | None:
    """The video names a split file lists, or None when the split does not exist."""
    path = split_file(root, split)
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]


def write_split(root: str | Path, split: str, names: list[str]) -> None:
    """Write ROOT/splits/SPLIT.txt (atomically), one name per line."""
    write_text(split_file(root, split), "".join(f"{name}\n" for name in names))


def _find_video(root: Path, name: str, split_file: str) -> Path:
    """videos/NAME/ if it is a frame folder, else the one file videos/NAME.<ext>."""
    folder = root / "videos" / name
    if folder.is_dir():
        return folder
    candidates = [path for path in (root / "videos").glob(f"{name}.*")
                  if path.is_file() and path.stem == name and path.suffix.lower() not in IMAGE_SUFFIXES]
    if not candidates:
        raise MVFormerError(f"{root}: {split_file} names video {name!r} but there is no videos/{name}.mp4 (or other "
                            f"container) nor videos/{name}/ frame folder")
    if len(candidates) > 1:
        found = ", ".join(sorted(path.name for path in candidates))
        raise MVFormerError(f"{root}: video {name!r} is ambiguous, videos/ holds {found}")
    return candidates[0]


def _parse_label(value: str, classes: list[str] | None) -> int | None:
    """Class index of one label cell: a class name or an integer (-1 = unlabelled); None if neither."""
    if classes is not None and value in classes:
        return classes.index(value)
    try:
        label = int(value)
    except ValueError:
        return None
    if label < -1 or (classes is not None and label >= len(classes)):
        return None
    return label


def _shown(path: Path, root: Path) -> Path:
    """`path` relative to the dataset root when it lies inside it, else as given."""
    return path.relative_to(root) if path.is_relative_to(root) else path


def _read_video_labels(root: Path, name: str, classes: list[str] | None) -> np.ndarray:
    path = root / "labels" / f"{name}.csv"
    if not path.is_file():
        raise MVFormerError(f"{root}: labels/ exists but labels/{name}.csv does not")
    return _read_labels(path, root, classes)


def _read_labels(path: Path, root: Path, classes: list[str] | None) -> np.ndarray:
    """Labels int64 (rows,) of one label CSV, checking header, frame numbering and label values."""
    shown = path.relative_to(root)
    rows = [row for row in csv.reader(_read_text(path, root).splitlines()) if row]
    if not rows or [cell.strip() for cell in rows[0]] != ["frame", "label"]:
        header = ",".join(rows[0]) if rows else "nothing"
        raise MVFormerError(f"{root}: {shown} must start with the header 'frame,label', found '{header}'")
    labels = np.empty(len(rows) - 1, dtype=np.int64)
    for frame, row in enumerate(rows[1:]):
        line = frame + 2
        if len(row) != 2 or row[0].strip() != str(frame):
            raise MVFormerError(f"{root}: {shown} line {line}: expected '{frame},LABEL', found '{','.join(row)}'")
        label = _parse_label(row[1].strip(), classes)
        if label is None:
            if classes:
                known = f"a name in classes.txt or an integer in [-1, {len(classes) - 1}]"
            else:
                known = "an integer >= -1 (there is no classes.txt)"
            raise MVFormerError(f"{root}: {shown} line {line}: label {row[1]!r} is not {known}")
        labels[frame] = label
    return labels


class VideoDataset:
    """The videos of one split, validated at construction: frame counts, labels, classes.

    size: frames are decoded squashed to size x size (None = native size).
    preload: decode every video once now and serve frames from memory.
    num_classes: len(classes.txt), else 1 + the largest label of this split, else None without labels.
    skipped: (path, reason) of unreadable videos left out (unlabelled sets only; elsewhere they are errors).
    Only lengths, keyframe indexes and labels are held in memory, never the videos (unless preloaded).
    """

    def __init__(self, root: str | Path, split: str, size: int | None = None, preload: bool = False) -> None:
        root = Path(root)
        if not root.is_dir():
            raise MVFormerError(f"{root}: dataset root does not exist or is not a folder")
        split_path = split_file(root, split)
        if not split_path.is_file():
            raise MVFormerError(f"{root}: split file splits/{split}.txt does not exist")
        names = _read_names(split_path, root, f"split file splits/{split}.txt", "videos")
        classes_path = root / "classes.txt"
        classes = _read_names(classes_path, root, "classes.txt", "classes") if classes_path.is_file() else None
        paths = [_find_video(root, name, f"splits/{split}.txt") for name in names]
        has_labels = (root / "labels").is_dir()
        labels = [_read_video_labels(root, name, classes) if has_labels else None for name in names]
        indexes = [None if path.is_dir() else index_video(path) for path in paths]
        counts = [count_frames(path) if index is None else index.num_frames for path, index in zip(paths, indexes)]
        for name, path, num_frames, video_labels in zip(names, paths, counts, labels):
            if video_labels is not None and len(video_labels) != num_frames:
                raise MVFormerError(f"{root}: labels/{name}.csv has {len(video_labels)} rows but "
                                    f"{path.relative_to(root)} has {num_frames} frames")
        records = [VideoRecord(*fields) for fields in zip(names, paths, counts, labels)]
        self._setup(root, split, records, classes, size, preload, None, [], indexes)

    @classmethod
    def from_records(cls, root: str | Path, split: str, records: list[VideoRecord], classes: list[str] | None = None,
                     size: int | None = None, preload: bool = False, num_classes: int | None = None,
                     skipped: list[tuple[Path, str]] | None = None) -> VideoDataset:
        """A dataset of records built by a format reader (mvformer.data.formats), checked like the generic one."""
        dataset = cls.__new__(cls)
        dataset._setup(Path(root), split, list(records), classes, size, preload, num_classes, list(skipped or []),
                       [None] * len(records))
        return dataset

    def _setup(self, root: Path, split: str, records: list[VideoRecord], classes: list[str] | None,
               size: int | None, preload: bool, num_classes: int | None, skipped: list[tuple[Path, str]],
               indexes: list[VideoIndex | None]) -> None:
        self.root, self.split, self.size, self.classes, self.skipped = root, split, size, classes, skipped
        if not records:
            raise MVFormerError(f"{root}: split {split!r} holds no readable videos")
        for record in records:
            if record.labels is not None and len(record.labels) != record.num_frames:
                raise MVFormerError(f"{root}: the labels of {record.name!r} have {len(record.labels)} rows but "
                                    f"{_shown(record.path, root)} has {record.num_frames} frames")
        self.records = records
        self._indexes = indexes  # filled lazily for records from a format reader
        self._videos: list[np.ndarray] | None = None  # each (T, H, W, 3) when preloaded
        if preload:
            progress = progress_bar(range(len(records)), desc=f"decoding {split} videos", unit="video")
            self._videos = [read_video(records[i].path, size) for i in progress]
            for record, video in zip(records, self._videos):
                if len(video) != record.num_frames:
                    raise MVFormerError(f"{_shown(record.path, root)}: decodes to {len(video)} frames, but its "
                                        f"container lists {record.num_frames}")
        self.num_classes = num_classes if num_classes is not None else (
            len(classes) if classes is not None else self._largest_label_plus_one())

    def _largest_label_plus_one(self) -> int | None:
        """Class count inferred from integer labels (no classes.txt); None when no frame is labelled."""
        largest = max((int(r.labels.max()) for r in self.records if r.labels is not None and len(r.labels)), default=-1)
        return largest + 1 if largest >= 0 else None

    @property
    def labelled(self) -> bool:
        """Whether every video has frame labels (only then can the split be scored)."""
        return all(record.labels is not None for record in self.records)

    def __len__(self) -> int:
        return len(self.records)

    def frames(self, i: int, indices: FrameIndices | None = None) -> np.ndarray:
        """Frames of video i, uint8 (T, H, W, 3) at the dataset's size; only `indices` (sorted) if given."""
        record = self.records[i]
        if self._videos is None:
            if self._indexes[i] is None and not record.path.is_dir():
                self._indexes[i] = index_video(record.path)
            return read_video(record.path, self.size, indices, self._indexes[i])
        video = self._videos[i]  # (T, H, W, 3)
        if indices is None:
            return video.copy()
        return video[as_frame_indices(indices, record.path, len(video))]
