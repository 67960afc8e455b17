"""Writing outputs safely: the one temporary-file-then-rename, the one "may I write here" check, CSV rows.

Every file mvformer writes goes to a temporary name beside its target and is renamed over it only once complete,
so a kill, a full disk or an error never leaves a half-written file where a whole one is expected. A command that
writes several files stages them all (`atomic_paths`) and moves them into place together at the end, so a failure
half-way leaves none of them, nor the folders made for them.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from mvformer.errors import MVFormerError


def _make_folders(paths: Sequence[Path]) -> list[Path]:
    """Create the missing folders above `paths`; returns those created, outermost first."""
    made = []
    for path in paths:
        for folder in reversed([path.parent, *path.parent.parents]):
            if not folder.exists():
                folder.mkdir()
                made.append(folder)
    return made


@contextmanager
def atomic_paths(paths: Sequence[str | Path], fsync: bool = False) -> Iterator[list[Path]]:
    """Temporary paths beside `paths` (same suffixes, so writers that add one agree) that replace them all once
    the block succeeds; when it fails, the temporaries and every folder made for them are removed, leaving the
    targets as they were. `fsync` flushes each to disk before the renames."""
    paths = [Path(p) for p in paths]
    if len(set(paths)) != len(paths):
        raise ValueError(f"an output is listed twice: {[str(p) for p in paths]}")
    made = _make_folders(paths)
    temporaries = [p.with_name(f".{p.stem}.{os.getpid()}.tmp{p.suffix}") for p in paths]
    done = False
    try:
        yield temporaries
        if fsync:
            for temporary in temporaries:
                with open(temporary, "rb") as handle:
                    os.fsync(handle.fileno())
        for temporary, path in zip(temporaries, paths):
            os.replace(temporary, path)
        done = True
    finally:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)
        if not done:
            for folder in reversed(made):
                with suppress(OSError):  # something else put a file there meanwhile: leave it
                    folder.rmdir()


@contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` that replaces `path` when the block succeeds (`atomic_paths` of one)."""
    with atomic_paths([path], fsync) as (temporary,):
        yield temporary


def write_text(path: str | Path, text: str, fsync: bool = False) -> None:
    """Write a whole text file atomically."""
    with atomic_path(path, fsync) as temporary:
        temporary.write_text(text, encoding="utf-8")


def save_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    """Write a CSV file (one header row, then `rows`) in place: for a temporary path of `atomic_paths`."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    """Write a CSV file (one header row, then `rows`) atomically."""
    with atomic_path(path) as temporary:
        save_csv(temporary, header, rows)


def _resolved(path: Path) -> Path:
    """`path` with symbolic links followed; a loop of them is a one-line error naming it."""
    try:
        return path.resolve()
    except RuntimeError:  # Python < 3.13 reports a symbolic link loop so (later ones raise OSError, also one line)
        raise MVFormerError(f"{path}: cannot be resolved (symbolic link loop)") from None


def check_not_input(path: str | Path, inputs: Sequence[str | Path]) -> None:
    """Refuse an output that is one of the inputs (symbolic and hard links included), or lies inside an input
    folder, whatever `overwrite` says: a command must never change what it reads."""
    path = Path(path)
    target = _resolved(path)
    for source in map(Path, inputs):
        if target == _resolved(source) or (path.exists() and source.exists() and os.path.samefile(path, source)):
            raise MVFormerError(f"{path}: is one of the inputs; write the output somewhere else")
        if source.is_dir() and target.is_relative_to(_resolved(source)):
            raise MVFormerError(f"{path}: lies inside the input folder {source}; write the output somewhere else")


def check_apart(output: str | Path, source: str | Path, what: str, source_what: str) -> None:
    """Refuse an output folder that is `source`, lies inside it or holds it (an output never overlaps an input);
    `what` and `source_what` name the two in the message."""
    target, origin = _resolved(Path(output)), _resolved(Path(source))
    if target.is_relative_to(origin) or origin.is_relative_to(target):
        raise MVFormerError(f"{output}: {what} must lie outside {source_what} {source} and must not hold it")


def _check_writable_place(path: Path) -> None:
    """Refuse a path whose nearest existing folder above it is a file."""
    above = next((parent for parent in path.parents if parent.exists()), None)
    if above is not None and not above.is_dir():
        raise MVFormerError(f"{path}: cannot be written, {above} is a file, not a folder")


def check_outputs(paths: Sequence[str | Path], overwrite: bool, inputs: Sequence[str | Path] = ()) -> None:
    """Refuse (before any work is done) an output that is one of the `inputs` or inside an input folder, one under
    a file, a folder where a file goes, and an existing output unless `overwrite`."""
    for path in map(Path, paths):
        check_not_input(path, inputs)
        _check_writable_place(path)
        if path.is_dir():
            raise MVFormerError(f"{path}: is a folder, not a file")
        if path.exists() and not overwrite:
            raise MVFormerError(f"{path}: already exists; pass --overwrite to replace it")


def check_output_folder(folder: str | Path, inputs: Sequence[str | Path] = ()) -> None:
    """Refuse an output folder that is an input or lies inside an input folder, or that is (or lies under) a
    file."""
    folder = Path(folder)
    check_not_input(folder, inputs)
    _check_writable_place(folder)
    if folder.exists() and not folder.is_dir():
        raise MVFormerError(f"{folder}: is a file, not a folder")
