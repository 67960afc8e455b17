"""Decoding (files and frame folders), encoding, and the generic dataset layout with its validation errors."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvformer.config import EvalConfig, load_config
from mvformer.data.datasets import VideoDataset, VideoRecord, check_label_pair, inside_root, relative_inside
from mvformer.data.video import count_frames, index_video, read_video, write_video
from mvformer.errors import MVFormerError
from mvformer.evaluation.embed import EvaluationSet, check_scorable
from mvformer.runs import read_log
from mvformer.train.loop import train

PUSHUPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pushups"


def smooth_frames(num_frames: int = 12, height: int = 48, width: int = 64) -> np.ndarray:
    """Smooth moving colour gradients, uint8 (T, H, W, 3), each frame distinct."""
    t = np.arange(num_frames)[:, None, None]
    y, x = np.mgrid[0:height, 0:width]
    red = 40 + 2.5 * x[None] + 6 * t
    green = 30 + 3 * y[None] + 0 * t
    blue = 200 - 2 * x[None] - 5 * t
    return np.clip(np.stack([red, green, blue], axis=-1), 0, 255).astype(np.uint8)


def mean_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def write_frame_folder(folder: Path, frames: np.ndarray, names: list[str]) -> None:
    folder.mkdir(parents=True)
    for frame, name in zip(frames, names):
        Image.fromarray(frame).save(folder / name, quality=95)


@pytest.fixture
def video(tmp_path: Path) -> tuple[Path, np.ndarray]:
    frames = smooth_frames()
    path = tmp_path / "clip.mp4"
    write_video(path, frames)
    return path, frames


# --- video files ---------------------------------------------------------------------------------------------


def test_roundtrip_keeps_frames_and_colours(video):
    path, frames = video
    decoded = read_video(path)
    assert decoded.dtype == np.uint8 and decoded.shape == frames.shape
    assert mean_abs_error(decoded, frames) < 8
    assert count_frames(path) == len(frames)


def test_write_leaves_only_the_final_file(video):
    path, _ = video
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_indices_pick_exactly_those_frames(video):
    path, _ = video
    full = read_video(path)
    for indices in ([0, 0, 3], [2, 5, 5, 11], np.array([11]), [0]):
        assert np.array_equal(read_video(path, indices=indices), full[np.asarray(indices)])
    assert read_video(path, indices=[]).shape == (0, *full.shape[1:])


def test_size_squashes_in_the_decoder(tmp_path):
    frames = smooth_frames(4, 64, 64)
    path = tmp_path / "square.mp4"
    write_video(path, frames)
    small = read_video(path, size=32)
    assert small.shape == (4, 32, 32, 3)
    block_means = frames.reshape(4, 32, 2, 32, 2, 3).mean(axis=(2, 4))
    assert mean_abs_error(small, block_means) < 8
    assert read_video(path, size=16, indices=[1, 3]).shape == (2, 16, 16, 3)


@pytest.mark.parametrize("indices", [[3, 12], [3, 1], [-1, 2]])
def test_bad_indices_raise(video, indices):
    path, _ = video
    with pytest.raises(MVFormerError, match="clip.mp4"):
        read_video(path, indices=indices)


def test_write_rejects_bad_frames(tmp_path):
    with pytest.raises(MVFormerError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 15, 16, 3), np.uint8))
    with pytest.raises(MVFormerError, match="uint8"):
        write_video(tmp_path / "float.mp4", np.zeros((2, 16, 16, 3), np.float32))


def test_corrupt_truncated_and_missing_files_raise(video, tmp_path):
    path, _ = video
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    truncated = tmp_path / "truncated.mp4"
    data = path.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    for bad in (corrupt, truncated, tmp_path / "missing.mp4"):
        for decode in (read_video, count_frames):
            with pytest.raises(MVFormerError, match=rf"{bad.name}: cannot decode video \(.+\)"):
                decode(bad)


# --- frame folders --------------------------------------------------------------------------------------------


def test_frame_folder_reads_in_numeric_order(tmp_path):
    frames = smooth_frames(12)
    folder = tmp_path / "frames"
    write_frame_folder(folder, frames, [f"frame_{i + 1}.jpg" for i in range(12)])  # 1, 10, 11, 12, 2, ... as text
    decoded = read_video(folder)
    assert decoded.shape == frames.shape
    assert mean_abs_error(decoded, frames) < 8
    assert count_frames(folder) == 12
    assert np.array_equal(read_video(folder, indices=[0, 0, 9]), decoded[[0, 0, 9]])
    assert read_video(folder, size=32).shape == (12, 32, 32, 3)


def test_frame_folder_gap_names_folder_and_missing_number(tmp_path):
    folder = tmp_path / "gappy"
    write_frame_folder(folder, smooth_frames(4), ["000001.jpg", "000002.jpg", "000004.jpg", "000005.jpg"])
    for decode in (read_video, count_frames):
        with pytest.raises(MVFormerError, match=r"gappy.*frame 3 is missing"):
            decode(folder)


def test_image_names_are_taken_literally_not_as_ffmpeg_patterns(tmp_path):
    """FFmpeg's image2 demuxer reads "p%d.jpg" as the sequence p1.jpg, p2.jpg, ... and "[...]" as a glob: the file
    asked for must be the file read, whatever its name."""
    shades = {"p%d.jpg": 100, "p1.jpg": 200, "p2.jpg": 30, "q[12].png": 160, "q1.png": 60, "r*.jpg": 220}
    for name, shade in shades.items():
        Image.fromarray(np.full((16, 16, 3), shade, dtype=np.uint8)).save(tmp_path / name, quality=100)
    for name, shade in shades.items():
        decoded = read_video(tmp_path / name)
        assert decoded.shape == (1, 16, 16, 3) and abs(decoded.mean() - shade) < 2, name


# --- dataset layout -------------------------------------------------------------------------------------------


def write_labels(path: Path, labels: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["frame", "label"])
        writer.writerows(enumerate(labels))


@pytest.fixture
def dataset_root(tmp_path: Path) -> Path:
    """Two train videos (an mp4 labelled by class name, a frame folder labelled by integer) and one val mp4."""
    root = tmp_path / "data"
    write_video(root / "videos" / "alpha.mp4", smooth_frames(10))
    write_frame_folder(root / "videos" / "beta", smooth_frames(6), [f"{i + 1:06d}.jpg" for i in range(6)])
    write_video(root / "videos" / "gamma.mp4", smooth_frames(8))
    (root / "classes.txt").write_text("up\ndown\n")
    write_labels(root / "labels" / "alpha.csv", ["up"] * 4 + ["down"] * 6)
    write_labels(root / "labels" / "beta.csv", [0, 0, -1, 1, 1, 1])
    write_labels(root / "labels" / "gamma.csv", ["down"] * 8)
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("alpha\nbeta\n")
    (root / "splits" / "val.txt").write_text("gamma\n")
    return root


def test_dataset_records_labels_and_frames(dataset_root):
    dataset = VideoDataset(dataset_root, "train", size=32)
    assert len(dataset) == 2 and dataset.classes == ["up", "down"] and dataset.num_classes == 2
    alpha, beta = dataset.records
    assert isinstance(alpha, VideoRecord)
    assert (alpha.name, alpha.path.name, alpha.num_frames) == ("alpha", "alpha.mp4", 10)
    assert alpha.labels.dtype == np.int64 and alpha.labels.tolist() == [0] * 4 + [1] * 6
    assert (beta.path.name, beta.num_frames, beta.labels.tolist()) == ("beta", 6, [0, 0, -1, 1, 1, 1])
    assert dataset.frames(0).shape == (10, 32, 32, 3)
    assert dataset.frames(1, indices=[1, 5]).shape == (2, 32, 32, 3)


def test_preload_serves_the_same_frames(dataset_root):
    lazy = VideoDataset(dataset_root, "train")
    preloaded = VideoDataset(dataset_root, "train", preload=True)
    assert [r.num_frames for r in preloaded.records] == [r.num_frames for r in lazy.records]
    for i in range(len(lazy)):
        assert np.array_equal(preloaded.frames(i), lazy.frames(i))
        assert np.array_equal(preloaded.frames(i, [0, 0, 3]), lazy.frames(i, [0, 0, 3]))
    with pytest.raises(MVFormerError, match="out of range"):
        preloaded.frames(1, [6])


def test_labels_are_optional(dataset_root):
    for path in (dataset_root / "labels").iterdir():
        path.unlink()
    (dataset_root / "labels").rmdir()
    (dataset_root / "classes.txt").unlink()
    dataset = VideoDataset(dataset_root, "val")
    assert dataset.records[0].labels is None and dataset.classes is None and dataset.num_classes is None


def test_integer_labels_without_classes_file(dataset_root):
    (dataset_root / "classes.txt").unlink()
    write_labels(dataset_root / "labels" / "gamma.csv", [0, 1, 2, 2, 2, 2, 2, -1])
    dataset = VideoDataset(dataset_root, "val")
    assert dataset.classes is None and dataset.num_classes == 3


def break_missing_root(root: Path) -> Path:
    return root / "nowhere"


def break_missing_split(root: Path) -> Path:
    (root / "splits" / "train.txt").unlink()
    return root


def break_empty_split(root: Path) -> Path:
    (root / "splits" / "train.txt").write_text("\n")
    return root


def break_missing_video(root: Path) -> Path:
    (root / "splits" / "train.txt").write_text("alpha\nghost\n")
    return root


def break_header(root: Path) -> Path:
    (root / "labels" / "alpha.csv").write_text("frame,phase\n" + "".join(f"{i},up\n" for i in range(10)))
    return root


def break_label_name(root: Path) -> Path:
    write_labels(root / "labels" / "alpha.csv", ["up"] * 9 + ["sideways"])
    return root


def break_row_count(root: Path) -> Path:
    write_labels(root / "labels" / "alpha.csv", ["up"] * 9)
    return root


def break_video(root: Path) -> Path:
    (root / "videos" / "alpha.mp4").write_bytes(b"not a video at all" * 100)
    return root


@pytest.mark.parametrize(
    ("break_layout", "message"),
    [
        (break_missing_root, "nowhere: dataset root does not exist"),
        (break_missing_split, "splits/train.txt does not exist"),
        (break_empty_split, "splits/train.txt is empty: it lists no videos"),
        (break_missing_video, "splits/train.txt line 2: names video 'ghost'"),
        (break_header, "labels/alpha.csv must start with the header 'frame,label'"),
        (break_label_name, "labels/alpha.csv line 11: label 'sideways' is not a name in classes.txt"),
        (break_row_count, "labels/alpha.csv has 9 rows but videos/alpha.mp4 has 10 frames"),
        (break_video, r"alpha.mp4: cannot decode video"),
    ],
)
def test_layout_problems_name_the_file(dataset_root, break_layout, message):
    root = break_layout(dataset_root)
    with pytest.raises(MVFormerError, match=message):
        VideoDataset(root, "train")


def test_brackets_in_a_video_name_are_not_a_glob(dataset_root):
    """videos/clip[1].mp4 is found for the name clip[1] (a glob would have matched clip1.mp4 and nothing else)."""
    shutil.move(dataset_root / "videos" / "gamma.mp4", dataset_root / "videos" / "clip[1].mp4")
    write_video(dataset_root / "videos" / "clip1.mp4", smooth_frames(3))
    shutil.move(dataset_root / "labels" / "gamma.csv", dataset_root / "labels" / "clip[1].csv")
    (dataset_root / "splits" / "val.txt").write_text("clip[1]\n")
    record = VideoDataset(dataset_root, "val").records[0]
    assert (record.name, record.path.name, record.num_frames) == ("clip[1]", "clip[1].mp4", 8)


def test_paths_must_resolve_inside_the_root(dataset_root, tmp_path):
    """Lexical and resolved containment: a symlinked root and links that stay inside are fine; '..', absolute
    paths, links that leave the root and link loops are refused, each naming the source and the path."""
    outside = tmp_path / "outside.mp4"
    shutil.copyfile(dataset_root / "videos" / "alpha.mp4", outside)
    assert relative_inside(dataset_root, "videos/alpha.mp4", "src", "video_file") == dataset_root / "videos/alpha.mp4"
    for relative, problem in (("../outside.mp4", "'..' climbs out"), (str(outside), "it is absolute"),
                              ("", "it is empty"), (7, "it is a int")):
        with pytest.raises(MVFormerError, match=rf"^src: video_file .* must be a path relative .*\({problem}"):
            relative_inside(dataset_root, relative, "src", "video_file")

    (dataset_root / "videos" / "inside.mp4").symlink_to(dataset_root / "videos" / "alpha.mp4")
    (dataset_root / "videos" / "escape.mp4").symlink_to(outside)
    (dataset_root / "videos" / "loop.mp4").symlink_to(dataset_root / "videos" / "loop.mp4")
    assert inside_root(dataset_root, dataset_root / "videos" / "inside.mp4", "src").name == "inside.mp4"
    with pytest.raises(MVFormerError, match=rf"^src: videos/escape.mp4 resolves to {outside}, outside the dataset"):
        relative_inside(dataset_root, "videos/escape.mp4", "src", "video_file")
    with pytest.raises(MVFormerError, match=r"^src: videos/loop.mp4 cannot be resolved"):
        inside_root(dataset_root, dataset_root / "videos" / "loop.mp4", "src")

    linked_root = tmp_path / "linked"
    linked_root.symlink_to(dataset_root)
    (dataset_root / "splits" / "val.txt").write_text("inside\n")
    write_labels(dataset_root / "labels" / "inside.csv", ["up"] * 10)
    assert VideoDataset(linked_root, "val").records[0].num_frames == 10
    (dataset_root / "splits" / "val.txt").write_text("escape\n")
    with pytest.raises(MVFormerError, match=r"splits/val.txt line 1: videos/escape.mp4 resolves to .*outside"):
        VideoDataset(linked_root, "val")


def labelled_root(root: Path, labels: dict[str, dict[str, list]]) -> Path:
    """Overwrite labels (split -> name -> labels) of the dataset_root videos and point the splits at them."""
    for split, videos in labels.items():
        (root / "splits" / f"{split}.txt").write_text("".join(f"{name}\n" for name in videos))
        for name, video_labels in videos.items():
            write_labels(root / "labels" / f"{name}.csv", video_labels)
    return root


SCORABLE = {"train": {"alpha": ["up"] * 4 + ["down"] * 6, "beta": [0, 0, -1, 1, 1, 1]}, "val": {"gamma": [0] * 8}}


PAIRWISE_SKIPPED = r"data: kendalls_tau and retrieval skipped \(n/a\): 1 validation video\(s\) with labelled frames"


@pytest.mark.parametrize(
    ("change", "fractions", "skipped"),
    [
        ({}, [1.0], []),
        ({"train": {"alpha": [-1] * 10, "beta": [0, 0, -1, 1, 1, 1]}}, [1.0], []),
        ({"train": {"alpha": ["down"] * 10, "beta": [0, 0, -1, 1, 1, 1]}}, [1.0],
         [r"data: progression skipped \(n/a\): train video 'alpha' has no frame of phase 0 \('up'\); it needs "
          r"every phase but the last \(0..0\) .*--set eval.tasks=\[classification\]"]),
    ],
)
def test_check_scorable_names_each_task_the_labels_do_not_allow(dataset_root, change, fractions, skipped):
    """The one val video makes the pairwise metrics unscorable in every case; the other lines depend on labels."""
    root = labelled_root(dataset_root, {**SCORABLE, **change})
    dataset = EvaluationSet("data", VideoDataset(root, "train"), VideoDataset(root, "val"))
    check_scorable(dataset, EvalConfig(fractions=fractions))
    assert len(dataset.notes) == len(skipped) + 1
    for line, pattern in zip(dataset.notes, [*skipped, PAIRWISE_SKIPPED]):
        assert re.search(pattern, line), line
    check_scorable(dataset, EvalConfig(fractions=[1.0], tasks=["classification"]))
    assert dataset.notes == []  # a task not asked for is never named


@pytest.mark.parametrize(("change", "message"), [
    ({"val": {"gamma": [-1] * 8}}, r"data: no labelled frame in the validation videos .*nothing to score"),
    ({"train": {"alpha": [-1] * 10, "beta": [0, 0, -1, 1, 1, 1]}},  # no probe (fraction 0.1), no pair of val videos
     r"data: none of the requested tasks can be scored \(classification: no labelled frame in the first 1 training"),
])
def test_check_scorable_refuses_a_set_with_nothing_to_score(dataset_root, change, message):
    root = labelled_root(dataset_root, {**SCORABLE, **change})
    with pytest.raises(MVFormerError, match=message):
        check_scorable(EvaluationSet("data", VideoDataset(root, "train"), VideoDataset(root, "val")),
                       EvalConfig(fractions=[0.1, 1.0]))


def test_check_scorable_without_labels_or_with_classes_train_does_not_know(dataset_root):
    (dataset_root / "classes.txt").unlink()
    root = labelled_root(dataset_root, {"train": {"alpha": [0] * 4 + [1] * 6, "beta": [0, 0, 1, 1, 1, 1]},
                                        "val": {"gamma": [0, 0, 1, 1, 2, 2, 2, 2]}})
    train_set, val_set = VideoDataset(root, "train"), VideoDataset(root, "val")
    with pytest.raises(MVFormerError, match=r"split val has label 2 but split train knows 2 classes \(0..1\)"):
        check_label_pair(train_set, val_set)
    shutil.rmtree(root / "labels")
    with pytest.raises(MVFormerError, match=r"split val has no frame labels for video 'gamma'"):
        VideoDataset(root, "val").check_labelled()


def pushups_subset(root: Path, counts: dict[str, int]) -> Path:
    """The first videos of each split of the shared pushups set, copied into a root of their own (a dataset reads
    only files inside its root, so symbolic links into the shared folder would be refused)."""
    for folder in ("splits", "videos", "labels"):
        (root / folder).mkdir(parents=True)
    shutil.copyfile(PUSHUPS / "classes.txt", root / "classes.txt")
    for split, count in counts.items():
        names = (PUSHUPS / "splits" / f"{split}.txt").read_text().split()[:count]
        (root / "splits" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for name in names:
            shutil.copyfile(PUSHUPS / "videos" / f"{name}.mp4", root / "videos" / f"{name}.mp4")
            shutil.copyfile(PUSHUPS / "labels" / f"{name}.csv", root / "labels" / f"{name}.csv")
    return root


@pytest.mark.skipif(not PUSHUPS.is_dir(), reason="shared pushups dataset not present")
def test_real_pushups_videos_match_their_labels(tmp_path):
    """A few real val videos: decoded frame counts agree with label rows and with the manifest."""
    root = pushups_subset(tmp_path / "pushups", {"val": 3})
    with (PUSHUPS / "MANIFEST.csv").open() as file:
        manifest = {row["name"]: int(row["frames"]) for row in csv.DictReader(file)}

    dataset = VideoDataset(root, "val", size=64, preload=True)
    assert dataset.classes == ["up", "down"] and len(dataset) == 3
    for i, record in enumerate(dataset.records):
        frames = dataset.frames(i)
        assert frames.shape == (record.num_frames, 64, 64, 3)
        assert len(record.labels) == record.num_frames == manifest[record.name]
        assert set(record.labels.tolist()) <= {0, 1}
    first = dataset.records[0]
    assert np.array_equal(read_video(first.path, size=64, indices=[0, 5]), dataset.frames(0, [0, 5]))


@pytest.mark.skipif(not PUSHUPS.is_dir(), reason="shared pushups dataset not present")
def test_real_pushups_are_indexed_from_packets_exactly():
    """All 196 real videos: the packet index (no decoding) gives the manifest's decoded frame counts."""
    with (PUSHUPS / "MANIFEST.csv").open() as file:
        manifest = {row["name"]: int(row["frames"]) for row in csv.DictReader(file)}
    counts = {path.stem: index_video(path).num_frames for path in sorted((PUSHUPS / "videos").glob("*.mp4"))}
    assert counts == manifest and len(counts) == 196


