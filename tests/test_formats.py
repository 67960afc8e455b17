"""Benchmark layouts (Penn Action, Pouring, FineGym, Kinetics-400), the restricted unpickler and `prepare`, on tiny
fixtures written here in the published layouts."""

from __future__ import annotations

import csv
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from mvformer.cli import main
from mvformer.data.datasets import VideoDataset
from mvformer.data.formats import open_dataset, penn_action, penn_action_actions
from mvformer.data.formats import prepare as prepare_module
from mvformer.data.formats.prepare import MANIFEST, prepare
from mvformer.data.formats.records import load_pickle
from mvformer.data.video import read_video, write_video
from mvformer.errors import MVFormerError

SIZE = 32


def make_frames(num_frames: int, seed: int) -> np.ndarray:
    """Distinct smooth frames, uint8 (T, SIZE, SIZE, 3)."""
    t = np.arange(num_frames)[:, None, None, None]
    y, x = np.mgrid[0:SIZE, 0:SIZE][..., None]
    base = np.array([40.0, 90.0, 160.0]) + 20 * seed
    return np.clip(base + 3 * x[None] + 2 * y[None] + 6 * t, 0, 255).astype(np.uint8)


def write_mp4(path: Path, num_frames: int, seed: int = 0) -> Path:
    write_video(path, make_frames(num_frames, seed))
    return path


def phases(num_frames: int, num_phases: int) -> np.ndarray:
    """Non-decreasing phase labels 0..num_phases-1 over the video, int64 (num_frames,)."""
    return np.arange(num_frames) * num_phases // num_frames


def carl_record(root: Path, index: int, name: str, num_frames: int, labels, folder: str = "videos", **extra) -> dict:
    """A video and its record as CARL's tfrecords_to_videos.py / finegym_process.py write them."""
    write_mp4(root / folder / f"{name}.mp4", num_frames, seed=index)
    return {"id": index, "video_file": f"{folder}/{name}.mp4", "frame_label": labels, "seq_len": num_frames,
            "name": name, **extra}


def dump(path: Path, content) -> Path:
    with open(path, "wb") as file:
        pickle.dump(content, file)
    return path


PENN_VIDEOS = {  # split -> (name, action, frames)
    "train": [("0001_pushup", "pushup", 10), ("0002_squat", "squat", 12), ("0003_pushup", "pushup", 9)],
    "val": [("0004_pushup", "pushup", 8), ("0005_squat", "squat", 11)],
}


@pytest.fixture
def penn_pickles(tmp_path: Path) -> Path:
    root = tmp_path / "penn_action"
    index = 0
    for split, videos in PENN_VIDEOS.items():
        records, action_to_indices = [], [[] for _ in penn_action.PENN_ACTIONS]
        for i, (name, action, num_frames) in enumerate(videos):
            labels = torch.from_numpy(phases(num_frames, penn_action.PENN_ACTION_PHASES[action]))
            action_label = penn_action.PENN_ACTIONS.index(action)
            records.append(carl_record(root, index, name, num_frames, labels, action_label=action_label))
            action_to_indices[action_label].append(i)
            index += 1
        dump(root / f"{split}.pkl", (records, action_to_indices))
    return root


@pytest.fixture
def pouring(tmp_path: Path) -> Path:
    root = tmp_path / "pouring"
    for split, lengths in {"train": [12, 10, 14], "val": [11]}.items():
        offset = 0 if split == "train" else 3
        records = [carl_record(root, offset + i, f"{split}_{i}", n, torch.from_numpy(phases(n, 5)))
                   for i, n in enumerate(lengths)]
        dump(root / f"{split}.pkl", records)
    return root


def write_frame_folder(folder: Path, frames: np.ndarray, first: int = 1) -> None:
    folder.mkdir(parents=True)
    for number, frame in enumerate(frames, start=first):
        Image.fromarray(frame).save(folder / f"{number:06d}.jpg", quality=95)


