"""`mvformer progress`: the protocol's phase-progression regressor, fitted on labelled reference videos and
applied to a new video.

Its quality is measured where it was not fitted: each labelled reference video predicted by the regressor fitted on
the others (leave one video out), and the video itself when it carries labels. The protocol's targets count from a
phase's last frame, so they assume each phase once per video: cyclic labels (repetitions) are called out.
Library: `progress` (a model, a reference split and a video's embeddings in, `ProgressCurves` out) and
`write_progress`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score
from sklearn.model_selection import LeaveOneGroupOut, cross_val_predict

from mvformer import viz
from mvformer.apps.videos import (
    VideoEmbedding,
    check_videos,
    embed,
    load_app_model,
    output_name,
    phase_labels,
)
from mvformer.checkpoint import Trained, source_files
from mvformer.data.datasets import VideoDataset
from mvformer.errors import MVFormerError
from mvformer.evaluation.metrics import progression_targets
from mvformer.evaluation.scorable import first_video_lacking_a_phase
from mvformer.files import atomic_paths, check_outputs, save_csv
from mvformer.progress import note, progress_bar


@dataclass(frozen=True)
class ProgressCurves:
    """Predicted phase progression of one video against a labelled reference set."""

    video: VideoEmbedding
    reference: VideoDataset
    predictions: np.ndarray  # float64 (L, C - 1): column c is (t - end of phase c) / L
    boundaries: list[str]  # one name per column
    heldout_r2: float | None  # R^2 on reference videos left out of the fit in turn; None with one labelled video
    video_r2: float | None  # R^2 against the video's own labels, when it has labels holding every phase's end
    truth: np.ndarray | None  # float64 (L, C - 1): the targets of those labels (NaN where unlabelled)
    phases: viz.PhaseLabels | None  # the video's own labels, where it has them
    cyclic: str | None  # the one-line warning when phases repeat within videos, else None


def _labelled_frames(embs: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                     num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The labelled frames of several videos: features (frames, E), targets (frames, C - 1), video index (frames,)."""
    kept = [video_labels >= 0 for video_labels in labels]
    features = np.concatenate([e[keep] for e, keep in zip(embs, kept)]).astype(np.float64)
    targets = np.concatenate([progression_targets(video_labels, num_classes)[keep]
                              for video_labels, keep in zip(labels, kept)])
    groups = np.repeat(np.arange(len(kept)), [keep.sum() for keep in kept])
    return features, targets, groups


def fit_progress(reference_embs: Sequence[np.ndarray], reference_labels: Sequence[np.ndarray],
                 num_classes: int) -> LinearRegression:
    """Least-squares regressor from embeddings to the protocol's phase-progression targets (one linear map per
    phase boundary, fitted jointly), on the labelled frames of the reference videos."""
    features, targets, _ = _labelled_frames(reference_embs, reference_labels, num_classes)
    return LinearRegression().fit(features, targets)


def heldout_r2(reference_embs: Sequence[np.ndarray], reference_labels: Sequence[np.ndarray],
               num_classes: int) -> float | None:
    """R^2 where the regressor was not fitted: the labelled frames of each reference video predicted by the
    regressor fitted on the other videos (leave one video out), all scored together and averaged over the
    boundaries, as the protocol scores its validation videos. None with fewer than two labelled videos."""
    features, targets, groups = _labelled_frames(reference_embs, reference_labels, num_classes)
    if len(np.unique(groups)) < 2:
        return None
    predicted = cross_val_predict(LinearRegression(), features, targets, groups=groups, cv=LeaveOneGroupOut())
    return float(r2_score(targets, predicted))


def repeated_phase(labels: np.ndarray) -> int | None:
    """The first phase that comes back after another phase within one video's labelled frames (cyclic labels,
    such as push-ups' up, down, up, down), or None when every phase is one stretch."""
    kept = labels[labels >= 0]
    runs = kept[np.flatnonzero(np.diff(kept, prepend=-1))]  # the phase of each stretch, in order
    _, first = np.unique(runs, return_index=True)
    again = np.setdiff1d(np.arange(len(runs)), first)  # stretches of a phase seen before
    return int(runs[again[0]]) if again.size else None


