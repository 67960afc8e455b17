"""The generic "your own videos" dataset layout, checked up front so that mistakes surface before training.

ROOT/videos/NAME.mp4 (any container PyAV reads) or ROOT/videos/NAME/ (a folder of numbered frame images)
ROOT/labels/NAME.csv    optional; header `frame,label`, one row per decoded frame, label an integer
                        (-1 = unlabelled) or a class name from classes.txt
ROOT/classes.txt        optional; one class name per line, line order = class index
ROOT/splits/SPLIT.txt   one NAME per line

A NAME is a plain file name (no path separators, not starting with "."), looked up literally (no wildcards).
Every file a dataset reads lies inside its root: paths are resolved (symbolic links followed) and one that lands
outside the resolved root is refused, in every layout. A symlinked root is fine; a symlink inside the root that
leaves it is not (link or move the whole dataset instead), so that a dataset file can never make mvformer read,
or `prepare` hard-link, a file the dataset does not hold.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np

from mvformer.data.video import (
    IMAGE_SUFFIXES,
    FrameIndices,
    VideoIndex,
    as_frame_indices,
    frame_image_paths,
    index_video,
    read_video,
)
from mvformer.errors import MVFormerError
from mvformer.files import write_text
from mvformer.progress import progress_bar

MAX_CLASSES = 10_000  # classes.txt length and integer labels are bounded: a typo must not allocate 2**40 columns


@dataclass(frozen=True)
class VideoRecord:
    """One video of a split: its name, file or frame folder, decoded frame count and per-frame labels."""

    name: str
    path: Path
    num_frames: int
    labels: np.ndarray | None  # int64 (num_frames,), -1 = unlabelled; None when the dataset has no labels


def check_root(root: str | Path, what: str = "data.root") -> Path:
    """The dataset folder as a Path; one line when it is unset, missing or a file (`what` names the setting)."""
    if not str(root).strip():
        raise MVFormerError(f"{what} is not set: it must name the dataset folder")
    root = Path(root)
    if not root.exists():
        raise MVFormerError(f"{root}: dataset root does not exist")
    if not root.is_dir():
        raise MVFormerError(f"{root}: dataset root is a file, not a folder")
    return root


def check_name(name, source: str, what: str = "video name") -> str:
    """A name that is one plain file name of the generic layout (video NAME, split SPLIT)."""
    if (not isinstance(name, str) or not name or name.startswith(".") or name != name.strip()
            or any(c in name for c in "/\\\0") or not name.isprintable()):
        raise MVFormerError(f"{source}: {what} {name!r} is not a plain file name (no path separators or "
                            f"surrounding spaces, not starting with '.', no control characters)")
    return name


def inside_root(root: Path, path: Path, source: str) -> Path:
    """`path` itself, refused when it resolves (symbolic links followed) outside the resolved dataset root."""
    try:
        resolved, resolved_root = path.resolve(), root.resolve()
    except (OSError, RuntimeError):  # a symbolic link loop
        raise MVFormerError(f"{source}: {_shown(path, root)} cannot be resolved (symbolic link loop?)") from None
    if not resolved.is_relative_to(resolved_root):
        raise MVFormerError(f"{source}: {_shown(path, root)} resolves to {resolved}, outside the dataset root "
                            f"(a dataset reads only files inside its root)")
    return path


def relative_inside(root: Path, relative, source: str, what: str) -> Path:
    """ROOT/relative for a path a dataset file names: relative, without '..', and resolving inside ROOT."""
    if not isinstance(relative, str):
        problem = f"it is a {type(relative).__name__}, not a string"
    elif not relative.strip():
        problem = "it is empty"
    elif "\0" in relative:
        problem = "it holds a NUL character"
    elif PurePath(relative).is_absolute():
        problem = "it is absolute"
    elif ".." in PurePath(relative).parts:
        problem = "'..' climbs out of the root"
    else:
        return inside_root(root, root / relative, source)
    raise MVFormerError(f"{source}: {what} {relative!r} must be a path relative to the dataset root {root} "
                        f"({problem})")


def frame_count_inside(root: Path, folder: Path, source: str) -> int:
    """Frames of a frame folder whose images all resolve inside the root (each may be a symbolic link)."""
    images = frame_image_paths(folder)
    for image in images:
        if image.is_symlink():
            inside_root(root, image, source)
    return len(images)


def _read_text(path: Path, root: Path) -> str:
    shown = _shown(path, root)
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise MVFormerError(f"{root}: {shown} is not UTF-8 text") from None
    except OSError as error:
        raise MVFormerError(f"{root}: cannot read {shown} ({error.strerror or error})") from None


def _read_list(path: Path, root: Path, what: str) -> dict[str, int]:
    """The entries of a list file (split file, classes.txt): non-blank stripped lines, each once, at least one,
    mapped to their line numbers; every error names the file (and the line)."""
    shown = _shown(path, root)
    inside_root(root, path, str(root))
    if not path.is_file():
        raise MVFormerError(f"{root}: {shown} is not a file")
    entries: dict[str, int] = {}
    for number, line in enumerate(_read_text(path, root).splitlines(), start=1):
        name = line.strip()
        if name in entries:
            raise MVFormerError(f"{root}: {shown} line {number}: {name!r} is listed twice (first on line "
                                f"{entries[name]})")
        if name:
            entries[name] = number
    if not entries:
        raise MVFormerError(f"{root}: {shown} is empty: it lists no {what}")
    return entries


def _read_split(root: Path, split: str) -> dict[str, int]:
    """The video names of ROOT/splits/SPLIT.txt (each a plain file name) mapped to their line numbers."""
    names = _read_list(split_file(root, split), root, "videos")
    for name, number in names.items():
        check_name(name, f"{root}: splits/{split}.txt line {number}")
    return names


def _read_classes(root: Path) -> list[str] | None:
    """classes.txt, if the dataset has one: at most MAX_CLASSES names, an integer name equal to its own index."""
    path = root / "classes.txt"
    if not os.path.lexists(path):
        return None
    classes = list(_read_list(path, root, "classes"))
    if len(classes) > MAX_CLASSES:
        raise MVFormerError(f"{root}: classes.txt lists {len(classes)} classes, more than the {MAX_CLASSES} allowed")
    for index, name in enumerate(classes):
        if _as_int(name) not in (None, index):
            raise MVFormerError(f"{root}: classes.txt line {index + 1}: class {index} is named {name!r}, which label "
                                f"files would read as class {_as_int(name)}; an integer class name must equal its "
                                f"index (line number - 1)")
    return classes


def check_generic_root(root: str | Path) -> Path:
    """`check_root`, and the root must hold the generic layout's splits/ folder."""
    root = check_root(root)
    if not (root / "splits").is_dir():
        raise MVFormerError(f"{root}: has no splits/ folder, so it is no dataset in the generic layout (videos/, "
                            f"splits/SPLIT.txt); a benchmark download needs data.format")
    return root


