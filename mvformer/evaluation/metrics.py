"""The benchmark's four frame-embedding metrics: phase classification, phase progression, Kendall's tau, AP@K.

Every metric takes per-video lists: embeddings, each (frames, D), and integer labels, each (frames,). A frame
labelled < 0 is unlabelled and left out of every metric (removed before any stride is applied, and before the frames
of a video are indexed for progression), as the published evaluation drops them when it embeds a video. The probes
see the embeddings in float32, as the published model hands them over (float64 input is rounded to float32 first):
the published code pins scikit-learn 0.24.2, whose LinearRegression fits float32 as float32 (the targets cast to
it) and whose lbfgs LogisticRegression widens its input to float64, so each probe here is fitted in that precision.
The pairwise metrics (Kendall's tau, AP@K) are vectorised in float64 and work block by block so memory stays bounded.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.linear_model import LinearRegression

from mvformer.config import Classifier
from mvformer.errors import MVFormerError
from mvformer.evaluation.probes import (
    fit_logistic_probe,
    predict_classes,
    train_sgd_linear_probe,
)
from mvformer.evaluation.scorable import TASKS, unscorable_tasks
# Phase-classification probes: scikit-learn's logistic regression, or FineGym's linear layer trained with SGD.
CLASSIFIERS: tuple[str, ...] = typing.get_args(Classifier)

# Entries (float64) per temporary block in the pairwise metrics: 16 MB, so the few live temporaries stay near 64 MB.
# Blocks over 32 MB were twice as slow: glibc maps them fresh from the OS each time, paying a page fault per 4 KB.
BLOCK_ELEMENTS = 2 * 2**20

# Kendall's tau: candidate frames per distance tile (whole videos), so a 16 MB tile holds 512 query rows.
TAU_CANDIDATE_FRAMES = 4096

# Kendall's tau: squared distances within this fraction of the distance scale count as ties (first index wins).
# BLAS rounding in the matrix-product form |a|^2 + |b|^2 - 2ab can give copies of one frame different distances.
TIE_RTOL = 1e-10


def _as_videos(
    embs: Sequence, labels: Sequence | None, split: str, dtype: type = np.float64
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Check shapes and convert to (dtype (frames, D), int64 (frames,)) pairs; no labels -> all frames labelled 0."""
    if labels is not None and len(labels) != len(embs):
        raise MVFormerError(f"{split}: {len(embs)} embedding arrays but {len(labels)} label arrays")
    videos = []
    for index, emb in enumerate(embs):
        frames = np.asarray(emb, dtype=dtype)  # (frames, D)
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
    for index, (frames, frame_labels) in enumerate(videos):
        labelled = frame_labels >= 0
        features.append(frames[labelled])
        if num_classes is None:
            targets.append(frame_labels[labelled])
        else:
            targets.append(progression_targets(frame_labels, num_classes, video=f"{split} video {index}")[labelled])
    if not features or sum(len(f) for f in features) == 0:
        raise MVFormerError(f"{split}: no labelled frames (every label is < 0)")
    return np.concatenate(features), np.concatenate(targets)


def classification_accuracy(
    train_embs: Sequence,
    train_labels: Sequence,
    val_embs: Sequence,
    val_labels: Sequence,
    fractions: Sequence[float] = (0.1, 0.5, 1.0),
    classifier: str = "logistic",
) -> dict[float, float]:
    """Frame accuracy of a probe trained on the first fraction of the training videos.

    classifier "logistic": the published multinomial logistic regression (probes.fit_logistic_probe), in float64
    as scikit-learn 0.24.2 fitted it; if the selected training frames hold a single class it cannot be fitted, and
    that class is then predicted for every validation frame. "sgd-linear": FineGym's SGD-trained linear layer
    (probes.py) with one output per class up to the largest label seen in train or val.
    """
    if classifier not in CLASSIFIERS:
        raise MVFormerError(f"unknown classifier {classifier!r}; choose from {list(CLASSIFIERS)}")
    train = _as_videos(train_embs, train_labels, "train", np.float32)
    val_features, val_classes = _stack_labelled(_as_videos(val_embs, val_labels, "val", np.float32), "val")
    accuracies = {}
    for fraction in fractions:
        selected = train[: _num_train_videos(fraction, len(train))]
        features, classes = _stack_labelled(selected, "train")
        if classifier == "sgd-linear":
            num_classes = int(max(classes.max(), val_classes.max())) + 1
            predicted = predict_classes(train_sgd_linear_probe(selected, num_classes), val_features)
        elif np.unique(classes).size == 1:
            predicted = np.full_like(val_classes, classes[0])
        else:
            probe = fit_logistic_probe(features.astype(np.float64), classes)
            predicted = probe.predict(val_features.astype(np.float64))
        accuracies[fraction] = float(np.mean(predicted == val_classes))
    return accuracies


