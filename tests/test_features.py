"""The frozen-feature cache: same tokens as the backbone, resumable, refuses what it must, says why."""

import errno
import json
import os
import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mvformer.cli import main
from mvformer.config import load_config
from mvformer.data.datasets import VideoDataset
from mvformer.data.sampling import sample_views
from mvformer.data.video import write_video
from mvformer.errors import MVFormerError
from mvformer.evaluation.embed import embed_split
from mvformer.features.build import cache_features, copy_frames
from mvformer.features.cache import backbone_fingerprint, load_feature_cache, open_feature_cache, video_fingerprint
from mvformer.model.backbone import build_backbone
from mvformer.model.mvformer import build_model
from mvformer.train.clips import CachedTrainingClips

IMAGE_SIZE = 32
FRAME_COUNTS = {"train": [5, 7, 4, 6], "val": [5, 6]}
CHUNK_FRAMES = 8  # train chunks: videos [0, 2) and [2, 4); val: [0, 2)
CPU = torch.device("cpu")


def write_dataset(root: Path, counts: dict[str, list[int]], seed: int = 0) -> Path:
    """Non-square 48x64 videos of coloured 8x8 blocks that brighten over time (so that squash != centre crop)."""
    rng = np.random.default_rng(seed)
    (root / "splits").mkdir(parents=True)
    for split, lengths in counts.items():
        names = [f"{split}_{index}" for index in range(len(lengths))]
        for name, length in zip(names, lengths):
            blocks = rng.integers(0, 256, (1, 6, 8, 3))  # (1, 6, 8, 3) -> 48 x 64 frames
            ramp = np.linspace(0.4, 1.0, length)[:, None, None, None]
            frames = np.kron(blocks, np.ones((1, 8, 8, 1))) * ramp  # (T, 48, 64, 3)
            write_video(root / "videos" / f"{name}.mp4", frames.astype(np.uint8))
        (root / "splits" / f"{split}.txt").write_text("".join(f"{name}\n" for name in names))
    return root


def make_config(root: Path, *extra: str):
    return load_config("demo", [f"data.root={root}", "backbone.name=tiny", "backbone.blocks=[1,3]",
                                f"data.image_size={IMAGE_SIZE}", "data.clip_len=8", "train.device=cpu",
                                "backbone.chunk_size=4", *extra])  # videos of 4-7 frames: cached in slices


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("videos"), FRAME_COUNTS)


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    """An uninterrupted cache with one augmented copy, and the backbone's own tokens of every video (copy 0)."""
    config = make_config(data_root)
    folder = cache_features(config, tmp_path_factory.mktemp("reference"), copies=1, chunk_frames=CHUNK_FRAMES,
                            note=lambda line: None)
    model = build_model(config)
    tokens = {}
    for split in FRAME_COUNTS:
        dataset = VideoDataset(data_root, split, size=IMAGE_SIZE)
        tokens[split] = [model.backbone(model.prepare(dataset.frames(i))) for i in range(len(dataset))]
    return folder, tokens


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*.f16"))}


def test_cached_tokens_are_the_backbone_tokens_in_float16(reference):
    folder, tokens = reference
    cache = load_feature_cache(folder)
    for split, counts in FRAME_COUNTS.items():
        assert [video.num_frames for video in cache.records(split)] == counts
        for index, (patches, cls) in enumerate(tokens[split]):
            cached_patches, cached_cls = cache.features(split, index)
            assert cached_patches.dtype == torch.float16 and cached_patches.shape == (counts[index], 16, 64)
            assert torch.equal(cached_patches, patches.half()) and torch.equal(cached_cls, cls.half())
    some_patches, some_cls = cache.features("train", 1, [6, 0, 0])  # any order, repeats: only these rows
    assert torch.equal(some_patches, tokens["train"][1][0][[6, 0, 0]].half())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["dtype"] == "float16" and manifest["identity"]["blocks"] == [1, 3]
    assert manifest["identity"]["image_size"] == IMAGE_SIZE and manifest["grid"] == [4, 4]
    assert manifest["splits"]["train"]["chunks"] == [[0, 2], [2, 4]]
    assert manifest["splits"]["train"]["complete"] == [2, 2] and manifest["splits"]["val"]["complete"] == [1]