@pytest.mark.skipif(not PUSHUPS.is_dir(), reason="shared pushups dataset not present")
def test_a_short_self_supervised_run_on_real_pushups_finishes_and_scores(tmp_path):
    root = pushups_subset(tmp_path / "pushups", {"train": 6, "val": 4})
    config = load_config("demo", [f"data.root={root}", f"train.output_dir={tmp_path / 'run'}", "train.epochs=2",
                                  "train.batch_size=2", "data.clip_len=16", "data.preload=false"])
    result = train(config)
    metrics = result.final_metrics
    assert set(metrics) == {"classification", "progression", "kendalls_tau", "retrieval"}
    assert 0.0 <= metrics["classification"]["1.0"] <= 1.0 and -1.0 <= metrics["kendalls_tau"] <= 1.0
    assert np.isfinite([r.loss for r in read_log(result.run_dir).epochs]).all()


def test_seeking_to_the_keyframe_before_a_clip_gives_the_same_frames_as_decoding_from_the_start(tmp_path):
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, size=(60, 4, 6, 3), dtype=np.uint8)
    frames = np.repeat(np.repeat(blocks, 8, axis=1), 8, axis=2)  # (60, 32, 48, 3), each frame distinct
    path = tmp_path / "keyframes.mp4"
    write_video(path, frames, keyframe_interval=7)
    index = index_video(path)
    assert index.num_frames == 60 and len(index.keyframe_frames) >= 8  # seeking has somewhere to go
    whole = read_video(path)
    for trial in range(20):
        indices = np.sort(rng.choice(60, size=int(rng.integers(1, 10)), replace=True))
        assert np.array_equal(read_video(path, indices=indices, index=index), whole[indices]), indices