def progression_targets(
    labels: Sequence[int] | np.ndarray, num_classes: int, *, video: str = "video"
) -> np.ndarray:
    """The published phase-progression regression targets of one video, (frames, num_classes - 1), float64.

    Unlabelled frames (label < 0) are dropped and the rest re-indexed: t is a frame's index among the L labelled
    frames, and column c is (t - b_c) / L with b_c the index of the last labelled frame whose label equals c.
    Unlabelled frames get NaN rows, so `targets[labels >= 0]` are the targets of the labelled frames in order.
    Every phase c < num_classes - 1 must appear in a video with labelled frames: the published code fails there
    (IndexError), so a missing phase raises an MVFormerError naming `video` and the phase.
    """
    labels = np.asarray(labels).astype(np.int64, copy=False)  # (frames,)
    labelled = labels >= 0
    kept = labels[labelled]  # (L,)
    is_phase = kept[:, None] == np.arange(max(num_classes - 1, 0))  # (L, C - 1)
    targets = np.full((len(labels), is_phase.shape[1]), np.nan)  # (frames, C - 1)
    if not kept.size:
        return targets
    present = is_phase.any(axis=0)  # (C - 1,)
    if not present.all():
        raise MVFormerError(
            f"{video}: no frame of phase {np.flatnonzero(~present)[0]}; progression needs every phase but the last "
            f"(0..{num_classes - 2}) in every labelled video, as the published evaluation does"
        )
    boundaries = len(kept) - 1 - np.argmax(is_phase[::-1], axis=0)  # (C - 1,): last index of each phase
    targets[labelled] = (np.arange(len(kept))[:, None] - boundaries) / len(kept)
    return targets


def phase_progression(
    train_embs: Sequence,
    train_labels: Sequence,
    val_embs: Sequence,
    val_labels: Sequence,
    num_classes: int,
    fractions: Sequence[float] = (0.1, 0.5, 1.0),
) -> dict[float, float | None]:
    """Mean validation R^2 of one linear regression per phase boundary (progression_targets), trained on the
    first fraction of the training videos, in float32 as published; None per fraction when num_classes < 2."""
    if num_classes < 2:
        for fraction in fractions:
            _check_fraction(fraction)
        return {fraction: None for fraction in fractions}
    train = _as_videos(train_embs, train_labels, "train", np.float32)
    val_videos = _as_videos(val_embs, val_labels, "val", np.float32)
    val_features, val_targets = _stack_labelled(val_videos, "val", num_classes)  # (frames, D), (frames, C - 1)
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


def _video_groups(lengths: np.ndarray, videos: np.ndarray, frames_per_group: int) -> list[np.ndarray]:
    """Consecutive runs of `videos`, cut where their running frame count passes a multiple of frames_per_group.

    One matrix product over many short videos' frames is several times faster per row than one per video.
    """
    group_lengths = lengths[videos]
    group_of_video = (np.cumsum(group_lengths) - group_lengths) // frames_per_group
    return np.split(videos, np.flatnonzero(np.diff(group_of_video)) + 1)