def max_difference(embeddings: list[np.ndarray], others: list[np.ndarray]) -> float:
    assert [e.shape for e in embeddings] == [e.shape for e in others]
    return max(float(np.abs(a - b).max()) for a, b in zip(embeddings, others))


def test_embeddings_from_the_cache_equal_embeddings_from_the_videos(data_root, reference):
    folder, _ = reference
    config = make_config(data_root, "model.time_encoding=none")  # embeddings depend on the frames alone
    torch.manual_seed(0)
    model = build_model(config).eval()
    cache = load_feature_cache(folder)
    for split in FRAME_COUNTS:
        dataset = VideoDataset(data_root, split, size=IMAGE_SIZE)
        direct = embed_split(model, dataset, CPU)
        cached = embed_split(model, dataset, CPU, cache, split)
        # The cache stores tokens in float16 (relative rounding 2^-11): unit embeddings made from them move by
        # less than float16's epsilon (measured 6.5e-6), and by something, as the tokens really were rounded.
        assert 0 < max_difference(cached, direct) < torch.finfo(torch.float16).eps
    # The bound is tight enough to catch other preprocessing: centre crop instead of squash differs by 0.03.
    val_set = VideoDataset(data_root, "val", size=None)
    assert max_difference(embed_split(model, val_set, CPU, cache, "val"), embed_split(model, val_set, CPU)) > 1e-2
    train_set = VideoDataset(data_root, "train", size=IMAGE_SIZE)
    assert [e.shape[0] for e in embed_split(model, train_set, CPU, cache, "train", indices=[2, 0])] == [4, 5]


def test_cached_training_clips_draw_the_same_views_as_training(reference):
    folder, tokens = reference
    cache = load_feature_cache(folder)
    clips = CachedTrainingClips(cache, "train", clip_len=8, max_stretch=1.5, seed=3, augmented=False)
    clips.epoch = 2
    for index in range(len(clips)):
        item = clips[index]
        views = sample_views(FRAME_COUNTS["train"][index], 8, np.random.default_rng([3, 2, index]), max_stretch=1.5)
        assert torch.equal(item["steps"], torch.from_numpy(views.steps))
        assert torch.equal(item["masks"], torch.from_numpy(views.masks))
        assert item["seq_lens"].tolist() == [FRAME_COUNTS["train"][index]] * 2
        patches, cls = tokens["train"][index]
        for view in range(2):
            assert torch.equal(item["patches"][view], patches[views.indices[view]].half())
            assert torch.equal(item["cls"][view], cls[views.indices[view]].half())


def test_augmented_copies_are_seeded_augment_draws_and_views_use_distinct_ones(data_root, tmp_path):
    config = make_config(data_root)
    folder = cache_features(config, tmp_path / "cache", copies=2, chunk_frames=CHUNK_FRAMES, note=lambda line: None)
    cache = load_feature_cache(folder)
    model = build_model(config)
    backbone = model.backbone
    frames = VideoDataset(data_root, "train", size=IMAGE_SIZE).frames(1)
    assert torch.equal(copy_frames(frames, 0, backbone, config.data.augment, 0, 1), model.prepare(frames))
    copies = [cache.features("train", 1, copy=copy)[0] for copy in range(3)]
    for copy in (1, 2):
        expected, _ = backbone(copy_frames(frames, copy, backbone, config.data.augment, config.train.seed, 1))
        assert torch.equal(copies[copy], expected.half())
        assert (copies[copy].float() - copies[0].float()).abs().mean() > 0.05  # measured: 0.20 and 0.26
    assert (copies[1].float() - copies[2].float()).abs().mean() > 0.05
    with pytest.raises(MVFormerError, match="copies 0..0, not 1"):
        cache.features("val", 0, copy=1)  # evaluation never augments: val holds copy 0 only

    clips = CachedTrainingClips(cache, "train", clip_len=8, max_stretch=1.5, seed=0)
    used = set()
    for index in range(len(clips)):
        item = clips[index]
        views = sample_views(FRAME_COUNTS["train"][index], 8, np.random.default_rng([0, 0, index]), max_stretch=1.5)
        view_copies = [next(copy for copy in (1, 2) if torch.equal(
            item["patches"][view], cache.features("train", index, views.indices[view], copy)[0])) for view in range(2)]
        assert view_copies[0] != view_copies[1]
        used.update(view_copies)
    assert used == {1, 2}

    before = file_bytes(folder)
    notes = []
    cache_features(config, folder, copies=3, note=notes.append)  # adds copy 3 only
    after = file_bytes(folder)
    assert {name: data for name, data in after.items() if name in before} == before
    assert set(after) - set(before) == {"train/copy3_patches.f16", "train/copy3_cls.f16"}
    assert load_feature_cache(folder).num_copies == 3


