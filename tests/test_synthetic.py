"""The pouring demo dataset: layout, determinism, label structure, and that its phases need vision, not time."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import snapshot
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from mvformer.data import synthetic
from mvformer.data.datasets import VideoDataset
from mvformer.data.synthetic import generate_pouring_dataset, phase_names
from mvformer.data.video import read_video
from mvformer.errors import MVFormerError

NUM_TRAIN, NUM_VAL = 28, 12


@pytest.fixture(scope="module")
def pouring_root(tmp_path_factory) -> Path:
    return generate_pouring_dataset(tmp_path_factory.mktemp("pouring"), num_train=NUM_TRAIN, num_val=NUM_VAL)


@pytest.fixture(scope="module")
def splits(pouring_root) -> dict[str, VideoDataset]:
    return {split: VideoDataset(pouring_root, split, preload=True) for split in ("train", "val")}


def relative_times(dataset: VideoDataset) -> np.ndarray:
    """t / L of every frame of every video, (N, 1)."""
    return np.concatenate([np.arange(r.num_frames) / r.num_frames for r in dataset.records])[:, None]


def all_labels(dataset: VideoDataset) -> np.ndarray:
    return np.concatenate([r.labels for r in dataset.records])  # (N,)


def all_frames(dataset: VideoDataset) -> np.ndarray:
    return np.concatenate([dataset.frames(i) for i in range(len(dataset))])  # (N, H, W, 3)


def test_layout_is_readable_by_video_dataset(splits):
    train, val = splits["train"], splits["val"]
    assert (len(train), len(val)) == (NUM_TRAIN, NUM_VAL)
    assert train.classes == list(phase_names) == ["approach", "tilt", "pour", "return"] and train.num_classes == 4
    for dataset in (train, val):
        for i, record in enumerate(dataset.records):
            assert 48 <= record.num_frames <= 96 and len(record.labels) == record.num_frames
            assert dataset.frames(i).shape == (record.num_frames, 64, 64, 3)


def test_labels_are_non_decreasing_with_every_phase(splits):
    for dataset in splits.values():
        for record in dataset.records:
            assert np.all(np.diff(record.labels) >= 0), record.name
            assert set(record.labels.tolist()) == {0, 1, 2, 3}, record.name


def test_same_seed_same_dataset(tmp_path):
    kwargs = dict(num_train=2, num_val=1, size=32, min_frames=20, max_frames=30, seed=7)
    first = generate_pouring_dataset(tmp_path / "first", **kwargs)
    second = generate_pouring_dataset(tmp_path / "second", **kwargs)
    other = generate_pouring_dataset(tmp_path / "other", **{**kwargs, "seed": 8})
    for relative in ("classes.txt", "splits/train.txt", "splits/val.txt"):
        assert (first / relative).read_bytes() == (second / relative).read_bytes()
    labels = sorted(p.name for p in (first / "labels").iterdir())
    assert labels == ["pour_000.csv", "pour_001.csv", "pour_002.csv"]
    for name in labels:
        assert (first / "labels" / name).read_bytes() == (second / "labels" / name).read_bytes()
        video = Path("videos") / name.replace(".csv", ".mp4")
        assert np.array_equal(read_video(first / video), read_video(second / video))
    first_video = read_video(first / "videos" / "pour_000.mp4")
    assert first_video.shape[1:] == (32, 32, 3)
    assert not np.array_equal(first_video, read_video(other / "videos" / "pour_000.mp4"))


def test_relative_time_is_a_weak_cue(splits):
    """Relative time t/L predicts the phase of other videos' frames for at most ~half of them."""
    train, val = splits["train"], splits["val"]
    for classifier in (LogisticRegression(), DecisionTreeClassifier(max_depth=3, random_state=0)):
        classifier.fit(relative_times(train), all_labels(train))
        assert classifier.score(relative_times(val), all_labels(val)) < 0.6, type(classifier).__name__