def cyclic_line(names: list[str], repeats: dict[str, int]) -> str | None:
    """The one warning line for labels whose phases repeat within videos ({video: phase}), or None."""
    if not repeats:
        return None
    video, phase = next(iter(repeats.items()))
    return (f"phases repeat within {len(repeats)} video{'s' * (len(repeats) != 1)} (e.g. {video}: {names[phase]!r} "
            f"comes back after another phase); the progression targets count from each phase's last frame, so "
            f"the curves show one sweep over the whole video and cannot follow repetitions")


def check_reference_phases(dataset: VideoDataset) -> list[str]:
    """Before any model work: the reference's labels can fit the regressor, or one line naming the file. Every
    phase (classes.txt, else 0..the largest label) appears in the split, and every video with labelled frames
    holds every phase but the last (each phase's end is a target). Returns the phase names."""
    root, split = dataset.root, dataset.split
    if dataset.num_classes is None or not dataset.labelled:
        raise MVFormerError(f"{root}: the reference videos of split {split!r} have no frame labels (labels/NAME.csv)")
    labelled = [record for record in dataset.records if (record.labels >= 0).any()]
    if not labelled:
        raise MVFormerError(f"{root}: no labelled frame in the reference split {split!r} (every label is -1)")
    names = dataset.phase_names
    if len(names) < 2:
        raise MVFormerError(f"{root}: progress needs at least two phases, the labels hold one")
    phases = np.arange(len(names))  # (C,)
    never = np.setdiff1d(phases, np.concatenate([record.labels for record in labelled]))
    if never.size:
        source = "classes.txt" if dataset.classes else "the labels"
        raise MVFormerError(f"{root}: {source} lists {len(names)} phases but no label of split {split!r} is "
                            f"{', '.join(repr(names[c]) for c in never)}; progress is fitted on every phase")
    lacking = first_video_lacking_a_phase([record.labels for record in labelled], len(names))
    if lacking is not None:
        video, phase = lacking
        raise MVFormerError(f"{root}: labels/{labelled[video].name}.csv has no frame of phase {names[phase]!r}; "
                            f"progress needs every phase but the last ({names[-1]!r}) in every labelled reference "
                            f"video")
    return names


def video_truth(phases: viz.PhaseLabels | None, names: list[str]) -> np.ndarray | None:
    """The progression targets (L, C - 1) of the video's own labels, when they name the reference's phases and
    hold every phase but the last (each boundary is then defined); else None."""
    if phases is None or phases.names != names or np.setdiff1d(np.arange(len(names) - 1), phases.labels).size:
        return None
    return progression_targets(phases.labels, len(names))


def _cyclic(dataset: VideoDataset, names: list[str], video_name: str,
            phases: viz.PhaseLabels | None) -> str | None:
    """The warning line when phases repeat within the reference videos or the video itself, else None."""
    repeats = {r.name: repeated_phase(r.labels) for r in dataset.records}
    if phases is not None and phases.names == names:
        repeats[video_name] = repeated_phase(phases.labels)
    line = cyclic_line(names, {name: phase for name, phase in repeats.items() if phase is not None})
    return f"{dataset.root}: {line}" if line else None


def _fitted(dataset: VideoDataset, video: Path | None) -> list[bool]:
    """Which reference videos fit the regressor: all but `video` itself (it never fits its own curve)."""
    fitted = [video is None or r.path.resolve() != video.resolve() for r in dataset.records]
    if not any(keep and (r.labels >= 0).any() for keep, r in zip(fitted, dataset.records)):
        raise MVFormerError(f"{video}: is the only labelled reference video of {dataset.root} (split "
                            f"{dataset.split!r}), so no other video is left to fit the regressor on")
    return fitted


