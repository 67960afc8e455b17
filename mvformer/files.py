"""Writing outputs safely: the one temporary-file-then-rename, the one "may I write here" check, CSV rows.

Every file mvformer writes goes to a temporary name beside its target and is renamed over it only once complete,
so a kill, a full disk or an error never leaves a half-written file where a whole one is expected.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from mvformer.errors import MVFormerError


@contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` (same suffix, so writers that add one agree) that replaces `path` when the
    block succeeds and is removed when it fails; `fsync` flushes it to disk before the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield temporary
        if fsync:
            with open(temporary, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path: str | Path, text: str, fsync: bool = False) -> None:
    """Write a whole text file atomically."""
    with atomic_path(path, fsync) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    """Write a CSV file (one header row, then `rows`) atomically."""
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def check_outputs(paths: Sequence[str | Path], overwrite: bool) -> None:
    """Refuse (before any work is done) to replace an existing output unless `overwrite`, or a folder by a file."""
    for path in map(Path, paths):
        if path.exists() and not overwrite:
            raise MVFormerError(f"{path}: already exists; pass --overwrite to replace it")
        if path.is_dir():
            raise MVFormerError(f"{path}: is a folder, not a file")
