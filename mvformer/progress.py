"""What long work tells the user: progress bars on a terminal, and one-line notes on stderr.

Bars are off when stderr is not a terminal, off everywhere with --no-progress (MVFORMER_NO_PROGRESS). Notes are
the one channel for messages that are not a command's result (a cache used or not, a video skipped); a function
that emits them takes `note=` so that callers (tests, non-main ranks) can redirect or silence them.
"""

import os
import sys

from tqdm.auto import tqdm

NO_PROGRESS_VARIABLE = "MVFORMER_NO_PROGRESS"


def progress_bar(iterable=None, disable: bool | None = None, **kwargs) -> tqdm:
    """A tqdm bar that is off when stderr is not a terminal, MVFORMER_NO_PROGRESS is set or `disable` is true."""
    if os.environ.get(NO_PROGRESS_VARIABLE):
        disable = True  # None (the default) is tqdm's "only on a terminal"
    return tqdm(iterable, disable=disable, **kwargs)


def note(message: str) -> None:
    """Print "mvformer: MESSAGE" on stderr, above any progress bar."""
    tqdm.write(f"mvformer: {message}", file=sys.stderr)


def silent(message: str) -> None:
    """A `note` that says nothing (processes other than the first of a distributed run)."""
