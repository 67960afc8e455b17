"""Kinetics-400, unlabelled, for pre-training: class folders, the official CSVs, or CARL's list."""

from __future__ import annotations

import csv
from pathlib import Path, PurePath

from mvformer.data.datasets import check_name, inside_root, relative_inside
from mvformer.data.formats.records import Entry, Skipped
from mvformer.data.video import VIDEO_SUFFIXES
from mvformer.errors import MVFormerError


def _kinetics_csv(root: Path, split: str) -> Path | None:
    return next((path for path in (root / "annotations" / f"{split}.csv", root / f"{split}.csv") if path.is_file()),
                None)


def splits(root: Path, subset: str | None) -> list[str]:
    return [split for split in ("train", "val", "test") if _kinetics_csv(root, split) or (root / split).is_dir()]


def _csv_rows(csv_path: Path) -> list[tuple[int, list[str]]]:
    """(line number, cells) of the non-empty rows of a CSV file."""
    try:
        lines = csv_path.read_text(encoding="utf-8-sig").splitlines()
        rows = [(number, row) for number, row in enumerate(csv.reader(lines), start=1) if row]
    except UnicodeDecodeError:
        raise MVFormerError(f"{csv_path}: is not UTF-8 text") from None
    except csv.Error as error:
        raise MVFormerError(f"{csv_path}: is not a CSV file ({error})") from None
    except OSError as error:
        raise MVFormerError(f"{csv_path}: cannot read it ({error.strerror or error})") from None
    if not rows:
        raise MVFormerError(f"{csv_path}: is empty: it lists no videos")
    return rows


def _carl_list_paths(root: Path, rows: list[tuple[int, list[str]]], csv_path: Path) -> list[tuple[Path, str]]:
    """(video path, its line) of CARL's list: a path relative to ROOT, or to the folder above when it starts with
    ROOT's name (Kinetics400/train/CLASS/ID.mp4); never outside ROOT."""
    paths = []
    for number, row in rows:
        source = f"{csv_path} line {number}"
        parts = PurePath(row[0].strip()).parts
        relative = str(PurePath(*parts[1:])) if len(parts) > 1 and parts[0] == root.name else row[0].strip()
        paths.append((relative_inside(root, relative, source, "video path"), source))
    return paths


def _official_csv_paths(root: Path, split: str, rows: list[tuple[int, list[str]]],
                        csv_path: Path) -> list[tuple[Path, str]]:
    """(video path, its line) of the official CSV: ROOT/SPLIT/[LABEL/]{youtube_id}_{start:06d}_{end:06d}.mp4."""
    header = [cell.strip() for cell in rows[0][1]]
    missing = [key for key in ("youtube_id", "time_start", "time_end") if key not in header]
    if missing:
        raise MVFormerError(f"{csv_path}: header lacks {', '.join(missing)} (expected label,youtube_id,time_start,"
                            f"time_end,split)")
    if len(rows) == 1:
        raise MVFormerError(f"{csv_path}: holds only its header: it lists no videos")
    column = {key: header.index(key) for key in ("youtube_id", "time_start", "time_end")}
    label_column = header.index("label") if "label" in header else None
    paths = []
    for number, row in rows[1:]:
        source = f"{csv_path} line {number}"
        try:
            youtube_id = row[column["youtube_id"]].strip()
            start, end = (int(float(row[column[key]])) for key in ("time_start", "time_end"))
            label = row[label_column].strip() if label_column is not None else ""
        except (IndexError, ValueError, OverflowError):
            raise MVFormerError(f"{source}: expected youtube_id and whole-second time_start, time_end, found "
                                f"{','.join(row)[:80]!r}") from None
        stem = f"{check_name(youtube_id, source, 'youtube_id')}_{start:06d}_{end:06d}.mp4"
        in_class = root / split / check_name(label, source, "label") / stem if label else None
        paths.append((in_class if in_class is not None and in_class.is_file() else root / split / stem, source))
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
        inside_root(root, csv_path, str(root))
        rows = _csv_rows(csv_path)
        if "youtube_id" in [cell.strip() for cell in rows[0][1]]:
            paths = _official_csv_paths(root, split, rows, csv_path)
        else:  # CARL's list: video path, class label
            paths = _carl_list_paths(root, rows, csv_path)
    elif (root / split).is_dir():
        folder = inside_root(root, root / split, str(root))
        paths = [(path, str(folder)) for path in _kinetics_folder_paths(folder)]
        if not paths:
            raise MVFormerError(f"{folder}: holds no videos ({', '.join(VIDEO_SUFFIXES)}) nor class folders of them")
    else:
        raise MVFormerError(f"{root}: Kinetics split {split!r} needs annotations/{split}.csv, {split}.csv or a "
                            f"{split}/ folder of videos")
    entries, skipped, seen = [], [], set()
    for path, source in paths:
        if not path.is_file():
            skipped.append((path, "missing"))
        elif path.stem in seen:
            skipped.append((path, "another video of this split has the same name"))
        else:
            seen.add(path.stem)
            entries.append(Entry(check_name(path.stem, source), path, None, None, source))
    return entries, skipped
