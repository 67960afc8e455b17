"""Speed of the vectorised pairwise metrics (Kendall's tau, AP@K) against straightforward forms written here.

Run by hand (about a minute and a half on one CPU core):  python benchmarks/evaluation.py

Two cases with random but structured embeddings (smooth random walks, L2-normalised, 128-d):
- FineGym-sized: 2,000 validation videos of 100-300 frames, 99 classes in runs, stride 5. The straightforward
  tau there is 4 million cdist + kendalltau calls, so both forms score the same 20 random query videos against all
  others (the vectorised form through the private per-query functions the public metrics are built on).
- Penn-sized: 13 datasets of about 100 training and 80 validation videos of about 70 frames, 2-6 phases, stride 2,
  scored whole through the public metrics.
Both forms run on one thread, so the ratio compares the algorithms rather than the cores. The numbers must agree to
1e-6; the script exits with status 1 when they do not. Classification and progression use scikit-learn in either
form, so they are only timed, over the 13 Penn-sized datasets, for scale.
"""

from __future__ import annotations

import sys
import time
import tracemalloc
import warnings

import numpy as np
import torch
from scipy.spatial.distance import cdist
from scipy.stats import kendalltau
from threadpoolctl import threadpool_limits

from mvformer.evaluation import metrics

DIM = 128
KS = (5, 10, 15)
TOLERANCE = 1e-6
QUERY_VIDEOS = 20


# ---------------------------------------------------------------- data


def smooth_walk(rng: np.random.Generator, num_frames: int, scale: float) -> np.ndarray:
    """A random walk whose steps are themselves a random walk (smooth), (frames, DIM), of overall size ~scale."""
    velocity = np.cumsum(rng.normal(size=(num_frames, DIM)), axis=0)  # (frames, DIM)
    walk = np.cumsum(velocity, axis=0)
    return scale * walk / (np.abs(walk).max() + 1e-12)


def normalise(frames: np.ndarray) -> np.ndarray:
    return frames / np.linalg.norm(frames, axis=1, keepdims=True)


def finegym_like(rng: np.random.Generator, num_videos: int, num_classes: int = 99):
    """Videos of 100-300 frames made of 2-8 runs of random classes; frame = class prototype + a smooth walk."""
    prototypes = rng.normal(size=(num_classes, DIM))  # (classes, DIM)
    videos, labels = [], []
    for _ in range(num_videos):
        num_frames = int(rng.integers(100, 301))
        run_ends = np.sort(rng.choice(np.arange(1, num_frames), size=int(rng.integers(1, 8)), replace=False))
        frame_labels = rng.integers(0, num_classes, size=len(run_ends) + 1)[np.searchsorted(
            run_ends, np.arange(num_frames), side="right")]  # (frames,)
        videos.append(normalise(prototypes[frame_labels] + smooth_walk(rng, num_frames, 3.0)))
        labels.append(frame_labels)
    return videos, labels


def penn_like(rng: np.random.Generator, num_train: int, num_val: int):
    """One action, as (train videos, train labels), (val videos, val labels): each video runs through the action's
    smooth trajectory at its own pace, plus its own smooth walk; labels are 2-6 non-decreasing phases of the
    trajectory, each at least 30 of its 400 steps long, so every video (at most ~25 steps a frame) has frames of
    every phase, as progression needs."""
    trajectory = smooth_walk(rng, 400, 4.0)  # (400, DIM)
    phase_ends = 30 * np.sort(rng.choice(np.arange(1, 13), size=int(rng.integers(1, 6)), replace=False))
    splits = []
    for num_videos in (num_train, num_val):
        videos, labels = [], []
        for _ in range(num_videos):
            num_frames = int(rng.integers(50, 91))
            pace = np.cumsum(rng.uniform(0.5, 1.5, size=num_frames))
            positions = np.round(399 * (pace - pace[0]) / (pace[-1] - pace[0])).astype(int)  # (frames,) in [0, 399]
            videos.append(normalise(trajectory[positions] + smooth_walk(rng, num_frames, 1.0)))
            labels.append(np.searchsorted(phase_ends, positions, side="right"))
        splits.append((videos, labels))
    return tuple(splits)