def split_file(root: str | Path, split: str) -> Path:
    """ROOT/splits/SPLIT.txt, the list of a split's video names."""
    return Path(root) / "splits" / f"{check_name(split, str(root), 'split')}.txt"


def has_generic_split(root: str | Path, split: str) -> bool:
    return split_file(root, split).is_file()


def is_generic_root(root: str | Path) -> bool:
    """Whether `root` is laid out in the generic layout (it has a splits/ folder)."""
    return (Path(root) / "splits").is_dir()


def split_names(root: str | Path, split: str) -> list[str] | None:
    """The video names a split file lists (checked as VideoDataset checks them), or None when there is no split."""
    if not os.path.lexists(split_file(root, split)):
        return None
    return list(_read_split(Path(root), split))


def check_video_name(name: str, where: str | Path) -> None:
    """Refuse a name a split file cannot hold as it is (split files are read as stripped, non-blank lines) or
    that is no file name: empty, '.', '..', a line break, a slash, surrounding spaces."""
    if name in ("", ".", "..") or name != name.strip() or any(c in name for c in "\n\r/\\"):
        raise MVFormerError(f"{where}: {name!r} cannot be a video's name in a split file (no line breaks, slashes "
                            f"or surrounding spaces, not '.' or '..'); rename it")


def write_split(root: str | Path, split: str, names: list[str]) -> None:
    """Write ROOT/splits/SPLIT.txt (atomically), one name per line; a name it could not hold is refused."""
    for name in names:
        check_video_name(name, split_file(root, split))
    write_text(split_file(root, split), "".join(f"{name}\n" for name in names))


