"""The one rule for commands that write a folder (`files.output_folder`): checks before the first write, an
exclusive claim, staging, and an atomic exchange; every crash window leaves the old result or the new one."""

import errno
import os
import signal
import subprocess
import sys
import time

import pytest

from mvformer import files
from mvformer.errors import MVFormerError
from mvformer.files import output_folder

MARKER = "result.json"


def write_result(folder, text):
    (folder / MARKER).write_text(text)
    (folder / "data.txt").write_text(text * 3)


def result_of(folder):
    return (folder / MARKER).read_text(), (folder / "data.txt").read_text()


def leftovers(out):
    """Anything beside `out` that the writer made for itself (staging, lock, retired folder)."""
    return sorted(path.name for path in out.parent.glob(f".{out.name}.*"))


@pytest.fixture
def earlier(tmp_path):
    out = tmp_path / "out"
    with output_folder(out, MARKER) as staging:
        write_result(staging, "old")
    return out


def test_a_new_folder_appears_whole_and_leaves_nothing_beside_it(earlier):
    assert result_of(earlier) == ("old", "oldoldold") and leftovers(earlier) == []


def test_overwrite_replaces_an_earlier_output(earlier):
    with output_folder(earlier, MARKER, overwrite=True) as staging:
        write_result(staging, "new")
    assert result_of(earlier) == ("new", "newnewnew") and leftovers(earlier) == []


@pytest.mark.parametrize("overwrite, message", [
    (False, "already exists; pass --overwrite"),
    (True, r"is not an earlier output of this command \(no result.json\); refusing to replace it, even with "
           r"--overwrite"),
])
def test_a_users_folder_is_never_replaced(tmp_path, overwrite, message):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(MVFormerError, match=message):
        with output_folder(mine, MARKER, overwrite=overwrite):
            pytest.fail("the block must not run")
    assert [path.name for path in mine.iterdir()] == ["notes.txt"] and leftovers(mine) == []


@pytest.mark.parametrize("where", ["the input", "inside the input", "around the input"])
def test_an_output_never_overlaps_an_input(tmp_path, earlier, where):
    data = tmp_path / "data"
    (data / "videos").mkdir(parents=True)
    (data / "videos" / "a.mp4").write_bytes(b"video")
    (data / MARKER).write_text("looks like an output")
    out = {"the input": data, "inside the input": data / "videos", "around the input": tmp_path}[where]
    inputs = [data / "videos" / "a.mp4"] if where == "inside the input" else [data]
    with pytest.raises(MVFormerError, match="the output folder must lie outside the input"):
        with output_folder(out, lambda folder: None, overwrite=True, inputs=inputs):
            pytest.fail("the block must not run")
    assert (data / "videos" / "a.mp4").read_bytes() == b"video"


def test_a_symbolic_link_is_refused(tmp_path, earlier):
    link = tmp_path / "link"
    link.symlink_to(earlier)
    with pytest.raises(MVFormerError, match="is a symbolic link"):
        with output_folder(link, MARKER, overwrite=True):
            pytest.fail("the block must not run")
    assert result_of(earlier)[0] == "old"


def test_a_failure_while_writing_keeps_the_old_result(earlier):
    with pytest.raises(RuntimeError):
        with output_folder(earlier, MARKER, overwrite=True) as staging:
            write_result(staging, "new")
            raise RuntimeError("killed half-way")
    assert result_of(earlier)[0] == "old" and leftovers(earlier) == []


def test_a_failure_in_the_exchange_keeps_the_old_result(earlier, monkeypatch):
    def failing_exchange(first, second):
        raise OSError(errno.EIO, "I/O error", str(second))
    monkeypatch.setattr(files, "_exchange", failing_exchange)
    with pytest.raises(OSError):
        with output_folder(earlier, MARKER, overwrite=True) as staging:
            write_result(staging, "new")
    assert result_of(earlier)[0] == "old" and leftovers(earlier) == []


def test_a_crash_between_the_fallback_renames_is_undone_by_the_next_writer(earlier, monkeypatch):
    """Where the system cannot exchange, the old result is moved aside first; a crash before the new one is in
    leaves it aside, and the next command that claims the folder puts it back before anything else."""
    monkeypatch.setattr(files, "_exchange", lambda first, second: False)
    real_rename = os.rename

    def rename_then_crash(source, target):
        real_rename(source, target)
        if str(target).endswith(".old"):
            raise KeyboardInterrupt  # the process dies right after moving the old result aside
    monkeypatch.setattr(os, "rename", rename_then_crash)
    with pytest.raises(KeyboardInterrupt):
        with output_folder(earlier, MARKER, overwrite=True) as staging:
            write_result(staging, "new")
    assert not earlier.exists() and leftovers(earlier) == [".out.old"]
    monkeypatch.setattr(os, "rename", real_rename)
    with pytest.raises(MVFormerError, match="already exists"):  # recovered, then refused as any existing output
        with output_folder(earlier, MARKER):
            pass
    assert result_of(earlier)[0] == "old" and leftovers(earlier) == []


def test_the_exchange_is_atomic_where_the_system_offers_it(earlier):
    """On Linux the old and the new folder swap in one renameat2 call: no moment without a result."""
    staging = earlier.with_name("new")
    staging.mkdir()
    write_result(staging, "new")
    if not files._exchange(staging, earlier):
        pytest.skip("this file system cannot exchange two paths")
    assert result_of(earlier)[0] == "new" and result_of(staging)[0] == "old"


WRITER = """
import sys, time
from pathlib import Path
from mvformer.files import output_folder
with output_folder(Path(sys.argv[1]), "result.json", overwrite=True) as staging:
    (staging / "result.json").write_text("killed")
    print("claimed", flush=True)
    time.sleep(60)
"""


def start_writer(out):
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "claimed"
    return process


def test_a_second_writer_is_refused_while_the_first_holds_the_folder(earlier):
    first = start_writer(earlier)
    try:
        with pytest.raises(MVFormerError, match=rf"another mvformer process \({first.pid}\) is writing it"):
            with output_folder(earlier, MARKER, overwrite=True):
                pytest.fail("the block must not run")
    finally:
        first.kill()
        first.wait()


def test_a_killed_writer_leaves_the_old_result_and_its_claim_is_taken_over(earlier):
    writer = start_writer(earlier)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert result_of(earlier)[0] == "old"
    time.sleep(0.01)
    with output_folder(earlier, MARKER, overwrite=True) as staging:
        write_result(staging, "new")
    assert result_of(earlier)[0] == "new" and leftovers(earlier) == []


def test_an_os_error_without_a_file_name_is_one_line_naming_the_output(earlier):
    with pytest.raises(MVFormerError, match=r"out: cannot write it \(No space left on device\); nothing was "
                                            r"replaced"):
        with output_folder(earlier, MARKER, overwrite=True):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert result_of(earlier)[0] == "old"


def test_a_full_disk_while_writing_a_file_is_one_line_naming_it(tmp_path):
    target = tmp_path / "result.csv"
    target.write_text("old")
    with pytest.raises(MVFormerError, match=r"result.csv: cannot write it \(No space left on device\)"):
        with files.atomic_path(target):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert target.read_text() == "old" and sorted(path.name for path in tmp_path.iterdir()) == ["result.csv"]


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import torch
    from mvformer.checkpoint import save_checkpoint
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1})

    def full_disk(state, target):
        with open(target, "wb") as handle:
            handle.write(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(MVFormerError, match="checkpoint.pt: cannot write the checkpoint .*; the previous one is kept"):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1} and [p.name for p in tmp_path.iterdir()] == [path.name]