# ---------------------------------------------------------------- straightforward forms


def straightforward_pair_taus(clips: list[np.ndarray], query_videos: np.ndarray) -> np.ndarray:
    """cdist and scipy's kendalltau per ordered pair (i, j), j != i: (queries, V - 1)."""
    taus = np.empty((len(query_videos), len(clips) - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant matches: scipy warns and returns NaN
        for row, i in enumerate(query_videos):
            others = [j for j in range(len(clips)) if j != i]
            for column, j in enumerate(others):
                nearest = np.argmin(cdist(clips[i], clips[j], "sqeuclidean"), axis=1)
                taus[row, column] = kendalltau(np.arange(len(nearest)), nearest).statistic
    return taus


def straightforward_precision(clips: list[np.ndarray], clip_labels: list[np.ndarray],
                              query_videos: np.ndarray) -> np.ndarray:
    """cdist to all other videos' frames pooled, then argsort, per query video: (queries, len(KS))."""
    precisions = np.empty((len(query_videos), len(KS)))
    for row, i in enumerate(query_videos):
        candidates = np.concatenate([c for j, c in enumerate(clips) if j != i])  # (others' frames, DIM)
        candidate_labels = np.concatenate([lab for j, lab in enumerate(clip_labels) if j != i])
        order = np.argsort(cdist(clips[i], candidates, "sqeuclidean"), axis=1, kind="stable")  # (n_i, others)
        hits = candidate_labels[order[:, : max(KS)]] == clip_labels[i][:, None]
        precisions[row] = [hits[:, :k].mean() for k in KS]
    return precisions


# ---------------------------------------------------------------- measuring


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def peak_traced_mb(function, *args) -> float:
    """Peak of the memory allocated while `function` runs, as tracemalloc sees it (NumPy reports its arrays)."""
    tracemalloc.start()
    function(*args)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def max_difference(expected, got) -> float:
    """Largest absolute difference; NaN in the same places counts as equal, NaN against a number as inf."""
    expected, got = np.asarray(expected, dtype=float), np.asarray(got, dtype=float)
    if not np.array_equal(np.isnan(expected), np.isnan(got)):
        return float("inf")
    both = ~np.isnan(expected)
    return float(np.abs(expected[both] - got[both]).max()) if both.any() else 0.0


def report(name: str, plain_s: float, fast_s: float, peak_mb: float, difference: float) -> bool:
    agrees = difference <= TOLERANCE
    print(f"  {name}")
    print(f"    straightforward {plain_s:8.2f} s")
    print(f"    vectorised      {fast_s:8.2f} s   {plain_s / fast_s:5.1f}x faster   "
          f"peak {peak_mb:.0f} MiB (tracemalloc, vectorised form)")
    print(f"    max |difference| {difference:.1e}  {'same numbers' if agrees else 'DIFFERENT NUMBERS'}")
    return agrees


def finegym_case(rng: np.random.Generator) -> bool:
    stride = 5
    videos, labels = finegym_like(rng, 2000)
    clips = [v[::stride] for v in videos]
    clip_labels = [lab[::stride] for lab in labels]
    queries = np.sort(rng.choice(len(clips), size=QUERY_VIDEOS, replace=False))
    frames = sum(len(c) for c in clips)
    print(f"FineGym-sized: {len(clips)} val videos of 100-300 frames, stride {stride} -> {frames:,} frames, "
          f"{DIM}-d, 99 classes")
    print(f"  both forms on the same {QUERY_VIDEOS} random query videos against all others (the straightforward tau "
          f"of all {len(clips) * (len(clips) - 1):,} pairs is too slow to run here)")
    plain, plain_s = timed(straightforward_pair_taus, clips, queries)
    fast, fast_s = timed(metrics._pair_taus, clips, queries)
    peak = peak_traced_mb(metrics._pair_taus, clips, queries)
    pairs = QUERY_VIDEOS * (len(clips) - 1)
    ok = report(f"Kendall's tau, {pairs:,} pairs (cdist + scipy kendalltau per pair)", plain_s, fast_s, peak,
                max_difference(plain, fast))
    print(f"    whole set at this rate: vectorised ~{fast_s * len(clips) / QUERY_VIDEOS / 60:.1f} min, "
          f"straightforward ~{plain_s * len(clips) / QUERY_VIDEOS / 3600:.1f} h (projected, not measured)")
    plain, plain_s = timed(straightforward_precision, clips, clip_labels, queries)
    fast, fast_s = timed(metrics._precision_per_video, clips, clip_labels, KS, queries)
    peak = peak_traced_mb(metrics._precision_per_video, clips, clip_labels, KS, queries)
    ok &= report(f"AP@{'/'.join(map(str, KS))}, {QUERY_VIDEOS} query videos (cdist + argsort per query video)",
                 plain_s, fast_s, peak, max_difference(plain, fast))
    return ok


def penn_case(rng: np.random.Generator) -> bool:
    stride = 2
    datasets = [penn_like(rng, int(rng.integers(90, 111)), int(rng.integers(70, 91))) for _ in range(13)]
    val_videos = sum(len(val[0]) for _, val in datasets)
    print(f"Penn-sized: 13 datasets, {val_videos} val videos of 50-90 frames in all, stride {stride}, {DIM}-d; "
          "whole datasets, public metrics")
    plain_taus, plain_precisions, fast_taus, fast_precisions = [], [], [], []
    times = dict(plain_tau=0.0, fast_tau=0.0, plain_ap=0.0, fast_ap=0.0)
    peaks = dict(tau=0.0, ap=0.0)
    for _, (val_videos, val_labels) in datasets:
        clips = [v[::stride] for v in val_videos]
        clip_labels = [lab[::stride] for lab in val_labels]
        every_video = np.arange(len(clips))
        taus, seconds = timed(straightforward_pair_taus, clips, every_video)
        plain_taus.append(np.nanmean(taus))
        times["plain_tau"] += seconds
        tau, seconds = timed(metrics.kendalls_tau, val_videos, stride)
        fast_taus.append(tau)
        times["fast_tau"] += seconds
        peaks["tau"] = max(peaks["tau"], peak_traced_mb(metrics.kendalls_tau, val_videos, stride))
        precisions, seconds = timed(straightforward_precision, clips, clip_labels, every_video)
        plain_precisions.append(precisions.mean(axis=0))
        times["plain_ap"] += seconds
        precision, seconds = timed(metrics.retrieval_precision, val_videos, val_labels, KS, stride)
        fast_precisions.append([precision[k] for k in KS])
        times["fast_ap"] += seconds
        peaks["ap"] = max(peaks["ap"],
                          peak_traced_mb(metrics.retrieval_precision, val_videos, val_labels, KS, stride))
    ok = report("Kendall's tau, per dataset (cdist + scipy kendalltau per pair)", times["plain_tau"],
                times["fast_tau"], peaks["tau"], max_difference(plain_taus, fast_taus))
    ok &= report(f"AP@{'/'.join(map(str, KS))}, per dataset (cdist + argsort per query video)", times["plain_ap"],
                 times["fast_ap"], peaks["ap"], max_difference(plain_precisions, fast_precisions))

    times = {"classification": 0.0, "progression": 0.0}
    for (train_videos, train_labels), (val_videos, val_labels) in datasets:
        train_videos = [v.astype(np.float32) for v in train_videos]  # as the model hands them over
        val_videos = [v.astype(np.float32) for v in val_videos]
        num_classes = int(max(lab.max() for lab in train_labels + val_labels)) + 1
        _, seconds = timed(metrics.classification_accuracy, train_videos, train_labels, val_videos, val_labels)
        times["classification"] += seconds
        _, seconds = timed(metrics.phase_progression, train_videos, train_labels, val_videos, val_labels, num_classes)
        times["progression"] += seconds
    two_phase = sum(int(max(lab.max() for lab in train[1])) == 1 for train, _ in datasets)
    print(f"  classification (logistic), 13 datasets ({two_phase} of two phases), fractions 0.1/0.5/1.0: "
          f"{times['classification']:.2f} s")
    print(f"  progression, 13 datasets, fractions 0.1/0.5/1.0: {times['progression']:.2f} s")
    return ok


def main() -> int:
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        rng = np.random.default_rng(0)
        ok = finegym_case(rng)
        ok &= penn_case(rng)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
