"""Phase labels carried from labelled reference videos to other videos along alignment paths, and how well the
carried labels match hand labels.

Transfer: each reference is aligned with the target video on the cost matrix of their embeddings (dynamic time
warping, or every target frame's nearest reference frame). Each reference then casts one vote per target frame,
split evenly over the labelled reference frames its path pairs with that frame. The K references of least
alignment cost (mean cost along the path) vote; a frame takes the phase with most votes, and its confidence is that
phase's share of the votes cast. The baseline maps frame t of a target of L frames to reference frame
round(t / (L - 1) * (Lr - 1)), by relative time alone, and votes over the same references the same way, so the two
differ only in how frames are paired.

Scores: frame accuracy over the frames with a hand label, and per phase the boundary error: for every frame where
the hand labels enter that phase (a change between two labelled neighbours), the distance in frames to the nearest
frame where the transferred labels enter the same phase in the same video; a video whose transferred labels never
enter that phase counts the boundary as missed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mvformer.errors import MVFormerError
from mvformer.evaluation.alignment import check_method, cost_matrix, dtw_path, nearest_neighbour_path


@dataclass(frozen=True)
class Transfer:
    """Labels carried to one target video."""

    labels: np.ndarray  # int64 (L,): the phase of most votes; -1 where no reference voted
    confidence: np.ndarray  # float64 (L,): that phase's share of the votes cast, 0 where none was cast
    references: np.ndarray  # int64 (K,): the references that voted, least alignment cost first
    costs: np.ndarray  # float64 (R,): mean cost along each reference's path (all references)


def path_votes(path: np.ndarray, reference_labels: np.ndarray, num_frames: int, num_classes: int) -> np.ndarray:
    """One reference's votes for the frames of a target: path (K, 2) of (target frame, reference frame) pairs ->
    (num_frames, num_classes); a target frame's one vote is split evenly over the labelled reference frames paired
    with it (a row of zeros where all of them are unlabelled)."""
    labels = reference_labels[path[:, 1]]  # (K,)
    labelled = labels >= 0
    frames, labels = path[labelled, 0], labels[labelled]
    pairs_per_frame = np.bincount(frames, minlength=num_frames)  # (num_frames,)
    votes = np.zeros((num_frames, num_classes))
    np.add.at(votes, (frames, labels), 1.0 / pairs_per_frame[frames])
    return votes


def relative_time_path(num_frames: int, reference_frames: int) -> np.ndarray:
    """Each of `num_frames` target frames paired with the reference frame at the same relative time: (L, 2)."""
    frames = np.arange(num_frames)
    paired = np.rint(frames * (reference_frames - 1) / max(num_frames - 1, 1)).astype(np.int64)
    return np.stack([frames, paired], axis=1)


def decide(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Votes (L, C) -> the phase of most votes (first on ties; -1 where none) and its share of the votes cast."""
    cast = votes.sum(axis=1)  # (L,)
    voted = cast > 0
    labels = np.where(voted, votes.argmax(axis=1), -1)
    confidence = np.divide(votes.max(axis=1), cast, out=np.zeros(len(votes)), where=voted)
    return labels.astype(np.int64), confidence


def check_references(reference_labels: Sequence[np.ndarray], names: Sequence[str] | None = None) -> None:
    """Every reference must have at least one labelled frame."""
    for index, labels in enumerate(reference_labels):
        if not (np.asarray(labels) >= 0).any():
            name = names[index] if names is not None else f"reference {index}"
            raise MVFormerError(f"{name}: no frame is labelled (every label is -1), so it cannot lend labels")


def transfer_labels(target: np.ndarray, reference_embs: Sequence[np.ndarray], reference_labels: Sequence[np.ndarray],
                    num_classes: int, method: str = "dtw", references: int | None = None) -> Transfer:
    """Labels of a target video (L, E) from labelled references (each (Lr, E) with labels (Lr,)), by `method`
    (dtw | nn) through the `references` references of least alignment cost (None: all)."""
    check_method(method)
    if references is not None and references < 1:
        raise MVFormerError(f"references = {references}: at least one reference must vote")
    check_references(reference_labels)
    costs = [cost_matrix(target, reference) for reference in reference_embs]  # each (L, Lr)
    paths = [dtw_path(c) if method == "dtw" else nearest_neighbour_path(c) for c in costs]
    path_costs = np.array([c[p[:, 0], p[:, 1]].mean() for c, p in zip(costs, paths)])  # (R,)
    chosen = np.argsort(path_costs, kind="stable")[:references]
    votes = sum(path_votes(paths[i], reference_labels[i], len(target), num_classes) for i in chosen)
    return Transfer(*decide(votes), chosen, path_costs)