def test_a_killed_cache_resumes_after_its_last_complete_chunk(data_root, reference, tmp_path, monkeypatch):
    reference_folder, _ = reference
    config = make_config(data_root)
    backbone = build_backbone("tiny", [1, 3], image_size=IMAGE_SIZE, chunk_size=4)
    original = backbone.forward
    # One call per 4 frames of a video and copy: train videos of 5, 7, 4, 6 frames take 2, 2, 1, 2 calls, so 8
    # calls finish train chunk 0 (2 videos x 2 copies) and call 10 dies inside chunk 1.
    calls, fail_at = [], [10]

    def forward(frames):
        calls.append(len(frames))
        if len(calls) in fail_at:
            raise RuntimeError("killed")
        return original(frames)

    monkeypatch.setattr(backbone, "forward", forward)
    folder = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="killed"):
        cache_features(config, folder, copies=1, chunk_frames=CHUNK_FRAMES, note=lambda line: None, backbone=backbone)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["splits"]["train"]["complete"] == [1, 1] and manifest["splits"]["val"]["complete"] == [0]
    assert not list(folder.glob("*.tmp"))
    notes = []
    assert open_feature_cache(make_config(data_root, f"data.feature_cache={folder}"), note=notes.append) is None
    assert "split train is only partly cached" in notes[0]

    calls.clear()
    fail_at.clear()
    cache_features(config, folder, copies=1, note=lambda line: None, backbone=backbone)
    assert len(calls) == 10  # train chunk 1 (3 calls x 2 copies) and val (2 + 2): nothing done twice
    assert file_bytes(folder) == file_bytes(reference_folder)

    # A file cut short (e.g. by a kill of a copy) loses the chunks past its end, and only those.
    patches_file = folder / "train" / "copy0_patches.f16"
    os.truncate(patches_file, patches_file.stat().st_size - 100)
    notes.clear()
    assert open_feature_cache(make_config(data_root, f"data.feature_cache={folder}"), note=notes.append) is None
    assert "copy0_patches.f16 of split train is missing or cut short" in notes[0]
    calls.clear()
    cache_features(config, folder, copies=1, note=lambda line: None, backbone=backbone)
    assert len(calls) == 3  # train chunk 1, copy 0
    assert file_bytes(folder) == file_bytes(reference_folder)


