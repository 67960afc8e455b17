"""Writing outputs safely: the one temporary-file-then-rename, the one output folder rule, the one "may I write
here" check, CSV rows.

Every file mvformer writes goes to a temporary name beside its target and is renamed over it only once complete,
so a kill, a full disk or an error never leaves a half-written file where a whole one is expected. A command that
writes several files stages them all (`atomic_paths`) and moves them into place together at the end, so a failure
half-way leaves none of them, nor the folders made for them.

A command that writes a folder (evaluate, label, report, export, synthetic, convert-backbone) goes through
`output_folder`: every check before the first write (never an input, never inside or around one, never a user's
folder: `--overwrite` replaces only a folder that holds the command's marker), then an exclusive claim (a second
writer of the same folder is refused, not raced), a staging folder beside it, and one atomic exchange with the
old folder, so a crash at any moment leaves the old result or the new one in place, never neither.
"""

from __future__ import annotations

import csv
import ctypes
import errno
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from mvformer.errors import MVFormerError

RENAME_EXCHANGE = 2  # renameat2 flag (Linux 3.15+): swap two paths in one step
AT_FDCWD = -100


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
    except OSError as error:
        if error.filename is not None:
            raise
        raise _os_error_line(paths[0] if len(paths) == 1 else paths[0].parent, error) from None
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


def _os_error_line(path: Path, error: OSError) -> MVFormerError:
    """An OSError without a file name of its own (a full disk, a quota) while writing `path`, as one line naming
    it; the CLI names the file of the others itself."""
    return MVFormerError(f"{path}: cannot write it ({error.strerror or error}); nothing was replaced")


@contextmanager
def exclusive_claim(lock: Path, what: str) -> Iterator[None]:
    """Hold `lock` (a file holding this process id, created exclusively) for the block: a second process that
    wants it is refused with one line naming `what`; a lock whose process is gone (killed) is taken over."""
    for _ in range(2):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or 0)
                os.kill(holder, 0)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except PermissionError:
                pass
            raise MVFormerError(f"{what}: another mvformer process ({holder}) is writing it; wait for it to finish "
                                f"(or remove {lock} if no such process runs)") from None
    else:
        raise MVFormerError(f"{what}: cannot take the lock {lock}")
    try:
        os.write(descriptor, str(os.getpid()).encode())
        os.close(descriptor)
        yield
    finally:
        lock.unlink(missing_ok=True)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2); False where the system or file system
    cannot, so that the caller falls back to two renames."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _retired(out: Path) -> Path:
    return out.with_name(f".{out.name}.old")


def _recover(out: Path) -> None:
    """Put back an old result that a crash left aside (the two-rename fallback of `_move_into_place`)."""
    retired = _retired(out)
    if retired.is_dir() and not out.exists():
        os.rename(retired, out)
    shutil.rmtree(retired, ignore_errors=True)


def _move_into_place(staging: Path, out: Path) -> None:
    """`staging` becomes `out`: renamed when `out` is new, else exchanged with the old `out` in one step (or, where
    the system cannot exchange, old aside, new in, old removed: `_recover` undoes a crash in between)."""
    if not out.exists():
        os.rename(staging, out)
    elif _exchange(staging, out):
        shutil.rmtree(staging)  # now the old result
    else:
        os.rename(out, _retired(out))
        os.rename(staging, out)
        shutil.rmtree(_retired(out))


Marker = str | Callable[[Path], str | None]  # a file the command always writes, or: why a folder is not its output


def check_output_place(out: Path, marker: Marker, overwrite: bool, inputs: Sequence[str | Path] = ()) -> None:
    """Refuse, before any work, an output folder that is a symbolic link or a file, overlaps an input (is one,
    lies inside one or holds one), or exists without `overwrite`, or exists and was not written by this command
    (`marker`: a file name it always writes, or a function that says why a folder is not its output, None when
    it is)."""
    if out.is_symlink():
        raise MVFormerError(f"{out}: is a symbolic link; name the folder itself")
    _check_writable_place(out)
    if out.exists() and not out.is_dir():
        raise MVFormerError(f"{out}: exists and is not a folder")
    for source in map(Path, inputs):
        if source.exists():
            check_apart(out, source, "the output folder", "the input")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise MVFormerError(f"{out}: already exists; pass --overwrite to replace it")
        why = marker(out) if callable(marker) else None if (out / marker).is_file() else f"no {marker}"
        if why is not None:
            raise MVFormerError(f"{out}: exists and is not an earlier output of this command ({why}); refusing to "
                                f"replace it, even with --overwrite")


@contextmanager
def output_folder(out: str | Path, marker: Marker, overwrite: bool = False,
                  inputs: Sequence[str | Path] = ()) -> Iterator[Path]:
    """A staging folder to write a command's whole output into; it replaces `out` when the block succeeds and is
    removed when it fails. Checks first (`check_output_place`), then claims `out` exclusively, so that two
    commands writing the same folder cannot both report success."""
    out = Path(out)
    check_output_place(out, marker, overwrite, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_claim(out.with_name(f".{out.name}.lock"), str(out)):
        _recover(out)
        check_output_place(out, marker, overwrite, inputs)  # as it is now that this process holds it
        for stale in out.parent.glob(f".{out.name}.*.tmp"):  # staging of writers that were killed
            if stale.name[len(out.name) + 2:-len(".tmp")].isdigit():
                shutil.rmtree(stale, ignore_errors=True)
        staging = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            staging.mkdir()
            yield staging
            _move_into_place(staging, out)
        except OSError as error:
            if error.filename is not None:
                raise
            raise _os_error_line(out, error) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
