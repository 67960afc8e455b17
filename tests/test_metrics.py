"""Protocol metrics: the vectorised forms against plain reference forms, and hand-computed cases."""

import json
import warnings

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.spatial.distance import cdist
from scipy.special import logsumexp, softmax
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
from mvformer.evaluation.probes import fit_logistic_probe


def make_videos(seed, num_videos=6, num_classes=3, dim=8, unlabelled_share=0.15):
    """Random L2-normalised embeddings with non-decreasing phase labels, every phase in every video (progression
    needs them, as published); some frames unlabelled (-1), never the last frame of a phase."""
    rng = np.random.default_rng(seed)
    class_means = rng.normal(size=(num_classes, dim))
    embs, labels = [], []
    for _ in range(num_videos):
        length = int(rng.integers(8, 20))
        video_labels = np.sort(np.concatenate([np.arange(num_classes),
                                               rng.integers(0, num_classes, size=length - num_classes)]))
        frames = class_means[video_labels] + rng.normal(size=(length, dim))  # (frames, D)
        embs.append(frames / np.linalg.norm(frames, axis=1, keepdims=True))
        last_of_phase = np.append(np.diff(video_labels) != 0, True)
        video_labels[(rng.random(length) < unlabelled_share) & ~last_of_phase] = -1
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
    """Labelled frames of all videos, rounded to float32 as the probes see them: (frames, D), (frames,)."""
    features = np.concatenate([e[lab >= 0] for e, lab in zip(embs, labels)]).astype(np.float32)
    targets = np.concatenate([lab[lab >= 0] for lab in labels])
    return features, targets


def published_progression_targets(labels, num_classes):
    """The published rule, written plainly: unlabelled frames dropped (evaluate.py keeps frame_label >= 0), then per
    phase c < C - 1 the last frame whose label equals c (np.argwhere(labels == c)[-1, 0], an IndexError when there
    is none) and (arange(L) - that frame) / L (evaluation/event_completion.py, regression_labels_for_class)."""
    kept = np.asarray(labels)[np.asarray(labels) >= 0]
    columns = []
    for phase in range(num_classes - 1):
        transition_frame = np.argwhere(kept == phase)[-1, 0]
        columns.append((np.arange(float(len(kept))) - transition_frame) / len(kept))
    return np.stack(columns, axis=1)


def softmax_regression(x, y, c):
    """Multinomial logistic regression fitted here: minimise c * sum_i cross-entropy + ||W||^2 / 2 (intercept b
    unpenalised) with L-BFGS to a tight tolerance. x (n, D), y (n,) in 0..K-1 -> W (K, D), b (K,)."""
    n, dim = x.shape
    k = int(y.max()) + 1
    onehot = np.eye(k)[y]  # (n, K)

    def objective(params):
        w, b = params[: k * dim].reshape(k, dim), params[k * dim:]
        logits = x @ w.T + b  # (n, K)
        loss = c * np.sum(logsumexp(logits, axis=1) - logits[np.arange(n), y]) + 0.5 * np.sum(w * w)
        residual = c * (softmax(logits, axis=1) - onehot)  # (n, K): d loss / d logits
        return loss, np.concatenate([(residual.T @ x + w).ravel(), residual.sum(axis=0)])

    solution = minimize(objective, np.zeros(k * (dim + 1)), jac=True, method="L-BFGS-B",
                        options={"gtol": 1e-11, "ftol": 1e-15, "maxiter": 10000}).x
    return solution[: k * dim].reshape(k, dim), solution[k * dim:]


def overlapping_classes(seed, num_classes, num_frames=40):
    """3-d features whose classes overlap, so the penalty visibly moves the fitted boundary."""
    rng = np.random.default_rng(seed)
    x = 0.5 * rng.normal(size=(num_frames, 3))
    score = x @ np.array([1.0, -2.0, 0.5]) + 0.8 + rng.normal(size=num_frames)
    return x, np.digitize(score, [0.0] if num_classes == 2 else [0.3, 1.3])


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
        assert len(np.unique(train_y)) == 3
        # scikit-learn 0.24.2 (pinned by the published code) widens float32 to float64 for lbfgs.
        probe = LogisticRegression(max_iter=100000, solver="lbfgs").fit(train_x.astype(np.float64), train_y)
        assert got[fraction] == pytest.approx(np.mean(probe.predict(val_x.astype(np.float64)) == val_y), abs=1e-12)
    assert set(got) == {0.1, 0.7, 1.0}


