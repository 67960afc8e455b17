"""`mvformer progress`: the protocol's phase-progression regressor, fitted on labelled reference videos and
applied to a new video."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.linear_model import LinearRegression

from mvformer import viz
from mvformer.apps.videos import check_videos, embed_video_file, load_app_model, model_inputs, output_name
from mvformer.data.datasets import VideoDataset
from mvformer.errors import MVFormerError
from mvformer.evaluation.metrics import progression_targets
from mvformer.files import atomic_paths, check_outputs, save_csv
from mvformer.progress import progress_bar


@dataclass(frozen=True)
class ProgressCurves:
    """Predicted phase progression of one video against a labelled reference set."""

    predictions: np.ndarray  # float64 (L, C - 1): column c is (t - end of phase c) / L
    boundaries: list[str]  # one name per column
    reference_r2: float  # fit quality on the reference frames (mean R^2 over columns)


def fit_progress(reference_embs: Sequence[np.ndarray], reference_labels: Sequence[np.ndarray],
                 num_classes: int) -> tuple[LinearRegression, float]:
    """Least-squares regressor from embeddings to the protocol's phase-progression targets (one linear map per
    phase boundary, fitted jointly), on the labelled frames of the reference videos; and its mean R^2 there."""
    labelled = [labels >= 0 for labels in reference_labels]
    features = np.concatenate([embs[keep] for embs, keep in zip(reference_embs, labelled)])  # (frames, E)
    targets = np.concatenate([progression_targets(labels, num_classes)[keep]
                              for labels, keep in zip(reference_labels, labelled)])  # (frames, C - 1)
    regressor = LinearRegression().fit(features, targets)
    return regressor, float(regressor.score(features, targets))  # R^2 averaged over the boundaries


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
    names = dataset.classes or [str(phase) for phase in range(dataset.num_classes)]
    if len(names) < 2:
        raise MVFormerError(f"{root}: progress needs at least two phases, the labels hold one")
    phases = np.arange(len(names))  # (C,)
    never = np.setdiff1d(phases, np.concatenate([record.labels for record in labelled]))
    if never.size:
        source = "classes.txt" if dataset.classes else "the labels"
        raise MVFormerError(f"{root}: {source} lists {len(names)} phases but no label of split {split!r} is "
                            f"{', '.join(repr(names[c]) for c in never)}; progress is fitted on every phase")
    for record in labelled:
        missing = np.setdiff1d(phases[:-1], record.labels)
        if missing.size:
            raise MVFormerError(f"{root}: labels/{record.name}.csv has no frame of phase "
                                f"{', '.join(repr(names[c]) for c in missing)}; progress needs every phase but the "
                                f"last ({names[-1]!r}) in every labelled reference video")
    return names


def progress_against_reference(checkpoint: str | Path, reference: str | Path, video: str | Path, out: str | Path,
                               split: str = "train", overwrite: bool = False, device: str = "auto",
                               frames: str = "squash") -> ProgressCurves:
    """Fit the phase-progression regressor on a labelled reference set and predict the progress of `video`.

    reference: a dataset root in the generic layout (videos/, labels/, optional classes.txt, splits/SPLIT.txt);
    every video of `split` is used. Writes OUT (.png: one curve per phase boundary over time, crossing 0 where
    that phase ends) and OUT.csv (frame, seconds, one column per boundary).
    """
    out, video = Path(out), Path(video)
    if out.suffix.lower() != ".png":
        raise MVFormerError(f"{out}: the plot must be a .png file")
    outputs = [out, out.with_suffix(".csv")]
    check_outputs(outputs, overwrite, [*model_inputs(checkpoint), Path(reference), video])
    dataset = VideoDataset(reference, split)
    names = check_reference_phases(dataset)
    check_videos([video])
    model, torch_device = load_app_model(checkpoint, device)
    reference_embs = [embed_video_file(model, r.path, torch_device, frames).embeddings
                      for r in progress_bar(dataset.records, desc="reference videos", unit="video")]
    regressor, r2 = fit_progress(reference_embs, [r.labels for r in dataset.records], len(names))
    target = embed_video_file(model, video, torch_device, frames)
    predictions = regressor.predict(target.embeddings.astype(np.float64))  # (L, C - 1)
    boundaries = [f"end of {name}" for name in names[:-1]]

    frame_numbers = np.arange(len(predictions))
    times = frame_numbers / target.fps if target.fps else frame_numbers
    header = ("frame", "seconds", *(b.replace(" ", "_") for b in boundaries))
    seconds = [f"{t:.4f}" if target.fps else "" for t in times]
    with atomic_paths(outputs) as (plot_path, csv_path):
        viz.plot_progress(predictions, times, boundaries, plot_path, "seconds" if target.fps else "frame",
                          f"{output_name(video)} against {Path(reference).name} (reference R² {r2:.2f})")
        save_csv(csv_path, header, [(f, s, *(f"{v:.6f}" for v in row))
                                    for f, s, row in zip(frame_numbers, seconds, predictions)])
    return ProgressCurves(predictions, boundaries, r2)
