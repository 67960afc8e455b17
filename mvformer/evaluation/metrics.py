"""The benchmark's four frame-embedding metrics: phase classification, phase progression, Kendall's tau, AP@K.

Every metric takes per-video lists: embeddings, each (frames, D), and integer labels, each (frames,). A frame
labelled < 0 is unlabelled and left out of every metric (removed before any stride is applied). The pairwise
metrics (Kendall's tau, AP@K) are vectorised in float64 and work block by block so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.linear_model import LinearRegression, LogisticRegression

from mvformer.errors import MVFormerError

TASKS = ("classification", "progression", "kendalls_tau", "retrieval")

# Entries (float64) per temporary block in the pairwise metrics: 64 MB, so the few live temporaries stay near 256 MB.
BLOCK_ELEMENTS = 8 * 2**20

# Kendall's tau: squared distances within this fraction of the distance scale count as ties (first index wins).
# BLAS rounding in the matrix-product form |a|^2 + |b|^2 - 2ab can give copies of one frame different distances.
TIE_RTOL = 1e-10


def _as_videos(embs: Sequence, labels: Sequence | None, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Check shapes and convert to (float64 (frames, D), int64 (frames,)) pairs; no labels -> all frames labelled 0."""
    if labels is not None and len(labels) != len(embs):
        raise MVFormerError(f"{split}: {len(embs)} embedding arrays but {len(labels)} label arrays")
    videos = []
    for index, emb in enumerate(embs):
        frames = np.asarray(emb, dtype=np.float64)  # (frames, D)
        if frames.ndim != 2:
            raise MVFormerError(f"{split} video {index}: embeddings must be (frames, D), got shape {frames.shape}")
        if videos and frames.shape[1] != videos[0][0].shape[1]:
            raise MVFormerError(
                f"{split} video {index}: embedding size {frames.shape[1]} differs from {videos[0][0].shape[1]}"
            )
        if labels is None:
            frame_labels = np.zeros(len(frames), dtype=np.int64)
        else:
            frame_labels = np.asarray(labels[index]).astype(np.int64, copy=False)  # (frames,)
            if frame_labels.shape != (len(frames),):
                raise MVFormerError(
                    f"{split} video {index}: labels of shape {frame_labels.shape} for {len(frames)} frames"
                )
        videos.append((frames, frame_labels))
    return videos


