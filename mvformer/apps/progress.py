"""`mvformer progress`: the protocol's phase-progression regressor, fitted on labelled reference videos and
applied to a new video."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.linear_model import LinearRegression

from mvformer import viz
from mvformer.apps.videos import embed_video_file, output_name
from mvformer.checkpoint import load_model
from mvformer.data.datasets import VideoDataset
from mvformer.errors import MVFormerError
from mvformer.evaluation.metrics import progression_targets
from mvformer.files import atomic_path, check_outputs, write_csv
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
    csv_path = out.with_suffix(".csv")
    check_outputs([out, csv_path], overwrite)
    dataset = VideoDataset(reference, split)
    if dataset.num_classes is None or any(r.labels is None for r in dataset.records):
        raise MVFormerError(f"{reference}: the reference videos have no frame labels (labels/NAME.csv)")
    if dataset.num_classes < 2:
        raise MVFormerError(f"{reference}: progress needs at least two phases, the labels hold one")
    model, torch_device = load_model(checkpoint, device)
    reference_embs = [embed_video_file(model, r.path, torch_device, frames).embeddings
                      for r in progress_bar(dataset.records, desc="reference videos", unit="video")]
    regressor, r2 = fit_progress(reference_embs, [r.labels for r in dataset.records], dataset.num_classes)
    target = embed_video_file(model, video, torch_device, frames)
    predictions = regressor.predict(target.embeddings.astype(np.float64))  # (L, C - 1)
    names = dataset.classes or [str(c) for c in range(dataset.num_classes)]
    boundaries = [f"end of {name}" for name in names[:-1]]

    frame_numbers = np.arange(len(predictions))
    times = frame_numbers / target.fps if target.fps else frame_numbers
    with atomic_path(out) as temporary:
        viz.plot_progress(predictions, times, boundaries, temporary, "seconds" if target.fps else "frame",
                          f"{output_name(video)} against {Path(reference).name} (reference R² {r2:.2f})")
    header = ("frame", "seconds", *(b.replace(" ", "_") for b in boundaries))
    seconds = [f"{t:.4f}" if target.fps else "" for t in times]
    write_csv(csv_path, header, [(f, s, *(f"{v:.6f}" for v in row))
                                  for f, s, row in zip(frame_numbers, seconds, predictions)])
    return ProgressCurves(predictions, boundaries, r2)