def _video_files(root: Path) -> dict[str, list[Path]]:
    """videos/ listed once: file stem -> the non-image files with that stem (names compared literally)."""
    folder = root / "videos"
    if not folder.is_dir():
        raise MVFormerError(f"{root}: has no videos/ folder (the generic layout keeps videos/NAME.mp4 or "
                            f"videos/NAME/ frame folders)")
    found: dict[str, list[Path]] = {}
    try:
        entries = list(os.scandir(folder))
    except OSError as error:
        raise MVFormerError(f"{root}: cannot list videos/ ({error.strerror or error})") from None
    for entry in entries:
        path = Path(entry.path)
        if path.suffix.lower() not in IMAGE_SUFFIXES and _is_file_or_broken(entry):
            found.setdefault(path.stem, []).append(path)
    return found


def _is_file_or_broken(entry: os.DirEntry) -> bool:
    """Whether a folder entry is a file, or a symbolic link that cannot be followed (a loop: refused later)."""
    try:
        return entry.is_file()
    except OSError:
        return entry.is_symlink()


def _find_video(root: Path, name: str, files: dict[str, list[Path]], source: str) -> Path:
    """videos/NAME/ if it is a frame folder, else the one file videos/NAME.<ext>; inside the root either way.
    source: the split file line naming it."""
    folder = root / "videos" / name
    if folder.is_dir():
        return inside_root(root, folder, source)
    candidates = files.get(name, [])
    if not candidates:
        raise MVFormerError(f"{source}: names video {name!r} but there is no videos/{name}.mp4 (or other container) nor videos/{name}/ "
                            f"frame folder")
    if len(candidates) > 1:
        found = ", ".join(sorted(path.name for path in candidates))
        raise MVFormerError(f"{root}: video {name!r} is ambiguous, videos/ holds {found}")
    return inside_root(root, candidates[0], source)


def _as_int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


def _parse_label(value: str, class_index: dict[str, int] | None) -> int | None:
    """Class index of one label cell: a class name or an integer in range (-1 = unlabelled); None if neither."""
    if class_index is not None and value in class_index:
        return class_index[value]
    label = _as_int(value)
    upper = len(class_index) if class_index is not None else MAX_CLASSES
    return label if label is not None and -1 <= label < upper else None


def _shown(path: Path, root: Path) -> Path:
    """`path` relative to the dataset root when it lies inside it, else as given."""
    return path.relative_to(root) if path.is_relative_to(root) else path


def _read_video_labels(root: Path, name: str, class_index: dict[str, int] | None) -> np.ndarray:
    path = root / "labels" / f"{name}.csv"
    if not path.is_file():
        raise MVFormerError(f"{root}: labels/ exists but labels/{name}.csv does not")
    return _read_labels(inside_root(root, path, str(root)), root, class_index)


def _read_labels(path: Path, root: Path, class_index: dict[str, int] | None) -> np.ndarray:
    """Labels int64 (rows,) of one label CSV, checking header, frame numbering and label values."""
    shown = path.relative_to(root)
    try:
        rows = [row for row in csv.reader(_read_text(path, root).splitlines()) if row]
    except csv.Error as error:
        raise MVFormerError(f"{root}: {shown} is not a CSV file ({error})") from None
    if not rows or [cell.strip() for cell in rows[0]] != ["frame", "label"]:
        header = ",".join(rows[0])[:80] if rows else "nothing"
        raise MVFormerError(f"{root}: {shown} must start with the header 'frame,label', found {header!r}")
    labels = np.empty(len(rows) - 1, dtype=np.int64)
    for frame, row in enumerate(rows[1:]):
        line = frame + 2
        if len(row) != 2 or row[0].strip() != str(frame):
            raise MVFormerError(f"{root}: {shown} line {line}: expected '{frame},LABEL', found "
                                f"{','.join(row)[:80]!r}")
        label = _parse_label(row[1].strip(), class_index)
        if label is None:
            if class_index:
                known = f"a name in classes.txt or an integer in [-1, {len(class_index) - 1}]"
            else:
                known = f"an integer in [-1, {MAX_CLASSES - 1}] (there is no classes.txt)"
            raise MVFormerError(f"{root}: {shown} line {line}: label {row[1][:80]!r} is not {known}")
        labels[frame] = label
    return labels


