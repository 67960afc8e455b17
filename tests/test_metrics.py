"""Protocol metrics: the vectorised forms against plain reference forms, and hand-computed cases."""

import json
import warnings

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.stats import kendalltau
from sklearn.linear_model import LinearRegression, LogisticRegression

from mvformer.errors import MVFormerError
from mvformer.evaluation import metrics
from mvformer.evaluation.metrics import (
    classification_accuracy,
    evaluate_embeddings,
    kendalls_tau,
    phase_progression,
    progression_targets,
    retrieval_precision,
)


def make_videos(seed, num_videos=6, num_classes=3, dim=8, unlabelled_share=0.15):
    """Random L2-normalised embeddings with non-decreasing phase labels; some frames unlabelled (-1)."""
    rng = np.random.default_rng(seed)
    class_means = rng.normal(size=(num_classes, dim))
    embs, labels = [], []
    for _ in range(num_videos):
        length = int(rng.integers(8, 20))
        video_labels = np.sort(rng.integers(0, num_classes, size=length))
        frames = class_means[video_labels] + rng.normal(size=(length, dim))  # (frames, D)
        embs.append(frames / np.linalg.norm(frames, axis=1, keepdims=True))
        video_labels[rng.random(length) < unlabelled_share] = -1
        labels.append(video_labels)
    return embs, labels


def kept_frames(embs, labels, stride):
    """Per video: labelled frames, then every stride-th; empty videos dropped."""
    videos = []
    for frames, frame_labels in zip(embs, labels):
        keep = frame_labels >= 0
        if keep.any():
            videos.append((frames[keep][::stride], frame_labels[keep][::stride]))
    return videos


def reference_tau(embs, stride, labels=None):
    """Plain form: cdist per ordered pair, argmin per frame, scipy's kendalltau per pair."""
    if labels is None:
        labels = [np.zeros(len(e), dtype=int) for e in embs]
    clips = [frames for frames, _ in kept_frames(embs, labels, stride)]
    if len(clips) < 2:
        return None
    taus = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, queries in enumerate(clips):
            for j, candidates in enumerate(clips):
                if i != j:
                    nearest = np.argmin(cdist(queries, candidates, "sqeuclidean"), axis=1)
                    taus.append(kendalltau(np.arange(len(nearest)), nearest).statistic)
    taus = [tau for tau in taus if not np.isnan(tau)]
    return float(np.mean(taus)) if taus else None


def reference_retrieval(embs, labels, ks, stride):
    """Plain form: one query frame at a time against the pooled other videos, full argsort."""
    videos = kept_frames(embs, labels, stride)
    if len(videos) < 2:
        return {k: None for k in ks}
    results = {}
    for k in ks:
        per_video = []
        for i, (queries, query_labels) in enumerate(videos):
            candidates = np.concatenate([f for j, (f, _) in enumerate(videos) if j != i])
            candidate_labels = np.concatenate([lab for j, (_, lab) in enumerate(videos) if j != i])
            precisions = []
            for frame, label in zip(queries, query_labels):
                distances = cdist(frame[None], candidates, "sqeuclidean")[0]
                nearest = np.argsort(distances)[:k]
                precisions.append(np.mean(candidate_labels[nearest] == label))
            per_video.append(np.mean(precisions))
        results[k] = float(np.mean(per_video))
    return results


def stack_labelled(embs, labels):
    features = np.concatenate([e[lab >= 0] for e, lab in zip(embs, labels)])
    targets = np.concatenate([lab[lab >= 0] for lab in labels])
    return features, targets


def circle_video(phases):
    """Frames on a quarter of the unit circle at the given phases in [0, 1], embedded in 4-D."""
    angles = np.asarray(phases) * np.pi / 2
    return np.stack([np.cos(angles), np.sin(angles), np.zeros_like(angles), np.zeros_like(angles)], axis=1)


# ---------------------------------------------------------------- Kendall's tau


