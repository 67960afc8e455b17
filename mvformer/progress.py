"""Progress bars for long work: shown on a terminal, off in logs, off everywhere with --no-progress."""

import os

from tqdm.auto import tqdm

NO_PROGRESS_VARIABLE = "MVFORMER_NO_PROGRESS"


def progress_bar(iterable=None, disable: bool | None = None, **kwargs) -> tqdm:
    """A tqdm bar that is off when stderr is not a terminal, MVFORMER_NO_PROGRESS is set or `disable` is true."""
    if os.environ.get(NO_PROGRESS_VARIABLE):
        disable = True  # None (the default) is tqdm's "only on a terminal"
    return tqdm(iterable, disable=disable, **kwargs)