def _labelled_strided(
    videos: list[tuple[np.ndarray, np.ndarray]], stride: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Drop unlabelled frames, then keep every stride-th frame; videos left with no frames are dropped."""
    if int(stride) != stride or stride < 1:
        raise MVFormerError(f"stride must be a positive integer, got {stride}")
    kept = []
    for frames, frame_labels in videos:
        labelled = frame_labels >= 0
        frames, frame_labels = frames[labelled][::stride], frame_labels[labelled][::stride]
        if len(frame_labels):
            kept.append((frames, frame_labels))
    return kept


def _check_fraction(fraction: float) -> None:
    if not 0 < fraction <= 1:
        raise MVFormerError(f"training fraction must be in (0, 1], got {fraction}")


def _num_train_videos(fraction: float, num_videos: int) -> int:
    """The protocol's training subset size: the first max(1, int(fraction * N)) videos."""
    _check_fraction(fraction)
    if num_videos == 0:
        raise MVFormerError("no training videos")
    return max(1, int(fraction * num_videos))


def _stack_labelled(
    videos: list[tuple[np.ndarray, np.ndarray]], split: str, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Labelled frames of all videos stacked: (frames, D) and, per frame, its label or (num_classes given)
    its progression targets (frames, num_classes - 1)."""
    features, targets = [], []
    for frames, frame_labels in videos:
        labelled = frame_labels >= 0
        features.append(frames[labelled])
        if num_classes is None:
            targets.append(frame_labels[labelled])
        else:
            targets.append(progression_targets(frame_labels, num_classes)[labelled])
    if not features or sum(len(f) for f in features) == 0:
        raise MVFormerError(f"{split}: no labelled frames (every label is < 0)")
    return np.concatenate(features), np.concatenate(targets)


def classification_accuracy(
    train_embs: Sequence,
    train_labels: Sequence,
    val_embs: Sequence,
    val_labels: Sequence,
    fractions: Sequence[float] = (0.1, 0.5, 1.0),
) -> dict[float, float]:
    """Frame accuracy of a logistic-regression probe trained on the first fraction of the training videos.

    If the selected training frames hold a single class, LogisticRegression cannot be fitted; that class is then
    predicted for every validation frame.
    """
    train = _as_videos(train_embs, train_labels, "train")
    val_features, val_classes = _stack_labelled(_as_videos(val_embs, val_labels, "val"), "val")
    accuracies = {}
    for fraction in fractions:
        features, classes = _stack_labelled(train[: _num_train_videos(fraction, len(train))], "train")
        present = np.unique(classes)
        if present.size == 1:
            predicted = np.full_like(val_classes, present[0])
        else:
            probe = LogisticRegression(max_iter=100000, solver="lbfgs").fit(features, classes)
            predicted = probe.predict(val_features)
        accuracies[fraction] = float(np.mean(predicted == val_classes))
    return accuracies


def progression_targets(labels: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """Phase-progression regression targets of one video, (frames, num_classes - 1).

    Column c is (t - b_c) / L: t the frame index, L the video length, b_c the last labelled frame whose label is
    <= c (the end of phase c when it is present), or -1 when there is none. Unlabelled frames still count in t, L.
    """
    labels = np.asarray(labels).astype(np.int64, copy=False)  # (frames,)
    length = len(labels)
    positions = np.arange(length)
    labelled = labels >= 0
    targets = np.empty((length, max(num_classes - 1, 0)))  # (frames, C - 1)
    for phase in range(num_classes - 1):
        up_to_phase = np.flatnonzero(labelled & (labels <= phase))
        boundary = up_to_phase[-1] if up_to_phase.size else -1
        targets[:, phase] = (positions - boundary) / length
    return targets


def phase_progression(
    train_embs: Sequence,
    train_labels: Sequence,
    val_embs: Sequence,
    val_labels: Sequence,
    num_classes: int,
    fractions: Sequence[float] = (0.1, 0.5, 1.0),
) -> dict[float, float | None]:
    """Mean validation R^2 of one linear regression per phase boundary, trained on the first fraction of the
    training videos; None per fraction when num_classes < 2 (no boundaries)."""
    if num_classes < 2:
        for fraction in fractions:
            _check_fraction(fraction)
        return {fraction: None for fraction in fractions}
    train = _as_videos(train_embs, train_labels, "train")
    val_features, val_targets = _stack_labelled(_as_videos(val_embs, val_labels, "val"), "val", num_classes)
    scores = {}
    for fraction in fractions:
        selected = train[: _num_train_videos(fraction, len(train))]
        features, targets = _stack_labelled(selected, "train", num_classes)  # (frames, D), (frames, C - 1)
        boundary_scores = [
            LinearRegression().fit(features, targets[:, boundary]).score(val_features, val_targets[:, boundary])
            for boundary in range(num_classes - 1)
        ]
        scores[fraction] = float(np.mean(boundary_scores))
    return scores


def _pairs_from_rows(start: int, stop: int, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """All frame pairs (a, b) with start <= a < stop and a < b < num_frames, as two index arrays."""
    earlier = np.arange(start, stop)
    pairs_per_row = num_frames - 1 - earlier
    first_pair_of_row = np.cumsum(pairs_per_row) - pairs_per_row
    pair_rank = np.arange(pairs_per_row.sum()) - np.repeat(first_pair_of_row, pairs_per_row)
    earlier = np.repeat(earlier, pairs_per_row)
    return earlier, earlier + 1 + pair_rank


def _tau_b_against_frame_order(nearest: np.ndarray) -> np.ndarray:
    """Kendall tau-b of (0..n-1, column) for every column of nearest (n, V); NaN where undefined, as scipy.

    Frame order has no ties, so tau-b = (concordant - discordant) / sqrt(n0 * (n0 - ties)), n0 = n(n-1)/2.
    """
    num_frames, num_columns = nearest.shape
    concordant_minus_discordant = np.zeros(num_columns, dtype=np.int64)
    tied_pairs = np.zeros(num_columns, dtype=np.int64)
    columns_per_block = min(num_columns, max(1, BLOCK_ELEMENTS // max(num_frames, 1)))
    for col_start in range(0, num_columns, columns_per_block):
        columns = slice(col_start, col_start + columns_per_block)
        block = np.ascontiguousarray(nearest[:, columns], dtype=np.int32)  # (n, k)
        rows_per_block = max(1, BLOCK_ELEMENTS // (num_frames * block.shape[1]))
        for start in range(0, num_frames - 1, rows_per_block):
            earlier, later = _pairs_from_rows(start, min(start + rows_per_block, num_frames - 1), num_frames)
            change = block[later] - block[earlier]  # (pairs, k): nearest[b] - nearest[a] for a < b
            concordant_minus_discordant[columns] += np.sign(change).sum(axis=0, dtype=np.int64)
            tied_pairs[columns] += np.count_nonzero(change == 0, axis=0)
    total_pairs = num_frames * (num_frames - 1) // 2
    untied_pairs = total_pairs - tied_pairs
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = concordant_minus_discordant / np.sqrt(total_pairs) / np.sqrt(untied_pairs)
    return np.where((total_pairs > 0) & (untied_pairs > 0), np.clip(tau, -1.0, 1.0), np.nan)


def kendalls_tau(val_embs: Sequence, stride: int = 1, val_labels: Sequence | None = None) -> float | None:
    """Mean Kendall's tau of nearest-neighbour alignments over all ordered pairs of validation videos.

    For the pair (i, j), each stride-th frame of video i is matched to its nearest stride-th frame of video j
    (squared Euclidean distance, first index on ties); tau-b of (frame order, matched indices). NaN pairs (e.g. a
    constant match) are dropped. Frames labelled < 0 are removed first when labels are given. None with fewer than
    two videos or when every pair is NaN.
    """
    videos = _labelled_strided(_as_videos(val_embs, val_labels, "val"), stride)
    if len(videos) < 2:
        return None
    clips = [frames for frames, _ in videos]
    num_videos, max_frames, dim = len(clips), max(len(c) for c in clips), clips[0].shape[1]
    padded = np.zeros((num_videos, max_frames, dim))  # (V, M, D)
    padding_penalty = np.full((num_videos, max_frames), np.inf)  # (V, M): 0 on real frames, inf on padding
    for video, frames in enumerate(clips):
        padded[video, : len(frames)] = frames
        padding_penalty[video, : len(frames)] = 0.0
    candidates = padded.reshape(-1, dim)  # (V * M, D)
    candidate_sq_norms = np.einsum("cd,cd->c", candidates, candidates)  # (V * M,)
    # |c|^2 with inf on padding; the query's own |q|^2 is the same for all its candidates, so it is left out.
    candidate_terms = candidate_sq_norms.reshape(num_videos, max_frames) + padding_penalty  # (V, M)
    doubled_candidates = -2.0 * candidates  # (V * M, D), exact
    max_candidate_sq_norm = candidate_sq_norms.max()
    rows_per_block = max(1, BLOCK_ELEMENTS // len(candidates))
    pair_taus = []
    for query_video, queries in enumerate(clips):
        nearest = np.empty((len(queries), num_videos), dtype=np.int64)  # (n_i, V): matched frame per video
        for start in range(0, len(queries), rows_per_block):
            block = queries[start : start + rows_per_block]  # (r, D)
            distances = (block @ doubled_candidates.T).reshape(len(block), num_videos, max_frames)
            distances += candidate_terms  # (r, V, M): squared distance less |q|^2
            closest = distances.min(axis=2, keepdims=True)  # (r, V, 1)
            block_sq_norms = np.einsum("rd,rd->r", block, block)[:, None, None]  # (r, 1, 1)
            closest += TIE_RTOL * (block_sq_norms + max_candidate_sq_norm)
            nearest[start : start + len(block)] = np.argmax(distances <= closest, axis=2)
        pair_taus.append(np.delete(_tau_b_against_frame_order(nearest), query_video))
    taus = np.concatenate(pair_taus)
    taus = taus[~np.isnan(taus)]
    return float(taus.mean()) if taus.size else None


def retrieval_precision(
    val_embs: Sequence, val_labels: Sequence, ks: Sequence[int] = (5, 10, 15), stride: int = 1
) -> dict[int, float | None]:
    """The benchmark's AP@K, really mean precision@K of frame retrieval across videos.

    Each stride-th labelled frame of a video queries the stride-th labelled frames of all other videos pooled;
    precision = share of its K nearest (squared Euclidean) with the query's label, averaged over the video's queries
    and then over videos. K is capped at the number of candidates. None per K with fewer than two videos.
    """
    for k in ks:
        if int(k) != k or k < 1:
            raise MVFormerError(f"retrieval K must be a positive integer, got {k}")
    videos = _labelled_strided(_as_videos(val_embs, val_labels, "val"), stride)
    if len(videos) < 2:
        return {k: None for k in ks}
    frames = np.concatenate([f for f, _ in videos])  # (T, D)
    frame_labels = np.concatenate([lab for _, lab in videos])  # (T,)
    bounds = np.cumsum([0] + [len(lab) for _, lab in videos])
    sq_norms = np.einsum("td,td->t", frames, frames)  # (T,)
    doubled_frames = -2.0 * frames  # (T, D), exact
    rows_per_block = max(1, BLOCK_ELEMENTS // len(frames))
    per_video = np.empty((len(videos), len(ks)))  # (V, len(ks))
    for video in range(len(videos)):
        first, end = bounds[video], bounds[video + 1]
        num_candidates = len(frames) - (end - first)
        depth = min(max(ks), num_candidates)
        hits = []
        for start in range(first, end, rows_per_block):
            stop = min(start + rows_per_block, end)
            distances = frames[start:stop] @ doubled_frames.T  # (r, T)
            distances += sq_norms  # squared distance less the query's |q|^2, which does not change its ranking
            distances[:, first:end] = np.inf  # the query's own video is no candidate
            nearest = torch.from_numpy(distances).topk(depth, dim=1, largest=False).indices.numpy()  # closest first
            hits.append(frame_labels[nearest] == frame_labels[start:stop, None])
        hits = np.concatenate(hits)  # (n_video, depth)
        for column, k in enumerate(ks):
            per_video[video, column] = hits[:, :k].mean()  # fewer than k columns: k capped
    return {k: float(per_video[:, column].mean()) for column, k in enumerate(ks)}


def evaluate_embeddings(
    train_embs: Sequence,
    train_labels: Sequence,
    val_embs: Sequence,
    val_labels: Sequence,
    num_classes: int,
    fractions: Sequence[float] = (0.1, 0.5, 1.0),
    ks: Sequence[int] = (5, 10, 15),
    stride: int = 1,
    tasks: Sequence[str] = TASKS,
) -> dict:
    """Run the requested metrics; keys are strings and values Python floats (or None) so it dumps to JSON as is."""
    unknown = [task for task in tasks if task not in TASKS]
    if unknown:
        raise MVFormerError(f"unknown evaluation task(s) {unknown}; choose from {list(TASKS)}")
    results: dict = {}
    if "classification" in tasks:
        accuracies = classification_accuracy(train_embs, train_labels, val_embs, val_labels, fractions)
        results["classification"] = {str(fraction): value for fraction, value in accuracies.items()}
    if "progression" in tasks:
        scores = phase_progression(train_embs, train_labels, val_embs, val_labels, num_classes, fractions)
        results["progression"] = {str(fraction): value for fraction, value in scores.items()}
    if "kendalls_tau" in tasks:
        results["kendalls_tau"] = kendalls_tau(val_embs, stride=stride, val_labels=val_labels)
    if "retrieval" in tasks:
        precisions = retrieval_precision(val_embs, val_labels, ks=ks, stride=stride)
        results["retrieval"] = {str(k): value for k, value in precisions.items()}
    return results