@pytest.mark.parametrize("stride", [1, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tau_equals_reference(seed, stride):
    embs, labels = make_videos(seed)
    assert kendalls_tau(embs, stride=stride) == pytest.approx(reference_tau(embs, stride), abs=1e-9)
    expected = reference_tau(embs, stride, labels)
    assert kendalls_tau(embs, stride=stride, val_labels=labels) == pytest.approx(expected, abs=1e-9)


def test_tau_equals_reference_with_tiny_blocks(monkeypatch):
    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", 7)
    embs, labels = make_videos(3)
    assert kendalls_tau(embs, val_labels=labels) == pytest.approx(reference_tau(embs, 1, labels), abs=1e-9)


def test_tau_b_of_frame_order_equals_scipy_including_ties():
    rng = np.random.default_rng(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(60):
            num_frames = int(rng.integers(1, 30))
            nearest = rng.integers(0, int(rng.integers(1, 6)), size=(num_frames, 7))  # few values: many ties
            nearest[:, 0] = 2  # a constant column: undefined
            expected = [kendalltau(np.arange(num_frames), column).statistic for column in nearest.T]
            np.testing.assert_allclose(metrics._tau_b_against_frame_order(nearest), expected, atol=1e-12)
            assert np.isnan(metrics._tau_b_against_frame_order(nearest)[0])


def test_tau_of_aligned_videos_is_one():
    first = circle_video(np.arange(12) / 12)
    resampled = circle_video((np.arange(12) + 0.3) / 12)  # the same motion sampled at other instants
    assert kendalls_tau([first, resampled]) == pytest.approx(1.0, abs=1e-12)


def test_tau_of_reversed_video_is_minus_one():
    forward = circle_video(np.arange(10) / 10)
    assert kendalls_tau([forward, forward[::-1]]) == pytest.approx(-1.0, abs=1e-12)


def test_tau_drops_nan_pairs_of_constant_video():
    first = circle_video(np.arange(12) / 12)
    resampled = circle_video((np.arange(12) + 0.3) / 12)
    constant = np.repeat(first[5:6], 9, axis=0)  # every match to or from it is constant: tau undefined
    assert kendalls_tau([first, constant, resampled]) == pytest.approx(1.0, abs=1e-12)
    assert reference_tau([first, constant, resampled], 1) == pytest.approx(1.0, abs=1e-12)
    assert kendalls_tau([first, constant]) is None


def test_tau_matches_repeated_frames_to_the_first_despite_rounding():
    rng = np.random.default_rng(25)
    queries = rng.normal(size=(68, 103))
    repeated = np.repeat(rng.normal(size=(1, 103)), 77, axis=0)
    # Exact ties: every query matches frame 0 of the repeated video, so both directions are constant -> NaN.
    # (With this shape, BLAS rounding makes the matrix-product distances to the copies differ slightly.)
    assert reference_tau([queries, repeated], 1) is None
    assert kendalls_tau([queries, repeated]) is None


def test_tau_needs_two_videos_with_labelled_frames():
    embs, labels = make_videos(5, num_videos=2)
    assert kendalls_tau(embs[:1]) is None
    assert kendalls_tau(embs, val_labels=[labels[0], np.full_like(labels[1], -1)]) is None


# ---------------------------------------------------------------- retrieval (AP@K)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("seed", [0, 1])
def test_retrieval_equals_reference(seed, stride):
    embs, labels = make_videos(seed)
    got = retrieval_precision(embs, labels, ks=(1, 5, 10), stride=stride)
    expected = reference_retrieval(embs, labels, ks=(1, 5, 10), stride=stride)
    assert got == pytest.approx(expected, abs=1e-9)


def test_retrieval_equals_reference_with_tiny_blocks(monkeypatch):
    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", 5)
    embs, labels = make_videos(6)
    assert retrieval_precision(embs, labels, ks=(3, 7)) == pytest.approx(
        reference_retrieval(embs, labels, (3, 7), 1), abs=1e-9
    )


def test_retrieval_on_two_clusters_is_hand_computed():
    cluster_a, cluster_b = [1.0, 0.0], [0.0, 1.0]
    embs = [
        np.array([cluster_a, cluster_a, cluster_b]),
        np.array([cluster_a, cluster_b, cluster_b]),
        np.array([cluster_a, cluster_a, cluster_a, cluster_b]),
    ]
    labels = [np.array([0, 0, 1]), np.array([0, 1, 1]), np.array([0, 0, 0, 1])]
    # K=3: video 0 -> 1; video 1 -> (1 + 2/3 + 2/3) / 3; video 2 -> 1.
    # K=5: video 0 -> (4/5 + 4/5 + 3/5) / 3; video 1 -> (1 + 2/5 + 2/5) / 3; video 2 -> 3/5.
    # K=10 is capped at the 7, 7 and 6 candidates: (11/21 + 9/21 + 1/2) / 3.
    got = retrieval_precision(embs, labels, ks=(3, 5, 10))
    assert got == pytest.approx({3: 25 / 27, 5: 29 / 45, 10: 61 / 126}, abs=1e-12)


def test_retrieval_needs_two_videos():
    embs, labels = make_videos(7, num_videos=1)
    assert retrieval_precision(embs, labels, ks=(5, 10)) == {5: None, 10: None}


# ---------------------------------------------------------------- phase classification


def test_classification_equals_sklearn_fitted_directly():
    train_embs, train_labels = make_videos(8, num_videos=5)
    val_embs, val_labels = make_videos(9, num_videos=3)
    val_x, val_y = stack_labelled(val_embs, val_labels)
    got = classification_accuracy(train_embs, train_labels, val_embs, val_labels, fractions=(0.1, 0.7, 1.0))
    # 5 videos: 0.1 -> max(1, int(0.5)) = 1 video, 0.7 -> int(3.5) = 3 videos, 1.0 -> 5 videos.
    for fraction, num_videos in [(0.1, 1), (0.7, 3), (1.0, 5)]:
        train_x, train_y = stack_labelled(train_embs[:num_videos], train_labels[:num_videos])
        assert len(np.unique(train_y)) > 1
        probe = LogisticRegression(max_iter=100000, solver="lbfgs").fit(train_x, train_y)
        assert got[fraction] == pytest.approx(np.mean(probe.predict(val_x) == val_y), abs=1e-12)
    assert set(got) == {0.1, 0.7, 1.0}


def test_classification_with_a_single_training_class_predicts_it():
    train_embs, train_labels = make_videos(10, num_videos=5)
    train_labels[0] = np.where(train_labels[0] >= 0, 1, -1)
    val_embs, val_labels = make_videos(11, num_videos=3)
    _, val_y = stack_labelled(val_embs, val_labels)
    got = classification_accuracy(train_embs, train_labels, val_embs, val_labels, fractions=(0.1,))
    assert got[0.1] == pytest.approx(np.mean(val_y == 1), abs=1e-12)


@pytest.mark.parametrize("fraction", [0.0, 1.5, -0.2])
def test_fraction_outside_unit_interval_raises(fraction):
    embs, labels = make_videos(12, num_videos=3)
    with pytest.raises(MVFormerError, match="fraction"):
        classification_accuracy(embs, labels, embs, labels, fractions=(fraction,))
    with pytest.raises(MVFormerError, match="fraction"):
        phase_progression(embs, labels, embs, labels, num_classes=3, fractions=(fraction,))


def test_unlabelled_frames_change_no_metric():
    train_embs, train_labels = make_videos(13, num_videos=5)
    val_embs, val_labels = make_videos(14, num_videos=4)
    assert any((lab < 0).any() for lab in val_labels) and any((lab < 0).any() for lab in train_labels)
    arguments = dict(num_classes=3, fractions=(0.4, 1.0), ks=(2, 5), stride=2)
    before = evaluate_embeddings(train_embs, train_labels, val_embs, val_labels, **arguments)

    rng = np.random.default_rng(15)

    def scramble(embs, labels, where):
        return [np.where(where(lab)[:, None], rng.normal(size=e.shape), e) for e, lab in zip(embs, labels)]

    unlabelled = lambda lab: lab < 0  # noqa: E731
    after = evaluate_embeddings(
        scramble(train_embs, train_labels, unlabelled),
        train_labels,
        scramble(val_embs, val_labels, unlabelled),
        val_labels,
        **arguments,
    )
    assert after == before
    # The same scrambling of labelled frames does change every metric, so the check above can fail.
    labelled = lambda lab: lab >= 0  # noqa: E731
    changed = evaluate_embeddings(
        scramble(train_embs, train_labels, labelled),
        train_labels,
        scramble(val_embs, val_labels, labelled),
        val_labels,
        **arguments,
    )
    for task in metrics.TASKS:
        assert changed[task] != before[task]


# ---------------------------------------------------------------- phase progression


def test_progression_targets_hand_computed():
    t = np.arange(6)
    np.testing.assert_allclose(
        progression_targets([0, 0, 1, 1, 1, 2], 3), np.stack([(t - 1) / 6, (t - 4) / 6], axis=1)
    )
    # Phase 1 missing: its boundary is the last frame labelled <= 1, i.e. the end of phase 0.
    t = np.arange(4)
    np.testing.assert_allclose(progression_targets([0, 0, 2, 2], 3), np.stack([(t - 1) / 4, (t - 1) / 4], axis=1))
    # Phase 0 missing: no frame is <= 0, so its boundary is -1.
    t = np.arange(3)
    np.testing.assert_allclose(progression_targets([1, 1, 2], 3), np.stack([(t + 1) / 3, (t - 1) / 3], axis=1))
    # Unlabelled frames do not locate a boundary but keep their place in t and L.
    t = np.arange(6)
    np.testing.assert_allclose(progression_targets([-1, 0, 0, -1, 1, 1], 2), ((t - 2) / 6)[:, None])
    assert progression_targets([0, 1], 1).shape == (2, 0)


def test_progression_of_linear_embeddings_is_one():
    rng = np.random.default_rng(16)
    _, train_labels = make_videos(17, num_videos=5, num_classes=4)
    _, val_labels = make_videos(18, num_videos=3, num_classes=4)
    mixing, offset = rng.normal(size=(3, 6)), rng.normal(size=6)

    def linear_embs(labels):
        return [progression_targets(lab, 4) @ mixing + offset for lab in labels]  # (frames, 6)

    # All training videos: within one video the targets are all affine in t, too few to identify the mixing.
    got = phase_progression(
        linear_embs(train_labels), train_labels, linear_embs(val_labels), val_labels, 4, fractions=(1.0,)
    )
    assert got[1.0] == pytest.approx(1.0, abs=1e-9)


def test_progression_equals_regressions_fitted_directly():
    train_embs, train_labels = make_videos(19, num_videos=5)
    val_embs, val_labels = make_videos(20, num_videos=3)

    def stacked(embs, labels):
        features = np.concatenate([e[lab >= 0] for e, lab in zip(embs, labels)])
        targets = np.concatenate([progression_targets(lab, 3)[lab >= 0] for lab in labels])
        return features, targets

    val_x, val_t = stacked(val_embs, val_labels)
    train_x, train_t = stacked(train_embs[:2], train_labels[:2])
    expected = np.mean([LinearRegression().fit(train_x, train_t[:, c]).score(val_x, val_t[:, c]) for c in (0, 1)])
    got = phase_progression(train_embs, train_labels, val_embs, val_labels, 3, fractions=(0.4,))
    assert got[0.4] == pytest.approx(expected, abs=1e-12)


def test_progression_without_boundaries_is_none():
    embs, labels = make_videos(21, num_videos=3, num_classes=1)
    assert phase_progression(embs, labels, embs, labels, num_classes=1) == {0.1: None, 0.5: None, 1.0: None}


# ---------------------------------------------------------------- all together


def test_evaluate_embeddings_dumps_to_json_with_string_keys():
    train_embs, train_labels = make_videos(22, num_videos=4)
    val_embs, val_labels = make_videos(23, num_videos=3)
    results = evaluate_embeddings(train_embs, train_labels, val_embs, val_labels, num_classes=3, ks=(5, 10))
    assert set(results) == {"classification", "progression", "kendalls_tau", "retrieval"}
    assert set(results["classification"]) == {"0.1", "0.5", "1.0"} == set(results["progression"])
    assert set(results["retrieval"]) == {"5", "10"}
    assert results["kendalls_tau"] == pytest.approx(reference_tau(val_embs, 1, val_labels), abs=1e-9)
    assert json.loads(json.dumps(results)) == results

    only_tau = evaluate_embeddings(train_embs, train_labels, val_embs, val_labels, 3, tasks=("kendalls_tau",))
    assert only_tau == {"kendalls_tau": results["kendalls_tau"]}
    with pytest.raises(MVFormerError, match="unknown evaluation task"):
        evaluate_embeddings(train_embs, train_labels, val_embs, val_labels, 3, tasks=("speed",))


def test_mismatched_labels_raise():
    embs, labels = make_videos(24, num_videos=2)
    with pytest.raises(MVFormerError, match="video 1"):
        retrieval_precision(embs, [labels[0], labels[1][:-1]])
    with pytest.raises(MVFormerError, match="label arrays"):
        kendalls_tau(embs, val_labels=labels[:1])
