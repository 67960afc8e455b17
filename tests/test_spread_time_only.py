"""Collapse and degeneracy statistics of frame embeddings, and the time-only row: embeddings from relative time
alone through the model's sinusoidal code, scored like a model's."""

import json

import numpy as np
import pytest
from scipy.stats import entropy

from mvformer.config import load_config
from mvformer.evaluation import spread as spread_module
from mvformer.evaluation.alignment import cost_matrix
from mvformer.evaluation.metrics import evaluate_embeddings
from mvformer.evaluation.spread import embedding_spread, health_record, shown_value, unreliable_metrics, warning_line
from mvformer.evaluation.time_only import (
    TIME_ONLY_MARGIN,
    largest_gain,
    model_time_only_embeddings,
    no_gain_line,
    time_only_embeddings,
    time_only_files,
    time_only_metrics,
)
from mvformer.model.mvformer import build_model

# --- spread -------------------------------------------------------------------------------------------------------


def test_spread_of_a_plus_shaped_cloud_by_hand():
    frames = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]]) + [3.0, 4.0]  # mean (3, 4), norm 5
    result = embedding_spread([frames[:1], frames[1:]])  # per-video arrays are pooled
    np.testing.assert_allclose(result.dimension_std, [np.sqrt(0.5), np.sqrt(2.0)])
    # RMS distance to the mean: sqrt((1 + 1 + 4 + 4) / 4); RMS norm: sqrt(25 + 10 / 4)
    assert result.relative_spread == pytest.approx(np.sqrt(2.5) / np.sqrt(27.5))
    # singular values of the centred frames sqrt(2) and sqrt(8): p = (1/3, 2/3)
    assert result.effective_rank == pytest.approx(np.exp(-(np.log(1 / 3) / 3 + 2 * np.log(2 / 3) / 3)))
    assert result.effective_rank == pytest.approx(1.8899, abs=1e-4)
    assert result.collapsed and "effective rank 1.89" in result.reason  # fewer than two effective directions


def test_effective_rank_agrees_with_scipy_entropy_of_singular_values():
    frames = np.random.default_rng(0).normal(size=(200, 16)) * np.linspace(0.1, 2.0, 16)
    singular = np.linalg.svd(frames - frames.mean(axis=0), compute_uv=False)
    result = embedding_spread(frames)
    assert result.effective_rank == pytest.approx(np.exp(entropy(singular)))
    np.testing.assert_allclose(result.dimension_std, frames.std(axis=0))
    assert not result.collapsed and result.reason is None and warning_line(result) is None


def test_constant_and_nearly_constant_embeddings_collapse():
    constant = embedding_spread(np.tile([0.6, 0.8, 0.0], (50, 1)))
    assert constant.collapsed and constant.relative_spread < 1e-15 and constant.effective_rank == 0
    rng = np.random.default_rng(1)
    nearly = np.tile([0.6, 0.8, 0.0], (50, 1)) + rng.normal(scale=1e-4, size=(50, 3))  # isotropic noise: rank ~3
    result = embedding_spread(nearly)
    assert result.collapsed and result.effective_rank > 2 and "nearly alike" in result.reason
    line = warning_line(result, unreliable_metrics({"progression": {"1.0": -15993.68}, "kendalls_tau": None}))
    assert line.count("\n") == 0 and line.startswith("warning: the embeddings collapsed")
    assert ("progression@1.0 cannot be read as a score (R^2 -15993.68 is far below 0: worse than predicting the mean); "
            "kendalls_tau cannot be read as a score (undefined: every pair of videos gives") in line
    assert embedding_spread(np.zeros((5, 4))).relative_spread == 0  # no norm at all: no division by zero


def test_meaningless_metrics_are_marked_and_recorded():
    metrics = {"classification": {"1.0": 0.25}, "progression": {"0.1": -15993.68, "1.0": -0.4},
               "kendalls_tau": None, "retrieval": {"5": None, "10": 0.3}}
    marks = unreliable_metrics(metrics)
    assert set(marks) == {"progression@0.1", "kendalls_tau", "retrieval@5"}
    assert "-15993.68 is far below 0" in marks["progression@0.1"]
    assert unreliable_metrics({"progression": {"1.0": spread_module.R2_FLOOR}, "kendalls_tau": 0.1}) == {}
    record = health_record(metrics, embedding_spread(np.ones((4, 3))))
    assert record["collapsed"] is True and record["unreliable"] == marks
    assert json.loads(json.dumps(record))["spread"]["frames"] == 4
    assert shown_value(-15993.68, "progression@0.1", marks) == "-15993.6800 (meaningless)"
    assert shown_value(None, "kendalls_tau", marks) == "n/a"
    assert shown_value(-0.4, "progression@1.0", marks) == "-0.4000"


# --- time only ----------------------------------------------------------------------------------------------------


def plain_code(length, dim, train_len):
    """The sinusoidal code written out: position p_t = t (train_len - 1) / (L - 1); channel c is sin (c even) or
    cos (c odd) of p / 10000^(c / dim); each row scaled to unit length."""
    rows = []
    for t in range(length):
        position = t * (train_len - 1) / (length - 1)
        row = [np.sin(position / 10000 ** (c / dim)) if c % 2 == 0 else np.cos(position / 10000 ** (c / dim))
               for c in range(dim)]
        rows.append(np.array(row) / np.linalg.norm(row))
    return np.array(rows)


