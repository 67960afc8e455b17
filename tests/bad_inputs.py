"""The harness of the bad-input suites (tests/test_bad_inputs_*.py): run one mvformer command on one bad input and
check every promise at once.

A case passes when the command exits with status 2, prints exactly one line "mvformer: error: ..." naming the
culprit (every fragment given), raises no traceback, and changes no file under the watched folders (inputs and
earlier outputs are hashed before and after; a new file that looks like a result counts as a change).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from mvformer.cli import main


@dataclass
class Case:
    """One bad input: the command's arguments, what the one error line must say, and what must stay untouched."""

    name: str
    args: list[str]
    fragments: tuple[str, ...] = ()
    watch: tuple[Path, ...] = field(default_factory=tuple)  # folders and files that must not change

    def __str__(self) -> str:
        return self.name


def snapshot(paths) -> dict[str, str]:
    """Path -> sha256 of every file (and "dir" for every folder) under `paths`."""
    state = {}
    for root in map(Path, paths):
        entries = [root] if root.is_file() else ([root, *root.rglob("*")] if root.exists() else [])
        for entry in entries:
            state[str(entry)] = hashlib.sha256(entry.read_bytes()).hexdigest() if entry.is_file() else "dir"
    return state


def run_case(case: Case, capsys) -> str:
    """Run the case through the CLI and assert its promises; returns the error line."""
    before = snapshot(case.watch)
    capsys.readouterr()
    status = main(case.args)
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("mvformer: error: ")]
    assert status == 2, f"{case}: exit status {status}, stderr: {err[-500:]}"
    assert len(lines) == 1 and "Traceback" not in err, f"{case}: expected one error line, got: {err[-500:]}"
    for fragment in case.fragments:
        assert fragment in lines[0], f"{case}: {fragment!r} not in {lines[0]!r}"
    after = snapshot(case.watch)
    changed = sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))
    assert not changed, f"{case}: files changed: {changed[:5]}"
    return lines[0]


def one_line_failure(args: list[str], capsys, *fragments: str) -> None:
    """Run the CLI on `args`; it must fail with exit status 2 and one error line holding every fragment."""
    status = main([*args, "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and err.startswith("mvformer: error: "), err
    for fragment in fragments:
        assert fragment in err