def relative_time_labels(num_frames: int, reference_labels: Sequence[np.ndarray], num_classes: int,
                         chosen: Sequence[int] | None = None) -> Transfer:
    """The baseline: labels of a target of `num_frames` frames by relative time alone, voted over the references
    `chosen` (None: all). Its costs are all zero, since no frames are compared."""
    chosen = np.arange(len(reference_labels)) if chosen is None else np.asarray(chosen, dtype=np.int64)
    votes = sum(path_votes(relative_time_path(num_frames, len(reference_labels[i])), reference_labels[i],
                           num_frames, num_classes) for i in chosen)
    return Transfer(*decide(votes), chosen, np.zeros(len(reference_labels)))


def frame_accuracy(predicted: Sequence[np.ndarray], truth: Sequence[np.ndarray]) -> float | None:
    """Share of the hand-labelled frames (truth >= 0) of all videos whose predicted label matches; None if none."""
    predicted, truth = np.concatenate(predicted), np.concatenate(truth)
    labelled = truth >= 0
    return float(np.mean(predicted[labelled] == truth[labelled])) if labelled.any() else None


def _phase_entries(labels: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where labels enter a phase: (video, frame, phase) of every frame whose label differs from the previous
    frame's, both labelled, each (B,)."""
    lengths = np.array([len(v) for v in labels])  # (V,)
    joined = np.concatenate(labels)  # (T,)
    video = np.repeat(np.arange(len(labels)), lengths)  # (T,)
    frame = np.arange(len(joined)) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # (T,): index within its video
    change = np.flatnonzero((joined[1:] != joined[:-1]) & (video[1:] == video[:-1])
                            & (joined[1:] >= 0) & (joined[:-1] >= 0)) + 1
    return video[change], frame[change], joined[change]


def boundary_errors(predicted: Sequence[np.ndarray], truth: Sequence[np.ndarray], num_classes: int) -> list[dict]:
    """Per phase c: {"boundaries": hand-labelled entries into c, "missed": those in a video whose predicted labels
    never enter c, "mean_error": mean distance in frames from each found one to the nearest predicted entry into c
    in its video (None when none is found)}."""
    if len(predicted) != len(truth) or any(len(p) != len(t) for p, t in zip(predicted, truth)):
        raise MVFormerError("predicted and true labels must cover the same videos and frames")
    true_video, true_frame, true_phase = _phase_entries(truth)
    found_video, found_frame, found_phase = _phase_entries(predicted)
    span = max(len(v) for v in truth) + 1
    true_key = (true_video * num_classes + true_phase) * span + true_frame  # ordered by (video, phase), then frame
    found_key = (found_video * num_classes + found_phase) * span + found_frame
    found_key.sort()
    after = np.searchsorted(found_key, true_key)  # (B,): first predicted entry at or after each true one
    errors = np.full(len(true_key), np.inf)
    for neighbour in (after - 1, after) if len(found_key) else ():  # the nearest is just before or just after
        key = found_key[np.clip(neighbour, 0, len(found_key) - 1)]  # (B,)
        same_group = (neighbour >= 0) & (neighbour < len(found_key)) & (key // span == true_key // span)
        errors = np.where(same_group, np.minimum(errors, np.abs(key - true_key)), errors)
    found = np.isfinite(errors)
    counts = np.bincount(true_phase, minlength=num_classes)
    hits = np.bincount(true_phase[found], minlength=num_classes)
    sums = np.bincount(true_phase[found], weights=errors[found], minlength=num_classes)
    return [{"boundaries": int(counts[c]), "missed": int(counts[c] - hits[c]),
             "mean_error": float(sums[c] / hits[c]) if hits[c] else None} for c in range(num_classes)]


def score_transfer(predicted: Sequence[np.ndarray], truth: Sequence[np.ndarray], num_classes: int,
                   class_names: Sequence[str] | None = None) -> dict:
    """{"frame_accuracy", "boundary_error": {phase name: boundary_errors' entry}} of predicted labels against
    hand labels (JSON-ready)."""
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    return {"frame_accuracy": frame_accuracy(predicted, truth),
            "boundary_error": dict(zip(names, boundary_errors(predicted, truth, num_classes)))}