@pytest.fixture
def penn_official(tmp_path: Path) -> Path:
    """The official release layout plus flat phase labels: 0001 pushup (train), 0002 squat (test = val),
    0003 jump_rope (no phases published), 0004 pushup (train, its phase file is missing)."""
    root = tmp_path / "Penn_Action"
    videos = {"0001": ("pushup", 1, 8), "0002": ("squat", -1, 10), "0003": ("jump_rope", 1, 6),
              "0004": ("pushup", 1, 7)}
    (root / "labels").mkdir(parents=True)
    (root / "phases").mkdir()
    for i, (video_id, (action, train, num_frames)) in enumerate(videos.items()):
        write_frame_folder(root / "frames" / video_id, make_frames(num_frames, i))
        scipy.io.savemat(root / "labels" / f"{video_id}.mat", {
            "action": action, "pose": "front", "train": train, "nframes": num_frames,
            "x": np.zeros((num_frames, 13)), "dimensions": np.array([SIZE, SIZE, num_frames])})
        if action in penn_action.PENN_ACTION_PHASES and video_id != "0004":
            np.save(root / "phases" / f"{video_id}.npy", phases(num_frames, penn_action.PENN_ACTION_PHASES[action]))
    return root


def finegym_labels(num_frames: int, classes: list[int]) -> torch.Tensor:
    """Float labels as finegym_process.py writes them: -1 outside sub-actions, a class index inside."""
    labels = -1 * torch.ones(num_frames)
    for k, label in enumerate(classes):
        labels[2 + 4 * k: 5 + 4 * k] = label
    return labels


@pytest.fixture
def finegym(tmp_path: Path) -> Path:
    root = tmp_path / "finegym"
    videos = {"train": [("vidA_E_000010_000020", 12, [3, 98]), ("vidB_E_000100_000112", 10, [40])],
              "val": [("vidC_E_000005_000015", 11, [7])]}
    index = 0
    for split, items in videos.items():
        records = []
        for name, num_frames, classes in items:
            records.append(carl_record(root, index, name, num_frames, finegym_labels(num_frames, classes),
                                       folder="processed_videos", event_label=1))
            index += 1
        for subset, file_name in (("99", f"gym99_{split}"), ("288", f"gym288_{split}")):
            shifted = [dict(r, frame_label=torch.where(r["frame_label"] >= 0, r["frame_label"] + 100,
                                                       r["frame_label"])) for r in records]
            dump(root / f"{file_name}{'_v1.0' if split == 'train' else ''}.pkl", records if subset == "99" else shifted)
    return root


# --- reading each layout ---------------------------------------------------------------------------------------