class _PooledFrames:
    """The frames of all videos stacked, with what both pairwise metrics need to compute distances to them."""

    def __init__(self, clips: list[np.ndarray]):
        self.frames = np.concatenate(clips)  # (T, D)
        self.lengths = np.array([len(frames) for frames in clips])  # (V,)
        self.starts = np.cumsum(self.lengths) - self.lengths  # (V,): first row of each video
        self.sq_norms = np.einsum("td,td->t", self.frames, self.frames)  # (T,)

    def rows_of(self, videos: np.ndarray) -> np.ndarray:
        """Row indices of the frames of `videos`, in order."""
        return np.concatenate([np.arange(self.starts[v], self.starts[v] + self.lengths[v]) for v in videos])

    def columns_of(self, videos: np.ndarray) -> slice:
        """The rows of consecutive `videos`, as a slice."""
        return slice(self.starts[videos[0]], self.starts[videos[-1]] + self.lengths[videos[-1]])

    def distances(self, rows: np.ndarray, columns: slice = slice(None)) -> np.ndarray:
        """(r, c) squared distances from the frames at `rows` to the frames in `columns`, less the query's own
        |q|^2: that term is the same for all of a query's candidates, so it changes no ranking."""
        distances = (-2.0 * self.frames[rows]) @ self.frames[columns].T  # scaling by -2 is exact
        distances += self.sq_norms[columns]
        return distances