def yellow_pixels_in_lower_half(frames: np.ndarray) -> np.ndarray:
    """Per frame, how many pixels of the lower half (where the cup stands) show the bright yellow liquid."""
    rgb = frames[:, frames.shape[1] // 2 :].astype(np.int16)  # (N, H/2, W, 3)
    yellow = (rgb[..., 0] > 150) & (rgb[..., 1] > 130) & (rgb[..., 0] - rgb[..., 2] > 100)
    return yellow.sum(axis=(1, 2))  # (N,)


def test_phases_are_visually_distinct(splits):
    val = splits["val"]
    liquid, labels = yellow_pixels_in_lower_half(all_frames(val)), all_labels(val)
    empty_cup = max(liquid[labels == 0].mean(), liquid[labels == 1].mean())
    assert empty_cup < 5
    assert liquid[labels == 2].mean() > empty_cup + 20  # stream and rising liquid
    assert liquid[labels == 3].mean() > liquid[labels == 2].mean()  # full cup


def test_raw_pixels_beat_relative_time(splits):
    """A frozen random projection of raw pixels plus logistic regression beats the relative-time classifier."""
    train, val = splits["train"], splits["val"]
    num_pixels = 32 * 32 * 3  # every second row and column
    projection = np.random.default_rng(0).normal(size=(num_pixels, 1024)).astype(np.float32) / np.sqrt(num_pixels)

    def features(dataset: VideoDataset) -> np.ndarray:
        pixels = all_frames(dataset)[:, ::2, ::2].reshape(-1, num_pixels)  # (N, 3072)
        return np.maximum(pixels.astype(np.float32) / 255 @ projection, 0.0)  # (N, 1024) random ReLU features

    scaler = StandardScaler().fit(features(train))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pixel_classifier = LogisticRegression(max_iter=200).fit(scaler.transform(features(train)), all_labels(train))
    pixel_accuracy = pixel_classifier.score(scaler.transform(features(val)), all_labels(val))
    time_classifier = LogisticRegression().fit(relative_times(train), all_labels(train))
    time_accuracy = time_classifier.score(relative_times(val), all_labels(val))
    assert pixel_accuracy > time_accuracy + 0.05, (pixel_accuracy, time_accuracy)


@pytest.mark.parametrize(
    "kwargs", [dict(min_frames=3), dict(min_frames=50, max_frames=40), dict(size=33), dict(num_val=0)]
)
def test_bad_arguments_raise(tmp_path, kwargs):
    with pytest.raises(MVFormerError, match="pouring dataset"):
        generate_pouring_dataset(tmp_path, **kwargs)


def test_an_existing_dataset_is_replaced_only_with_overwrite_and_whole(tmp_path, monkeypatch):
    """Without overwrite a non-empty folder is refused; with it the new dataset is built beside the old one and
    swapped in at the end, so a failure half-way leaves the old dataset exactly as it was and no temporary folder."""
    small = {"num_val": 1, "size": 16, "min_frames": 12, "max_frames": 12}
    root = generate_pouring_dataset(tmp_path / "data", num_train=1, **small)
    before = snapshot([root])
    with pytest.raises(MVFormerError, match="data: already exists; pass --overwrite"):
        generate_pouring_dataset(root, num_train=2, **small)

    written = []

    def write_then_fail(path, frames, fps):
        if written:
            raise MVFormerError(f"{path}: disk on fire")
        written.append(path)

    monkeypatch.setattr(synthetic, "write_video", write_then_fail)
    with pytest.raises(MVFormerError, match="disk on fire"):
        generate_pouring_dataset(root, num_train=3, overwrite=True, **small)
    assert snapshot([root]) == before and [path.name for path in tmp_path.iterdir()] == ["data"]
    assert written and written[0].parent.parent != root  # the new videos went to a temporary folder

    monkeypatch.undo()
    generate_pouring_dataset(root, num_train=2, overwrite=True, **small)
    assert (root / "splits" / "train.txt").read_text() == "pour_000\npour_001\n"
    assert [path.name for path in tmp_path.iterdir()] == ["data"]
    (root / "notes.txt").write_text("mine")
    with pytest.raises(MVFormerError, match="holds notes.txt, which is not part of a dataset"):
        generate_pouring_dataset(root, num_train=1, overwrite=True, **small)