def test_penn_action_pickles_per_action_and_pooled(penn_pickles):
    pushup = open_dataset(penn_pickles, "train", "penn_action", subset="pushup")
    assert [r.name for r in pushup.records] == ["0001_pushup", "0003_pushup"]
    assert [r.num_frames for r in pushup.records] == [10, 9]
    np.testing.assert_array_equal(pushup.records[0].labels, [0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    assert pushup.records[0].labels.dtype == np.int64 and pushup.num_classes == 2
    assert pushup.frames(0).shape == (10, SIZE, SIZE, 3)
    squat = open_dataset(penn_pickles, "val", "penn_action", subset="squat", size=16)
    assert [r.name for r in squat.records] == ["0005_squat"] and squat.num_classes == 4
    assert squat.frames(0, [0, 5]).shape == (2, 16, 16, 3)
    pooled = open_dataset(penn_pickles, "train", "penn_action")
    assert sorted(r.name for r in pooled.records) == ["0001_pushup", "0002_squat", "0003_pushup"]
    assert penn_action_actions(penn_pickles) == ["pushup", "squat"]  # the published action order


def test_penn_action_unknown_action(penn_pickles):
    with pytest.raises(MVFormerError, match="no subset 'push_up'.*baseball_pitch"):
        open_dataset(penn_pickles, "train", "penn_action", subset="push_up")


def test_penn_action_official_release(penn_official):
    train = open_dataset(penn_official, "train", "penn_action")
    assert [r.name for r in train.records] == ["0001_pushup"]  # jump_rope left out, 0004 has no phase labels
    assert train.records[0].path == penn_official / "frames" / "0001" and train.records[0].num_frames == 8
    np.testing.assert_array_equal(train.records[0].labels, phases(8, 2))
    assert [(path.name, "no phase labels" in reason) for path, reason in train.skipped] == [("0004", True)]
    assert np.abs(train.frames(0).astype(int) - make_frames(8, 0)).mean() < 6  # JPEG round trip
    val = open_dataset(penn_official, "val", "penn_action", subset="squat")
    assert [r.name for r in val.records] == ["0002_squat"] and val.num_classes == 4


def test_penn_action_official_split_from_label_folders(penn_official):
    """With CARL's label download, phases/{train,val}/ACTION/NNNN.npy decides the split, not the .mat flag."""
    (penn_official / "phases" / "val" / "pushup").mkdir(parents=True)
    os.replace(penn_official / "phases" / "0001.npy", penn_official / "phases" / "val" / "pushup" / "0001.npy")
    val = open_dataset(penn_official, "val", "penn_action")
    assert sorted(r.name for r in val.records) == ["0001_pushup", "0002_squat"]


def test_pouring(pouring):
    train = open_dataset(pouring, "train", "pouring")
    assert [r.name for r in train.records] == ["train_0", "train_1", "train_2"]
    assert [r.num_frames for r in train.records] == [12, 10, 14] and train.num_classes == 5
    np.testing.assert_array_equal(train.records[1].labels, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    assert np.abs(train.frames(1).astype(int) - make_frames(10, 1)).mean() < 6


def test_finegym_99_and_288(finegym):
    gym99 = open_dataset(finegym, "train", "finegym", subset="99")
    assert gym99.num_classes == 99 and [r.num_frames for r in gym99.records] == [12, 10]
    np.testing.assert_array_equal(gym99.records[0].labels, [-1, -1, 3, 3, 3, -1, 98, 98, 98, -1, -1, -1])
    gym288 = open_dataset(finegym, "val", "finegym", subset=288)
    assert gym288.num_classes == 288
    np.testing.assert_array_equal(gym288.records[0].labels, [-1, -1, 107, 107, 107, -1, -1, -1, -1, -1, -1])
    with pytest.raises(MVFormerError, match="needs a subset: one of 99, 288"):
        open_dataset(finegym, "train", "finegym")


def test_finegym_label_beyond_the_classes(finegym):
    records = load_pickle(finegym / "gym288_train_v1.0.pkl")  # labels up to 198: fine for 288, not for 99
    dump(finegym / "gym99_train_v1.0.pkl", records)
    with pytest.raises(MVFormerError, match=r"gym99_train_v1.0.pkl record 0 .*frame label 103 is not in \[-1, 98\]"):
        open_dataset(finegym, "train", "finegym", subset="99")


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_kinetics_class_folders_skip_unreadable(tmp_path):
    root = tmp_path / "k400"
    write_mp4(root / "train" / "abseiling" / "aaa_000001_000011.mp4", 9)
    write_mp4(root / "train" / "archery" / "bbb_000002_000012.mp4", 11, seed=1)
    truncate(write_mp4(root / "train" / "archery" / "ccc_000003_000013.mp4", 10, seed=2))
    (root / "train" / "archery" / "ddd_000004_000014.mp4").write_bytes(b"not a video at all")
    dataset = open_dataset(root, "train", "kinetics400")
    assert [(r.name, r.num_frames, r.labels) for r in dataset.records] == [
        ("aaa_000001_000011", 9, None), ("bbb_000002_000012", 11, None)]
    assert sorted(path.name for path, _ in dataset.skipped) == ["ccc_000003_000013.mp4", "ddd_000004_000014.mp4"]
    assert all(reason for _, reason in dataset.skipped)


def test_kinetics_official_csv(tmp_path):
    root = tmp_path / "k400"
    write_mp4(root / "train" / "eee_000010_000020.mp4", 8)  # the cvdfoundation layout: flat
    write_mp4(root / "train" / "archery" / "fff_000000_000010.mp4", 10, seed=1)  # after sorting into classes
    (root / "annotations").mkdir()
    with open(root / "annotations" / "train.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        writer.writerow(["abseiling", "eee", 10, 20, "train"])
        writer.writerow(["archery", "fff", 0, 10, "train"])
        writer.writerow(["archery", "gone", 30, 40, "train"])  # deleted from YouTube, never downloaded
    dataset = open_dataset(root, "train", "kinetics400")
    assert [(r.name, r.num_frames) for r in dataset.records] == [("eee_000010_000020", 8), ("fff_000000_000010", 10)]
    assert [(path.name, reason) for path, reason in dataset.skipped] == [("gone_000030_000040.mp4", "missing")]


def test_kinetics_carl_list(tmp_path):
    """CARL's Kinetics400/train.csv lists paths relative to the folder above, starting Kinetics400/."""
    root = tmp_path / "datasets" / "Kinetics400"
    write_mp4(root / "train" / "archery" / "hhh_000000_000010.mp4", 8)
    (root / "train.csv").write_text("Kinetics400/train/archery/hhh_000000_000010.mp4,archery\n"
                                    "Kinetics400/train/archery/iii_000000_000010.mp4,archery\n")
    dataset = open_dataset(root, "train", "kinetics400")
    assert [r.name for r in dataset.records] == ["hhh_000000_000010"] and len(dataset.skipped) == 1


# --- bad input: one line naming the file and the problem --------------------------------------------------------


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_truncated_video_in_a_labelled_set(pouring):
    truncate(pouring / "videos" / "train_1.mp4")
    with pytest.raises(MVFormerError) as error:
        open_dataset(pouring, "train", "pouring")
    assert "train_1.mp4" in one_line(error)


def test_labels_disagree_with_the_video(pouring):
    records = load_pickle(pouring / "train.pkl")
    records[2] = dict(records[2], frame_label=records[2]["frame_label"][:-1], seq_len=13)  # video has 14 frames
    dump(pouring / "train.pkl", records)
    with pytest.raises(MVFormerError) as error:
        open_dataset(pouring, "train", "pouring")
    assert "train.pkl record 2 (train_2): says the video has 13 frames but" in one_line(error)
    records[2] = dict(records[2], seq_len=14)
    dump(pouring / "train.pkl", records)
    with pytest.raises(MVFormerError, match=r"record 2 \(train_2\): has 13 frame labels but .*train_2.mp4 has 14"):
        open_dataset(pouring, "train", "pouring")


def test_phase_file_disagrees_with_nframes(penn_official):
    np.save(penn_official / "phases" / "0001.npy", phases(7, 2))
    with pytest.raises(MVFormerError, match=r"0001.npy: has 7 phase labels but 0001.mat says the video has 8 frames"):
        open_dataset(penn_official, "train", "penn_action")


def test_frame_folder_with_a_gap(penn_official):
    (penn_official / "frames" / "0001" / "000004.jpg").unlink()
    with pytest.raises(MVFormerError) as error:
        open_dataset(penn_official, "train", "penn_action")
    assert "0001" in one_line(error) and "gap" in str(error.value) and "frame 4" in str(error.value)


def test_damaged_mat_file(penn_official):
    (penn_official / "labels" / "0002.mat").write_bytes(b"MATLAB 5.0 but not really")
    with pytest.raises(MVFormerError, match="0002.mat: cannot read MATLAB file"):
        open_dataset(penn_official, "val", "penn_action")


def test_split_naming_a_missing_video(penn_pickles):
    (penn_pickles / "videos" / "0004_pushup.mp4").unlink()
    with pytest.raises(MVFormerError) as error:
        open_dataset(penn_pickles, "val", "penn_action")
    assert "val.pkl record 0 (0004_pushup): names video videos/0004_pushup.mp4 but" in one_line(error)


def test_pickle_path_outside_the_root(pouring):
    records = load_pickle(pouring / "val.pkl")
    dump(pouring / "val.pkl", [dict(records[0], video_file="../elsewhere/x.mp4")])
    with pytest.raises(MVFormerError, match="video_file '../elsewhere/x.mp4' must be a path relative to"):
        open_dataset(pouring, "val", "pouring")


class NotAllowed:
    """A class a dataset pickle must not be able to instantiate."""


class RunsACommand:
    """Unpickling this would run a shell command, if the unpickler allowed it."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


def test_pickle_with_a_foreign_class(pouring):
    dump(pouring / "val.pkl", [{"name": "x", "payload": NotAllowed()}])
    with pytest.raises(MVFormerError) as error:
        open_dataset(pouring, "val", "pouring")
    assert one_line(error).startswith(f"{pouring / 'val.pkl'}: refusing to unpickle ")
    assert "NotAllowed" in str(error.value)


def test_pickle_that_would_run_a_command_is_refused_unrun(pouring, tmp_path):
    sentinel = tmp_path / "pwned"
    dump(pouring / "train.pkl", [RunsACommand(sentinel)])
    with pytest.raises(MVFormerError, match=r"refusing to unpickle (posix|os)\.system"):
        open_dataset(pouring, "train", "pouring")
    assert not sentinel.exists()


def test_truncated_pickle(pouring):
    data = (pouring / "train.pkl").read_bytes()
    (pouring / "train.pkl").write_bytes(data[: len(data) // 3])
    with pytest.raises(MVFormerError, match="train.pkl: cannot read pickle"):
        open_dataset(pouring, "train", "pouring")


def test_pouring_format_on_penn_pickles(penn_pickles):
    with pytest.raises(MVFormerError, match="train.pkl: expected a list of video records, found tuple"):
        open_dataset(penn_pickles, "train", "pouring")


def test_unknown_format(pouring):
    with pytest.raises(MVFormerError, match="unknown dataset format 'pennaction'.*penn_action"):
        open_dataset(pouring, "train", "pennaction")


# --- prepare -----------------------------------------------------------------------------------------------------


def test_prepare_pouring_links_videos_and_reads_back(pouring, tmp_path):
    dest = prepare("pouring", pouring, tmp_path / "generic")
    source_train = open_dataset(pouring, "train", "pouring")
    generic = VideoDataset(dest, "train")
    assert [r.name for r in generic.records] == [r.name for r in source_train.records]
    for mine, theirs in zip(generic.records, source_train.records):
        np.testing.assert_array_equal(mine.labels, theirs.labels)
        assert mine.num_frames == theirs.num_frames
        assert os.stat(mine.path).st_ino == os.stat(theirs.path).st_ino  # a hard link, not a copy
    assert generic.num_classes == 5 and VideoDataset(dest, "val").num_classes == 5  # classes.txt holds 0..4
    assert (dest / "classes.txt").read_text().split() == ["0", "1", "2", "3", "4"]
    assert (dest / "labels" / "train_1.csv").read_text().splitlines()[:3] == ["frame,label", "0,0", "1,0"]
    assert not [p for p in dest.rglob(".*") if p.name != MANIFEST]  # no temporary files left


def test_prepare_resumes_after_an_interrupted_run(pouring, tmp_path, monkeypatch):
    dest = tmp_path / "generic"
    monkeypatch.setattr(prepare_module, "PREPARE_BATCH", 1)  # save the manifest after every video
    placed = []
    real_place = prepare_module._place_video

    def place_then_crash(source: Path, target: Path) -> None:
        if len(placed) == 2:
            raise KeyboardInterrupt
        real_place(source, target)
        placed.append(source.name)

    monkeypatch.setattr(prepare_module, "_place_video", place_then_crash)
    with pytest.raises(KeyboardInterrupt):
        prepare("pouring", pouring, dest)
    assert not (dest / "splits").exists()
    done = json.loads((dest / MANIFEST).read_text())["done"]
    assert sorted(done) == ["train_0", "train_1"]

    monkeypatch.setattr(prepare_module, "_place_video", lambda s, t: (placed.append(s.name), real_place(s, t)))
    notes = []
    prepare("pouring", pouring, dest, note=notes.append)
    assert placed == ["train_0.mp4", "train_1.mp4", "train_2.mp4", "val_0.mp4"]  # nothing placed twice
    assert "4 videos (2 written now, 2 already there)" in notes[-1]
    assert len(VideoDataset(dest, "train")) == 3 and len(VideoDataset(dest, "val")) == 1


def test_prepare_refuses_to_overwrite_a_foreign_file(pouring, tmp_path):
    dest = tmp_path / "generic"
    (dest / "videos").mkdir(parents=True)
    (dest / "videos" / "train_2.mp4").write_bytes(b"somebody else's video")
    with pytest.raises(MVFormerError) as error:
        prepare("pouring", pouring, dest)
    assert "train_2.mp4: exists and was not written by mvformer prepare" in one_line(error)
    assert (dest / "videos" / "train_2.mp4").read_bytes() == b"somebody else's video"
    assert not (dest / "videos" / "train_0.mp4").exists()


def test_prepare_refuses_a_destination_prepared_from_elsewhere(pouring, penn_pickles, tmp_path):
    dest = prepare("pouring", pouring, tmp_path / "generic")
    with pytest.raises(MVFormerError, match="was prepared from .*pouring.*choose another destination"):
        prepare("penn_action", penn_pickles, dest, subset="pushup")


def test_prepare_penn_action_one_root_per_action(penn_pickles, tmp_path):
    dest = prepare("penn_action", penn_pickles, tmp_path / "penn")
    assert penn_action_actions(dest, "generic") == ["pushup", "squat"]
    pushup = VideoDataset(dest / "pushup", "train")
    assert [r.name for r in pushup.records] == ["0001_pushup", "0003_pushup"] and pushup.num_classes == 2
    assert VideoDataset(dest / "squat", "val").num_classes == 4
    assert len(VideoDataset(dest / "all", "train")) == 3 and len(VideoDataset(dest / "all", "val")) == 2


def test_prepare_penn_official_links_frame_folders(penn_official, tmp_path):
    dest = prepare("penn_action", penn_official, tmp_path / "pushup", subset="pushup")
    generic = VideoDataset(dest, "train")
    assert [r.name for r in generic.records] == ["0001_pushup"] and generic.records[0].path.is_dir()
    np.testing.assert_array_equal(generic.frames(0), read_video(penn_official / "frames" / "0001"))
    np.testing.assert_array_equal(generic.records[0].labels, phases(8, 2))
    assert not (dest / "splits" / "val.txt").exists()  # no pushup in val: no empty split file


def test_prepare_kinetics_reports_what_it_skipped(tmp_path):
    root = tmp_path / "k400"
    write_mp4(root / "train" / "archery" / "aaa_000000_000010.mp4", 8)
    truncate(write_mp4(root / "train" / "archery" / "bbb_000000_000010.mp4", 8, seed=1))
    notes = []
    dest = prepare("kinetics400", root, tmp_path / "generic", note=notes.append)
    assert [r.name for r in VideoDataset(dest, "train").records] == ["aaa_000000_000010"]
    assert not (dest / "labels").exists() and not (dest / "classes.txt").exists()
    assert any("left out 1 videos" in line and "bbb_000000_000010.mp4" in line for line in notes)


def test_cli_prepare(pouring, tmp_path, capsys):
    assert main(["prepare", "pouring", str(pouring), str(tmp_path / "generic"), "--no-progress"]) == 0
    assert f"generic layout in {tmp_path / 'generic'}" in capsys.readouterr().out
    dump(pouring / "val.pkl", [NotAllowed()])
    assert main(["prepare", "pouring", str(pouring), str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mvformer: error: ") and "refusing to unpickle" in err and err.count("\n") == 1
