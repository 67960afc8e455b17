"""`mvformer prepare`: a benchmark layout read by its format -> the generic layout.

prepare writes DEST/videos/NAME.ext (hard link of the source file) or DEST/videos/NAME/ (hard-linked frames),
DEST/labels/NAME.csv, DEST/classes.txt (class indices "0".."C-1", so every split knows C), DEST/splits/SPLIT.txt.
penn_action without a subset writes one such root per action, DEST/ACTION/, and the pooled one, DEST/all/.
Resumable: a manifest of what was written is saved as it goes; a file it did not write is never replaced.
Everything is read and checked (every path inside SRC, no empty split) before the first file is written, and DEST
may neither be SRC, nor lie inside it, nor hold it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mvformer.data.datasets import VideoRecord, check_root, write_split
from mvformer.data.formats import format_named
from mvformer.data.formats.penn_action import PENN_ACTIONS
from mvformer.data.video import frame_image_paths
from mvformer.errors import MVFormerError
from mvformer.files import check_apart, exclusive_claim, write_text
from mvformer.progress import note as say
from mvformer.progress import progress_bar

MANIFEST = ".mvformer-prepare.json"


PREPARE_BATCH = 32  # prepare saves its manifest after at least this many videos (more as it goes)


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
        write_text(self.path, text)


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
                write_text(dest / labels[0], _labels_csv(record.labels))
            progress.update()
        manifest.done.update(record.name for record in batch)
        manifest.save()
        start += len(batch)
    progress.close()

    manifest.owned.update(extra)
    manifest.save()
    for split, records in splits.items():
        write_split(dest, split, [record.name for record in records])
    if num_classes:
        write_text(dest / "classes.txt", "".join(f"{c}\n" for c in range(num_classes)))
    note(f"{dest}: {len(videos)} videos ({len(todo)} written now, {len(videos) - len(todo)} already there)")


def prepare(format: str, src: str | Path, dest: str | Path, subset: str | None = None,
            note: Callable[[str], None] = say) -> Path:
    """Convert a dataset in a published layout into the generic layout at dest; returns dest.

    Video files and frame images are hard-linked (copied across file systems). Resumable: a rerun skips the videos
    already done. Refuses to overwrite any file in dest it did not write (dest/.mvformer-prepare.json records them).
    penn_action without a subset writes dest/ACTION/ for each action and the pooled dest/all/.
    note: receives one-line summaries (videos written, unreadable videos skipped).
    """
    dataset_format = format_named(format)
    subset = dataset_format.check_subset(subset)
    src = check_root(src, "SRC")
    if not str(dest).strip():
        raise MVFormerError("DEST is not set: it must name the folder to write")
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise MVFormerError(f"{dest}: exists and is not a folder")
    check_apart(dest, src, "the destination", "the source")
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
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_claim(dest.with_name(f".{dest.name}.lock"), str(dest)):  # one writer at a time
            for root, root_data, root_key in roots:
                splits = {split: split_data.records for split, split_data in root_data.items() if split_data.records}
                if splits:
                    num_classes = next(iter(root_data.values())).num_classes
                    _write_generic(root, splits, num_classes, root_key, note)
    except OSError as error:
        raise MVFormerError(f"{dest}: cannot write the prepared dataset ({error.strerror or error}); what is written "
                            f"is kept, rerun to resume") from None
    return dest