class VideoDataset:
    """The videos of one split, validated at construction: frame counts, labels, classes, every path inside root.

    size: frames are decoded squashed to size x size (None = native size).
    preload: decode every video once now and serve frames from memory.
    num_classes: len(classes.txt), else 1 + the largest label of this split, else None without labels.
    skipped: (path, reason) of unreadable videos left out (unlabelled sets only; elsewhere they are errors).
    Only lengths, keyframe indexes and labels are held in memory, never the videos (unless preloaded).
    """

    def __init__(self, root: str | Path, split: str, size: int | None = None, preload: bool = False) -> None:
        root = check_generic_root(root)
        if not os.path.lexists(split_file(root, split)):
            raise MVFormerError(f"{root}: split file splits/{split}.txt does not exist")
        names = _read_split(root, split)
        classes = _read_classes(root)
        class_index = None if classes is None else {name: index for index, name in enumerate(classes)}
        files = _video_files(root)
        sources = [f"{root}: splits/{split}.txt line {line}" for line in names.values()]
        paths = [_find_video(root, name, files, source) for name, source in zip(names, sources)]
        labels_folder = root / "labels"
        if os.path.lexists(labels_folder) and not labels_folder.is_dir():
            raise MVFormerError(f"{root}: labels is not a folder (the generic layout keeps labels/NAME.csv)")
        has_labels = labels_folder.is_dir()
        labels = [_read_video_labels(root, name, class_index) if has_labels else None for name in names]
        indexes = [None if path.is_dir() else index_video(path) for path in paths]
        counts = [frame_count_inside(root, path, source) if index is None else index.num_frames
                  for path, index, source in zip(paths, indexes, sources)]
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

    @property
    def phase_names(self) -> list[str]:
        """A name per class: classes.txt's, else the class indices as text (none when nothing is labelled)."""
        return self.classes or [str(phase) for phase in range(self.num_classes or 0)]

    def _largest_label_plus_one(self) -> int | None:
        """Class count inferred from integer labels (no classes.txt); None when no frame is labelled."""
        largest = max((int(r.labels.max()) for r in self.records if r.labels is not None and len(r.labels)), default=-1)
        return largest + 1 if largest >= 0 else None

    @property
    def labelled(self) -> bool:
        """Whether every video has frame labels (only then can the split be scored)."""
        return all(record.labels is not None for record in self.records)

    def check_labelled(self) -> None:
        """Refuse, with one line naming the split and the video, a split with a video that has no label file:
        such a split cannot be scored. (Which metrics its labels allow is `evaluation.scorable`'s business.)"""
        unlabelled = next((record for record in self.records if record.labels is None), None)
        if unlabelled is not None:
            raise MVFormerError(f"{self.root}: split {self.split} has no frame labels for video {unlabelled.name!r}, "
                                f"so it cannot be scored")

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


def check_label_pair(train_set: VideoDataset, val_set: VideoDataset) -> None:
    """Refuse, before any long work, a train/val pair that would be scored wrongly or not at all: a video without
    labels, or a val label among classes train does not know (without classes.txt a split knows 0..its largest
    label)."""
    train_set.check_labelled()
    val_set.check_labelled()
    largest, known = max(int(record.labels.max()) for record in val_set.records), train_set.num_classes or 0
    if largest >= known:
        raise MVFormerError(f"{val_set.root}: split {val_set.split} has label {largest} but split {train_set.split} "
                            f"knows {known} classes (0..{known - 1}); list every class in classes.txt")

def split_overlap_warning(train_set: VideoDataset, val_set: VideoDataset) -> str | None:
    """A warning line when a video (the same file) is in both splits: scores on it measure memory, not
    generalisation; None when the splits are apart."""
    train_paths = {record.path.resolve() for record in train_set.records}
    shared = [record.name for record in val_set.records if record.path.resolve() in train_paths]
    if not shared:
        return None
    return (f"warning: {len(shared)} of the {len(val_set)} videos of split {val_set.split} are also in split "
            f"{train_set.split} (first: {shared[0]!r}); their scores measure what the model saw in training")