def test_time_only_embeddings_are_the_normalised_sinusoidal_code_of_relative_time():
    embeddings = time_only_embeddings([7, 30], dim=12, train_len=20)
    assert [e.shape for e in embeddings] == [(7, 12), (30, 12)] and embeddings[0].dtype == np.float32
    np.testing.assert_allclose(embeddings[0], plain_code(7, 12, 20), atol=1e-6)
    np.testing.assert_allclose(embeddings[1], plain_code(30, 12, 20), atol=1e-6)
    # Frames of two videos match by relative time: each frame's nearest neighbour is the nearest t / (L - 1).
    a, b = time_only_embeddings([20, 33], dim=64, train_len=80)
    nearest = cost_matrix(a, b).argmin(axis=1)
    np.testing.assert_array_equal(nearest, np.rint(np.arange(20) * 32 / 19))


def test_a_models_time_only_code_uses_its_hidden_size_and_training_length():
    config = load_config("demo", ["data.clip_len=24", "model.hidden_size=48"])
    model = build_model(config)
    for own, generic in zip(model_time_only_embeddings(model, [10, 17]),
                            time_only_embeddings([10, 17], dim=48, train_len=24)):
        np.testing.assert_array_equal(own, generic)


def test_time_only_metrics_score_relative_time_like_a_model():
    lengths = [12, 20, 16, 30, 24]
    # Phases at fixed relative times t / (L - 1): time alone classifies them all and aligns every pair in order
    # (tau below 1 only through ties: the shorter video's frames are matched more than once).
    labels = [np.minimum(np.arange(n) * 3 // (n - 1), 2) for n in lengths]
    scores = time_only_metrics(labels[:3], labels[3:], 3, dim=32, train_len=40, fractions=(1.0,), ks=(5,))
    embs = time_only_embeddings(lengths, 32, 40)
    assert scores == evaluate_embeddings(embs[:3], labels[:3], embs[3:], labels[3:], num_classes=3, fractions=(1.0,),
                                         ks=(5,))
    assert scores["classification"]["1.0"] == 1.0 and scores["kendalls_tau"] > 0.99
    assert scores["progression"]["1.0"] > 0.99
    # Phases that do not follow time (reversed in half the videos): time alone gets them half right.
    flipped = [labels[i][::-1] if i % 2 else labels[i] for i in range(len(lengths))]
    mixed = time_only_metrics(flipped[:3], flipped[3:], 3, dim=32, train_len=40, fractions=(1.0,), ks=(5,),
                              tasks=("classification",))
    assert mixed["classification"]["1.0"] < 0.7


def test_a_model_no_better_than_time_alone_is_named_in_one_line():
    time_only = {"classification": {"0.1": 0.60, "1.0": 0.66}, "kendalls_tau": 0.99, "retrieval": {"5": 0.59}}
    model = {"classification": {"0.1": 0.61, "1.0": 0.668}, "kendalls_tau": None, "retrieval": {"5": 0.594}}
    assert largest_gain(model, time_only) == pytest.approx(0.01)  # tau is undefined for the model: left out
    line = no_gain_line(model, time_only)
    assert line.count("\n") == 0 and "largest gain +0.0100" in line and f"more than {TIME_ONLY_MARGIN:g}" in line
    model["retrieval"]["5"] = 0.59 + TIME_ONLY_MARGIN + 0.001
    assert no_gain_line(model, time_only) is None
    assert largest_gain({"kendalls_tau": None}, time_only) is None and no_gain_line({}, time_only) is None


def test_time_only_row_of_embedding_files_scores_the_same_videos(tmp_path):
    rng = np.random.default_rng(4)
    expected = []
    for name, dim in (("first", 8), ("second", 16)):
        train_labels = [np.sort(rng.integers(0, 3, size=n)) for n in (14, 21, 17)]
        val_labels = [np.sort(rng.integers(0, 3, size=n)) for n in (19, 12)]
        arrays = {f"{split}_{kind}": value for split, labels in (("train", train_labels), ("val", val_labels))
                  for kind, value in (("embs", rng.normal(size=(sum(map(len, labels)), dim))),
                                      ("labels", np.concatenate(labels)), ("lens", np.array(list(map(len, labels)))))}
        np.savez(tmp_path / f"{name}.npz", **arrays)
        expected.append(time_only_metrics(train_labels, val_labels, 3, dim, 50, fractions=(0.5, 1.0), ks=(5,)))
    result = time_only_files([tmp_path / "first.npz", tmp_path / "second.npz"], train_len=50, fractions=(0.5, 1.0),
                             ks=(5,))  # each file's own embedding size
    assert result["datasets"] == {"first": expected[0], "second": expected[1]}
    first, second = expected
    assert result["mean"]["kendalls_tau"] == pytest.approx((first["kendalls_tau"] + second["kendalls_tau"]) / 2)
    assert result["mean"]["classification"]["1.0"] == pytest.approx(
        (first["classification"]["1.0"] + second["classification"]["1.0"]) / 2)
