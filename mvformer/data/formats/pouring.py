"""Pouring: CARL / MV-Former pickles (train.pkl, val.pkl, test.pkl) and the videos they name."""

from __future__ import annotations

from pathlib import Path

from mvformer.data.formats.records import Entry, Skipped, load_pickle, record_entries
from mvformer.errors import MVFormerError

POURING_PHASES = 5


def splits(root: Path, subset: str | None) -> list[str]:
    return [split for split in ("train", "val", "test") if (root / f"{split}.pkl").is_file()]


def entries(root: Path, split: str, subset: str | None) -> tuple[list[Entry], Skipped]:
    path = root / f"{split}.pkl"
    if not path.is_file():
        raise MVFormerError(f"{root}: Pouring split {split!r} needs {path.name} (found: "
                            f"{', '.join(p.name for p in sorted(root.glob('*.pkl'))) or 'no pickles'})")
    return record_entries(load_pickle(path, root), root, path, POURING_PHASES), []
