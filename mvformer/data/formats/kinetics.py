"""Kinetics-400, unlabelled, for pre-training: class folders, the official CSVs, or CARL's list."""

from __future__ import annotations

import csv
from pathlib import Path

from mvformer.data.formats.records import Entry, Skipped, check_name
from mvformer.data.video import VIDEO_SUFFIXES
from mvformer.errors import MVFormerError


def _kinetics_csv(root: Path, split: str) -> Path | None:
    return next((path for path in (root / "annotations" / f"{split}.csv", root / f"{split}.csv") if path.is_file()),
                None)


def splits(root: Path, subset: str | None) -> list[str]:
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


def entries(root: Path, split: str, subset: str | None) -> tuple[list[Entry], Skipped]:
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
            entries.append(Entry(check_name(path.stem, source), path, None, None, source))
    return entries, skipped