def progress(trained: Trained, reference: VideoDataset, video: VideoEmbedding, frames: str = "squash",
             reference_embs: Sequence[np.ndarray] | None = None) -> ProgressCurves:
    """Fit the phase-progression regressor on the labelled videos of `reference` (a split of a generic-layout
    dataset; `video` itself left out when it is one of them) and predict the progress of `video`. The reference
    videos are embedded with `trained` unless their embeddings are given (one (L, E) array per video)."""
    names = check_reference_phases(reference)
    phases = phase_labels(video.source, len(video)) if video.source is not None else None
    fitted = _fitted(reference, video.source)
    if reference_embs is None:
        reference_embs = [embed(trained, r.path, frames).embeddings
                          for r in progress_bar(reference.records, desc="reference videos", unit="video")]
    reference_labels = [r.labels for r in reference.records]
    r2 = heldout_r2(reference_embs, reference_labels, len(names))
    regressor = fit_progress([e for e, keep in zip(reference_embs, fitted) if keep],
                             [labels for labels, keep in zip(reference_labels, fitted) if keep], len(names))
    predictions = regressor.predict(video.embeddings.astype(np.float64))  # (L, C - 1)
    truth = video_truth(phases, names)
    own_r2 = None if truth is None else float(r2_score(truth[phases.labels >= 0], predictions[phases.labels >= 0]))
    return ProgressCurves(video, reference, predictions, [f"end of {name}" for name in names[:-1]], r2, own_r2,
                          truth, phases, _cyclic(reference, names, video.name, phases))


def progress_outputs(out: Path) -> list[Path]:
    """OUT (.png) and OUT.csv."""
    if out.suffix.lower() != ".png":
        raise MVFormerError(f"{out}: the plot must be a .png file")
    return [out, out.with_suffix(".csv")]


def write_progress(out: str | Path, curves: ProgressCurves, overwrite: bool = False,
                   inputs: Sequence[Path] = ()) -> list[Path]:
    """OUT (.png: one curve per phase boundary over time, crossing 0 where that phase ends, titled with the
    held-out R^2; where the video is labelled, the curves its labels give and its phases behind) and OUT.csv
    (frame, seconds, one column per boundary)."""
    outputs = progress_outputs(Path(out))
    video = curves.video
    check_outputs(outputs, overwrite, [*inputs, curves.reference.root,
                                       *([video.source] if video.source is not None else [])])
    frame_numbers = np.arange(len(curves.predictions))
    times = frame_numbers / video.fps if video.fps else frame_numbers
    header = ("frame", "seconds", *(b.replace(" ", "_") for b in curves.boundaries))
    seconds = [f"{t:.4f}" if video.fps else "" for t in times]
    scores = [f"held-out R² {curves.heldout_r2:.2f} (leave one reference video out)"
              if curves.heldout_r2 is not None else "no held-out R² (one labelled reference video)"]
    if curves.video_r2 is not None:
        scores.append(f"R² on its labels {curves.video_r2:.2f}")
    title = f"{video.name} against {curves.reference.root.name}: {', '.join(scores)}"
    if curves.cyclic:
        title += "\nphases repeat within videos (cyclic labels): the targets count from each phase's last frame"
    with atomic_paths(outputs) as (plot_path, csv_path):
        viz.plot_progress(curves.predictions, times, curves.boundaries, plot_path, "seconds" if video.fps else "frame",
                          title, curves.truth, curves.phases)
        save_csv(csv_path, header, [(f, s, *(f"{v:.6f}" for v in row))
                                    for f, s, row in zip(frame_numbers, seconds, curves.predictions)])
    return outputs


def progress_command(checkpoint: str | Path, reference: str | Path, video: str | Path, out: str | Path,
                     split: str = "train", overwrite: bool = False, device: str = "auto", frames: str = "squash",
                     say: Callable[[str], None] = note) -> ProgressCurves:
    """`mvformer progress`: every check first (outputs, the reference's labels, the video), the model loaded once,
    `progress`, then `write_progress`. Phases that repeat within a video are named in one line through `say`."""
    out, video = Path(out), Path(video)
    check_outputs(progress_outputs(out), overwrite, [*source_files(checkpoint), Path(reference), video])
    dataset = VideoDataset(reference, split)
    names = check_reference_phases(dataset)
    (num_frames,) = check_videos([video])
    phases = phase_labels(video, num_frames)
    _fitted(dataset, video)
    line = _cyclic(dataset, names, output_name(video), phases)
    if line:
        say(line)
    trained = load_app_model(checkpoint, device)
    curves = progress(trained, dataset, embed(trained, video, frames), frames)
    write_progress(out, curves, overwrite, source_files(checkpoint))
    return curves
