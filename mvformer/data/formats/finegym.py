"""FineGym99 / FineGym288: the MV-Former event pickles and processed_videos/."""

from __future__ import annotations

from pathlib import Path

from mvformer.data.formats.records import Entry, Skipped, load_pickle, record_entries
from mvformer.errors import MVFormerError

FINEGYM_SUBSETS = ("99", "288")


def _finegym_pickle(root: Path, split: str, subset: str) -> Path:
    names = {"train": [f"gym{subset}_train_v1.0.pkl", f"gym{subset}_train_v1.1.pkl"],
             "val": [f"gym{subset}_val.pkl"], "additional": ["additional_v1.0.pkl"]}
    if split not in names:
        raise MVFormerError(f"{root}: FineGym has splits train, val and additional, not {split!r}")
    path = next((root / name for name in names[split] if (root / name).is_file()), None)
    if path is None:
        raise MVFormerError(f"{root}: FineGym{subset} split {split} needs {' or '.join(names[split])}")
    return path


def splits(root: Path, subset: str | None) -> list[str]:
    present = []
    for split in ("train", "val", "additional"):
        try:
            _finegym_pickle(root, split, subset)
        except MVFormerError:
            continue
        present.append(split)
    return present


def entries(root: Path, split: str, subset: str | None) -> tuple[list[Entry], Skipped]:
    path = _finegym_pickle(root, split, subset)
    return record_entries(load_pickle(path, root), root, path, int(subset)), []