@pytest.mark.parametrize("num_classes", [2, 3])
def test_sklearn_fit_equals_a_softmax_fit_written_here(num_classes):
    """Two classes: a softmax with penalty C is a sigmoid with 2C (d = w1 - w0, db = b1 - b0); with C the sigmoid
    is visibly different. Three classes: sklearn's multinomial with C is the softmax (W, b up to a common shift)."""
    x, y = overlapping_classes(26, num_classes)
    w, b = softmax_regression(x, y, c=1.0)
    if num_classes == 2:
        sigmoid = LogisticRegression(C=2.0, tol=1e-12, max_iter=10000).fit(x, y)
        np.testing.assert_allclose(sigmoid.coef_[0], w[1] - w[0], atol=1e-6)
        assert sigmoid.intercept_[0] == pytest.approx(b[1] - b[0], abs=1e-6)
        same_c = LogisticRegression(C=1.0, tol=1e-12, max_iter=10000).fit(x, y)
        assert np.abs(same_c.coef_[0] - (w[1] - w[0])).max() > 0.1
        softmax_decision = x @ (w[1] - w[0]) + b[1] - b[0]  # (n,): > 0 -> class 1
    else:
        multinomial = LogisticRegression(C=1.0, tol=1e-12, max_iter=10000).fit(x, y)
        np.testing.assert_allclose(multinomial.coef_, w, atol=1e-6)
        np.testing.assert_allclose(multinomial.intercept_ - multinomial.intercept_.mean(), b - b.mean(), atol=1e-6)
        softmax_decision = x @ w.T + b - (b.mean() - multinomial.intercept_.mean())  # (n, K)
    # The probe as shipped (default tolerance) lands on the softmax's decision function.
    np.testing.assert_allclose(fit_logistic_probe(x, y).decision_function(x), softmax_decision, atol=2e-3)


def test_two_phase_classification_predicts_as_the_softmax():
    """Validation frames between the softmax's boundary and the C = 1 sigmoid's: labelled as the softmax predicts
    them, the published probe scores 1 and a sigmoid with the same C would score 0."""
    x, y = overlapping_classes(26, 2)
    w, b = softmax_regression(x, y, c=1.0)
    direction, offset = w[1] - w[0], b[1] - b[0]
    unit = direction / np.linalg.norm(direction)
    same_c = LogisticRegression(C=1.0, tol=1e-12, max_iter=10000).fit(x, y)
    softmax_root = -offset / np.linalg.norm(direction)  # x = s * unit on the softmax's boundary
    same_c_root = -same_c.intercept_[0] / (same_c.coef_[0] @ unit)
    between = np.linspace(softmax_root, same_c_root, 7)[2:-2, None] * unit  # (3, 3)
    between_labels = (between @ direction + offset > 0).astype(int)
    assert (same_c.predict(between) != between_labels).all()
    got = classification_accuracy([x[:20], x[20:]], [y[:20], y[20:]], [between], [between_labels], fractions=(1.0,))
    assert got == {1.0: 1.0}


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
    # Unlabelled frames are dropped and the rest re-indexed: [0, 0, 1, 1], L = 4, phase 0 ends at index 1.
    np.testing.assert_allclose(
        progression_targets([-1, 0, 0, -1, 1, 1], 2), [[np.nan], [-1 / 4], [0], [np.nan], [1 / 4], [2 / 4]]
    )
    # The boundary is the last frame whose label equals c: phase 1 ends at index 2, not at 3 (label 0 <= 1).
    np.testing.assert_allclose(
        progression_targets([0, 1, 1, 0, 2], 3),
        [[-3 / 5, -2 / 5], [-2 / 5, -1 / 5], [-1 / 5, 0], [0, 1 / 5], [1 / 5, 2 / 5]],
    )
    # A video without labelled frames has no targets; a phase without frames cannot end (published: IndexError).
    assert np.isnan(progression_targets([-1, -1], 3)).all() and progression_targets([-1, -1], 3).shape == (2, 2)
    with pytest.raises(MVFormerError, match="val video 4: no frame of phase 1"):
        progression_targets([0, 0, -1, 2, 2], 3, video="val video 4")
    with pytest.raises(MVFormerError, match="no frame of phase 0"):
        progression_targets([1, 1, 2], 3)
    assert progression_targets([0, 1], 1).shape == (2, 0)
    np.testing.assert_allclose(progression_targets([0, 0, -1, 0], 2), [[-2 / 3], [-1 / 3], [np.nan], [0]])


