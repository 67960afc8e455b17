"""Which protocol metrics a dataset's labels allow: the one place for these rules.

Every scorer (training's evaluation, `evaluate`, `evaluate-embeddings`, `report`, the time-only row) asks
`unscorable_tasks` before it scores. A task the labels cannot support is left out, its values reported as None
(null, "n/a" in tables), with one line naming the video and the phase; the other tasks are scored. Only a dataset
with nothing to score at all is refused.

The rules (PROTOCOL.md and the published code):
- classification and progression fit probes on the first max(1, int(fraction * videos)) training videos: those
  need a labelled frame for the smallest eval fraction;
- progression regresses, for each phase c < C - 1, the time to the last frame of phase c: every labelled video,
  train and val, needs a frame of each phase 0..C-2, and C >= 2;
- Kendall's tau and retrieval compare pairs of videos: at least two validation videos with labelled frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import get_args

import numpy as np

from mvformer.config import Task
from mvformer.errors import MVFormerError

TASKS: tuple[str, ...] = get_args(Task)
PROBES = ("classification", "progression")
PAIRWISE = ("kendalls_tau", "retrieval")


def fewest_probe_videos(num_train: int, fractions: Sequence[float]) -> int:
    """The fewest training videos a probe is fitted on: the smallest fraction's first videos (at least one)."""
    return min(max(1, int(fraction * num_train)) for fraction in fractions)


def first_video_lacking_a_phase(videos: Sequence[np.ndarray], num_classes: int) -> tuple[int, int] | None:
    """(video, phase) of the first video with labelled frames but no frame of some phase 0..C-2, or None."""
    if not videos:
        return None
    owner = np.repeat(np.arange(len(videos)), [len(labels) for labels in videos])  # (frames,) video of each frame
    labels = np.concatenate([np.asarray(labels) for labels in videos]).astype(np.int64)  # (frames,)
    labelled = np.bincount(owner[labels >= 0], minlength=len(videos)) > 0  # (videos,)
    needed = (labels >= 0) & (labels < num_classes - 1)
    video = np.unique(owner[needed] * num_classes + labels[needed]) // num_classes  # one entry per (video, phase)
    lacking = np.flatnonzero(labelled & (np.bincount(video, minlength=len(videos)) < num_classes - 1))
    if not lacking.size:
        return None
    first = int(lacking[0])
    return first, int(np.setdiff1d(np.arange(num_classes - 1), videos[first])[0])


def _video_name(names: Sequence[str] | None, split: str, index: int) -> str:
    return f"{split} video {names[index]!r}" if names is not None else f"{split} video {index}"


def _phase_name(class_names: Sequence[str] | None, phase: int) -> str:
    return f"phase {phase} ({class_names[phase]!r})" if class_names is not None else f"phase {phase}"


def unscorable_tasks(train_labels: Sequence[np.ndarray], val_labels: Sequence[np.ndarray], num_classes: int,
                     tasks: Sequence[str], fractions: Sequence[float],
                     train_names: Sequence[str] | None = None, val_names: Sequence[str] | None = None,
                     class_names: Sequence[str] | None = None) -> dict[str, str]:
    """{task: why it cannot be computed} for the requested tasks these labels (one (frames,) array per video,
    -1 = unlabelled) do not allow; empty when every task can be scored. Refuses (MVFormerError) only when the
    validation split has no labelled frame, i.e. nothing at all can be scored."""
    if not any((np.asarray(labels) >= 0).any() for labels in val_labels):
        raise MVFormerError("no labelled frame in the validation videos (every label is -1): nothing to score")
    why = {}
    fewest = fewest_probe_videos(len(train_labels), fractions)
    if not any((np.asarray(labels) >= 0).any() for labels in train_labels[:fewest]):
        for task in PROBES:
            why[task] = (f"no labelled frame in the first {fewest} training video(s), the fewest a probe is fitted on "
                         f"(eval.fractions {min(fractions)})")
    if "progression" not in why:
        if num_classes < 2:
            why["progression"] = "it needs at least 2 phases"
        for split, videos, names in (("train", train_labels, train_names), ("val", val_labels, val_names)):
            lacking = None if "progression" in why else first_video_lacking_a_phase(videos, num_classes)
            if lacking is not None:
                why["progression"] = (f"{_video_name(names, split, lacking[0])} has no frame of "
                                      f"{_phase_name(class_names, lacking[1])}; it needs every phase but the last "
                                      f"(0..{num_classes - 2}) in every labelled video")
    labelled_val = sum(bool((np.asarray(labels) >= 0).any()) for labels in val_labels)
    if labelled_val < 2:
        for task in PAIRWISE:
            why[task] = f"{labelled_val} validation video(s) with labelled frames; it compares pairs of videos"
    why = {task: reason for task, reason in why.items() if task in tasks}
    if tasks and len(why) == len(set(tasks)):
        task, reason = next(iter(why.items()))
        raise MVFormerError(f"none of the requested tasks can be scored ({task}: {reason})")
    return why


def skip_lines(where: str, unscorable: dict[str, str], tasks: Sequence[str], option: str = "eval.tasks") -> list[str]:
    """One line per task left out, naming the dataset and saying how to leave it out quietly (`option`:
    the config key eval.tasks, or a command's --tasks flag)."""
    kept = [task for task in tasks if task not in unscorable]
    hint = f"--set eval.tasks=[{','.join(kept)}]" if option == "eval.tasks" else f"{option} {' '.join(kept)}"
    by_reason: dict[str, list[str]] = {}  # tasks left out for the same reason share a line
    for task, reason in unscorable.items():
        by_reason.setdefault(reason, []).append(task)
    return [f"{where}: {' and '.join(skipped)} skipped (n/a): {reason}; the other tasks are scored (to leave "
            f"{'them' if len(skipped) > 1 else 'it'} out: {hint})" for reason, skipped in by_reason.items()]