def test_a_cache_that_disagrees_with_the_config_is_not_used_and_says_why(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MVFORMER_CACHE_DIR", str(tmp_path / "home"))
    folder = tmp_path / "explicit"
    cache_features(make_config(data_root, "backbone.blocks=[3]"), folder, note=lambda line: None)
    notes = []
    other_blocks = make_config(data_root, f"data.feature_cache={folder}")
    assert open_feature_cache(other_blocks, note=notes.append) is None
    assert notes == [f"feature cache at {folder} not used: backbone.blocks is [3] in the cache but [1, 3] in the "
                     f"config"]
    with pytest.raises(MVFormerError, match=r"another config \(backbone.blocks is \[3\] in the cache"):
        cache_features(other_blocks, note=lambda line: None)  # never mixes tokens of two configs in one folder
    notes.clear()
    same = make_config(data_root, "backbone.blocks=[3]", f"data.feature_cache={folder}")
    assert open_feature_cache(same, note=notes.append) is not None
    assert notes == [f"using feature cache at {folder}"]
    notes.clear()
    assert open_feature_cache(same, augmented=True, note=notes.append) is None
    assert "holds no augmented copies but data.augment is enabled" in notes[0]

    notes.clear()
    auto = make_config(data_root)
    assert open_feature_cache(auto, note=notes.append) is None and notes == []  # no cache made: nothing to say
    cached = cache_features(auto, note=notes.append)
    assert cached.parent == tmp_path / "home" / "features"
    notes.clear()
    assert open_feature_cache(auto, note=notes.append).folder == cached
    assert notes == [f"using feature cache at {cached}"]
    assert open_feature_cache(make_config(data_root, "data.feature_cache=none"), note=notes.append) is None

    root = write_dataset(tmp_path / "changing", {"train": [4, 5]}, seed=1)
    config = make_config(root, f"data.feature_cache={tmp_path / 'changing_cache'}")
    cache_features(config, note=lambda line: None)
    write_video(root / "videos" / "train_1.mp4", np.zeros((5, 48, 64, 3), dtype=np.uint8))
    notes.clear()
    assert open_feature_cache(config, note=notes.append) is None
    assert notes[0].endswith("not used: the files (size or modification time) of video train_1 changed since it was "
                             "cached")
    dataset = VideoDataset(root, "train", size=IMAGE_SIZE)
    notes.clear()
    assert open_feature_cache(config, datasets={"train": dataset}, note=notes.append) is None
    assert notes[0].endswith("not used: the files (size or modification time) of video train_1 changed since split "
                             "train was cached")
    cache_features(config, note=notes.append)  # the stale split is cached again
    assert any(line.endswith("of video train_1 changed since split train was cached; caching that split again")
               for line in notes)
    assert open_feature_cache(config, datasets={"train": dataset}, note=notes.append) is not None


def test_fingerprints_are_size_and_modification_time_of_every_file(tmp_path):
    """Same-size rewrites are noticed through the modification time, for video files, each image of a frame
    folder, and backbone weights (a fine-tuned model of the same architecture has exactly the same size)."""
    def touch(path: Path, bump: int) -> None:
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + bump))

    video = tmp_path / "clip.mp4"
    video.write_bytes(b"0123456789")
    folder = tmp_path / "frames"
    folder.mkdir()
    for number in (1, 2, 3):
        (folder / f"{number:06d}.jpg").write_bytes(b"jpeg")
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"tensors")
    fingerprints = {video: lambda: video_fingerprint(video), folder / "000002.jpg": lambda: video_fingerprint(folder),
                    weights: lambda: backbone_fingerprint(str(weights))}
    for changed, fingerprint in fingerprints.items():
        before = fingerprint()
        assert fingerprint() == before  # stable while nothing changes
        touch(changed, 1000)  # same bytes, same size, later modification time
        assert fingerprint() != before, changed
    size, mtime_ns = video.stat().st_size, video.stat().st_mtime_ns
    assert video_fingerprint(video) == f"{size} bytes, mtime_ns {mtime_ns}"
    assert video_fingerprint(folder).startswith("3 images, ") and video_fingerprint(tmp_path / "gone") is None
    assert backbone_fingerprint(str(weights)) == {"weights.pth": [7, weights.stat().st_mtime_ns]}
    assert backbone_fingerprint(None) is None