def test_progression_targets_equal_the_published_rule():
    labels = make_videos(27, num_videos=8, num_classes=4)[1]
    assert any((lab < 0).any() for lab in labels)
    for video_labels in labels:
        targets = progression_targets(video_labels, 4)  # (frames, 3)
        assert np.isnan(targets[video_labels < 0]).all()
        np.testing.assert_array_equal(targets[video_labels >= 0], published_progression_targets(video_labels, 4))


def test_progression_of_linear_embeddings_is_one():
    rng = np.random.default_rng(16)
    _, train_labels = make_videos(17, num_videos=5, num_classes=4)
    _, val_labels = make_videos(18, num_videos=3, num_classes=4)
    mixing, offset = rng.normal(size=(3, 6)), rng.normal(size=6)

    def linear_embs(labels):  # unlabelled frames (NaN targets) get zeros: they are never looked at
        return [np.nan_to_num(progression_targets(lab, 4)) @ mixing + offset for lab in labels]  # (frames, 6)

    # All training videos: within one video the targets are all affine in t, too few to identify the mixing.
    got = phase_progression(
        linear_embs(train_labels), train_labels, linear_embs(val_labels), val_labels, 4, fractions=(1.0,)
    )
    assert got[1.0] == pytest.approx(1.0, abs=1e-5)  # fitted in float32, as published


def test_progression_equals_regressions_fitted_directly():
    train_embs, train_labels = make_videos(19, num_videos=5)
    val_embs, val_labels = make_videos(20, num_videos=3)

    assert any((lab < 0).any() for lab in train_labels[:2] + val_labels)

    def stacked(embs, labels):  # float32 embeddings, as published (LinearRegression then fits in float32)
        features = np.concatenate([e[lab >= 0] for e, lab in zip(embs, labels)]).astype(np.float32)
        targets = np.concatenate([published_progression_targets(lab, 3) for lab in labels])
        return features, targets

    val_x, val_t = stacked(val_embs, val_labels)
    train_x, train_t = stacked(train_embs[:2], train_labels[:2])
    expected = np.mean([LinearRegression().fit(train_x, train_t[:, c]).score(val_x, val_t[:, c]) for c in (0, 1)])
    got = phase_progression(train_embs, train_labels, val_embs, val_labels, 3, fractions=(0.4,))
    assert got[0.4] == pytest.approx(expected, abs=1e-12)
    float64_fit = np.mean([LinearRegression().fit(train_x.astype(np.float64), train_t[:, c])
                           .score(val_x.astype(np.float64), val_t[:, c]) for c in (0, 1)])
    assert got[0.4] != float64_fit  # the precision is visible, so the check above can fail


def test_progression_refuses_a_video_missing_a_phase():
    embs, labels = make_videos(28, num_videos=3)
    labels[1] = np.where(labels[1] == 1, -1, labels[1])
    with pytest.raises(MVFormerError, match="train video 1: no frame of phase 1"):
        phase_progression(embs, labels, embs[:1], labels[:1], num_classes=3, fractions=(1.0,))
    labels[1] = np.full_like(labels[1], -1)  # no labelled frame at all: the video is left out, as everywhere
    kept = [embs[0], embs[2]], [labels[0], labels[2]]
    assert phase_progression(embs, labels, embs, labels, num_classes=3, fractions=(1.0,)) == phase_progression(
        *kept, *kept, num_classes=3, fractions=(1.0,))


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