def _pair_taus(clips: list[np.ndarray], query_videos: np.ndarray) -> np.ndarray:
    """Tau-b of each query video i against every other video j, in order of j: (queries, V - 1), NaN if undefined.

    Distances are computed in tiles of query rows x a run of candidate videos: with all candidates at once, a block
    holds few rows and the product is bound by reading the candidates from memory.
    """
    pooled = _PooledFrames(clips)
    frame_in_video = (np.arange(len(pooled.frames)) - np.repeat(pooled.starts, pooled.lengths)).astype(np.int32)
    # Squared distances this close to a row's minimum count as ties, so the first such frame is matched.
    tie_slack = TIE_RTOL * (pooled.sq_norms + pooled.sq_norms.max())  # (T,) per query frame
    candidate_runs = _video_groups(pooled.lengths, np.arange(len(clips)), TAU_CANDIDATE_FRAMES)
    rows_per_block = max(1, BLOCK_ELEMENTS // min(len(pooled.frames), TAU_CANDIDATE_FRAMES))
    taus = np.empty((len(query_videos), len(clips) - 1))
    done = 0
    for group in _video_groups(pooled.lengths, query_videos, rows_per_block):
        rows = pooled.rows_of(group)
        nearest = np.empty((len(rows), len(clips)), dtype=np.int64)  # (group frames, V): matched frame per video
        for first in range(0, len(rows), rows_per_block):
            block = rows[first : first + rows_per_block]
            for run in candidate_runs:
                columns = pooled.columns_of(run)
                run_starts = pooled.starts[run] - columns.start
                distances = pooled.distances(block, columns)  # (r, run frames)
                closest = np.minimum.reduceat(distances, run_starts, axis=1)  # (r, run videos)
                closest += tie_slack[block, None]
                within = distances <= np.repeat(closest, pooled.lengths[run], axis=1)  # (r, run frames)
                first_within = np.where(within, frame_in_video[columns], np.int32(len(pooled.frames)))
                nearest[first : first + len(block), run] = np.minimum.reduceat(first_within, run_starts, axis=1)
        offset = 0
        for video in group:
            video_taus = _tau_b_against_frame_order(nearest[offset : offset + pooled.lengths[video]])  # (V,)
            taus[done] = np.delete(video_taus, video)
            offset += pooled.lengths[video]
            done += 1
    return taus


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
    taus = _pair_taus([frames for frames, _ in videos], np.arange(len(videos))).ravel()
    taus = taus[~np.isnan(taus)]
    return float(taus.mean()) if taus.size else None


def _precision_per_video(
    clips: list[np.ndarray], clip_labels: list[np.ndarray], ks: Sequence[int], query_videos: np.ndarray
) -> np.ndarray:
    """Mean precision@K over each query video's frames against the other videos' frames: (queries, len(ks))."""
    pooled = _PooledFrames(clips)
    rows_per_block = max(1, BLOCK_ELEMENTS // len(pooled.frames))
    frame_labels = np.concatenate(clip_labels)  # (T,)
    candidates = len(pooled.frames) - pooled.lengths  # (V,): frames of the other videos
    depth = int(min(max(ks), candidates.max()))
    per_video = []
    for group in _video_groups(pooled.lengths, query_videos, rows_per_block):
        rows = pooled.rows_of(group)
        row_videos = np.repeat(group, pooled.lengths[group])  # (group frames,)
        row_precisions = np.empty((len(rows), len(ks)))  # (group frames, len(ks))
        for first in range(0, len(rows), rows_per_block):
            block = rows[first : first + rows_per_block]
            block_videos = row_videos[first : first + rows_per_block]
            distances = pooled.distances(block)  # (r, T)
            for video in np.unique(block_videos):  # the query's own video is no candidate
                own = slice(pooled.starts[video], pooled.starts[video] + pooled.lengths[video])
                distances[block_videos == video, own] = np.inf
            nearest = torch.from_numpy(distances).topk(depth, dim=1, largest=False).indices.numpy()  # closest first
            block_candidates = candidates[block_videos]  # (r,)
            hits = frame_labels[nearest] == frame_labels[block, None]  # (r, depth)
            hits &= np.arange(depth) < block_candidates[:, None]  # short of candidates: own frames fill the tail
            for column, k in enumerate(ks):  # K capped at the number of candidates
                row_precisions[first : first + len(block), column] = hits[:, :k].sum(axis=1) / np.minimum(
                    k, block_candidates
                )
        video_offsets = np.cumsum(pooled.lengths[group]) - pooled.lengths[group]
        per_video.append(np.add.reduceat(row_precisions, video_offsets, axis=0) / pooled.lengths[group, None])
    return np.concatenate(per_video)


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
    per_video = _precision_per_video(
        [frames for frames, _ in videos], [labels for _, labels in videos], ks, np.arange(len(videos))
    )  # (V, len(ks))
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
    classifier: str = "logistic",
) -> dict:
    """Run the requested metrics; keys are strings and values Python floats (or None) so it dumps to JSON as is."""
    unknown = [task for task in tasks if task not in TASKS]
    if unknown:
        raise MVFormerError(f"unknown evaluation task(s) {unknown}; choose from {list(TASKS)}")
    skipped = unscorable_tasks(train_labels, val_labels, num_classes, tasks, fractions)  # reported as None
    results: dict = {}
    if "classification" in tasks:
        accuracies = {fraction: None for fraction in fractions} if "classification" in skipped else \
            classification_accuracy(train_embs, train_labels, val_embs, val_labels, fractions, classifier)
        results["classification"] = {str(fraction): value for fraction, value in accuracies.items()}
    if "progression" in tasks:
        scores = {fraction: None for fraction in fractions} if "progression" in skipped else \
            phase_progression(train_embs, train_labels, val_embs, val_labels, num_classes, fractions)
        results["progression"] = {str(fraction): value for fraction, value in scores.items()}
    if "kendalls_tau" in tasks:
        results["kendalls_tau"] = kendalls_tau(val_embs, stride=stride, val_labels=val_labels)
    if "retrieval" in tasks:
        precisions = retrieval_precision(val_embs, val_labels, ks=ks, stride=stride)
        results["retrieval"] = {str(k): value for k, value in precisions.items()}
    return results


def mean_of_metrics(values: list):
    """Mean over datasets of a metric (a float, or a dict of floats): None where any dataset has None, as the
    paper's average over Penn Action's 13 actions has no meaning without all of them."""
    if isinstance(values[0], dict):
        return {key: mean_of_metrics([value[key] for value in values]) for key in values[0]}
    return None if any(value is None for value in values) else float(np.mean(values))