def test_replacing_every_image_of_a_frame_folder_invalidates_the_cache(tmp_path):
    """Same count, same names, new pictures: the cache must not serve the old tokens, and the note says why."""
    root = tmp_path / "data"
    blocks = np.random.default_rng(0).integers(0, 256, (6, 6, 8, 3), dtype=np.uint8)
    images = np.kron(blocks, np.ones((1, 8, 8, 1), dtype=np.uint8))  # (6, 48, 64, 3)
    for number, image in enumerate(images, start=1):
        (root / "videos" / "clip").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "videos" / "clip" / f"{number:06d}.png")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("clip\n")
    config = make_config(root, f"data.feature_cache={tmp_path / 'cache'}")
    folder = cache_features(config, note=lambda line: None)
    notes = []
    assert open_feature_cache(config, note=notes.append) is not None

    for number, image in enumerate(images, start=1):
        path = root / "videos" / "clip" / f"{number:06d}.png"
        Image.fromarray(255 - image).save(path)
        stat = path.stat()  # a different modification time even on a coarse-clock file system
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    notes.clear()
    assert open_feature_cache(config, note=notes.append) is None
    why = "the files (size or modification time) of video clip changed since it was cached"
    assert notes == [f"feature cache at {folder} not used: {why}"]
    dataset = VideoDataset(root, "train", size=IMAGE_SIZE)
    notes.clear()
    assert open_feature_cache(config, datasets={"train": dataset}, note=notes.append) is None
    assert notes[0].endswith("of video clip changed since split train was cached")


def test_refuses_to_start_when_the_disk_cannot_hold_the_cache(data_root, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    notes = []
    with pytest.raises(MVFormerError, match=r"needs 68.1 KiB more but the disk has only 1000 B free"):
        cache_features(make_config(data_root), tmp_path / "cache", note=notes.append)
    assert "68.1 KiB (train 22 frames, val 11 frames, 0 augmented train copies), 68.1 KiB to write" in notes[0]
    assert not list((tmp_path / "cache").iterdir())  # nothing written


def test_a_full_disk_stops_with_a_message_and_keeps_the_completed_chunks(data_root, reference, tmp_path,
                                                                         monkeypatch):
    reference_folder, tokens = reference
    config = make_config(data_root)
    real_pwrite, writes = os.pwrite, []

    def full_disk_pwrite(fd, data, offset):
        writes.append(offset)
        if len(writes) > 16:  # 2 files x 4 slices of 4 frames x 2 copies: 16 writes finish train chunk 0
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full_disk_pwrite)
    folder = tmp_path / "cache"
    with pytest.raises(MVFormerError, match=r"disk full while caching features; 2 of 5 chunks are complete and kept, "
                                            r"free some space and rerun to resume"):
        cache_features(config, folder, copies=1, chunk_frames=CHUNK_FRAMES, note=lambda line: None)
    partial = load_feature_cache(folder)
    for index in (0, 1):
        patches, cls = partial.features("train", index)
        assert torch.equal(patches, tokens["train"][index][0].half())
    with pytest.raises(MVFormerError, match="train_2 \\(copy 0\\) is not cached yet"):
        partial.features("train", 2)
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    cache_features(config, folder, copies=1, note=lambda line: None)
    assert file_bytes(folder) == file_bytes(reference_folder)


def test_cache_features_command(data_root, tmp_path, capsys):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(f"base: demo\nbackbone: {{name: tiny, blocks: [3]}}\ndata: {{root: {data_root}, "
                           f"image_size: {IMAGE_SIZE}}}\ntrain: {{device: cpu}}\n")
    assert main(["cache-features", str(config_file), "--out", str(tmp_path / "cache"), "--copies", "1"]) == 0
    err = capsys.readouterr().err
    assert "1 augmented train copies), 58.4 KiB to write" in err and "feature cache complete" in err
    assert load_feature_cache(tmp_path / "cache").num_copies == 1
    assert main(["cache-features", str(config_file), "--copies", "-1"]) == 2
    assert capsys.readouterr().err == "mvformer: error: --copies must be in [0, 1000], got -1\n"
    assert main(["cache-features", str(config_file), "--set", "data.augment.enabled=false", "--copies", "2"]) == 2
    assert "need data.augment.enabled" in capsys.readouterr().err
