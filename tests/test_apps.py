"""The five commands that use a model on videos (embed, align, retrieve, attention, progress), on tiny generated
videos and an untrained demo model: shapes, contents, and one-line errors for bad input."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from bad_inputs import one_line_failure
from mvformer import files, viz
from mvformer.apps import align, attention, embed, pictures, progress, retrieve
from mvformer.apps import videos as videos_module
from mvformer.checkpoint import CHECKPOINT_VERSION, model_from_checkpoint, save_checkpoint
from mvformer.cli import main
from mvformer.config import load_config
from mvformer.data.synthetic import generate_pouring_dataset, phase_names
from mvformer.data.video import read_video, write_video
from mvformer.errors import MVFormerError
from mvformer.evaluation import alignment
from mvformer.model.mvformer import build_model


def write_checkpoint(path, root, *overrides, version=CHECKPOINT_VERSION):
    """An untrained demo model saved in the format train() writes."""
    config = load_config("demo", [f"data.root={root}", "data.clip_len=16", *overrides])
    torch.manual_seed(0)
    model = build_model(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"version": version, "config": config.to_dict(), "epoch": 0, "step": 0, "world_size": 1,
                           "model": model.trainable_state_dict(), "optimizer": {}, "random_states": [],
                           "counters": {}, "epoch_losses": []})
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate_pouring_dataset(tmp_path_factory.mktemp("pouring"), num_train=4, num_val=2, size=64,
                                    min_frames=16, max_frames=24, seed=0)


@pytest.fixture(scope="module")
def checkpoint(root, tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("run") / "checkpoint.pt", root)


@pytest.fixture(scope="module")
def videos(root):
    return sorted((root / "videos").glob("*.mp4"))


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def gif_frames(path):
    with Image.open(path) as image:
        frames = []
        for index in range(image.n_frames):
            image.seek(index)
            frames.append(np.asarray(image.convert("RGB")))
    return np.stack(frames)  # (T, H, W, 3)




# --- embed -----------------------------------------------------------------------------------------------------


def test_embed_writes_each_video_as_the_model_embeds_it_whole(root, checkpoint, videos, tmp_path, monkeypatch):
    monkeypatch.setattr(videos_module, "DECODE_CHUNK", 5)  # several chunks per video: the chunked path must not change results
    written = embed.embed_videos(checkpoint, [root], tmp_path / "embs")
    assert [p.stem for p in written] == [v.stem for v in videos]
    model = model_from_checkpoint(checkpoint)
    for path, video in zip(written, videos):
        embs = np.load(path)
        frames = read_video(video, size=64)  # squashed in the decoder, as training does
        expected = model.embed_video(model.prepare(frames)).numpy()
        assert embs.shape == (len(frames), 32) and embs.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(embs, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(embs, expected, atol=1e-5)
        info = json.loads(path.with_suffix(".json").read_text())
        assert info["source"] == str(video.resolve()) and info["fps"] == 25.0
        assert info["num_frames"] == len(frames) and info["embedding_size"] == 32
        assert info["config"] == model.config.to_dict()


def test_embed_frame_folder_records_no_frame_rate(root, checkpoint, videos, tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    frames = read_video(videos[0])
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame_{index:04d}.png")
    crop_out = embed.embed_videos(checkpoint, [folder], tmp_path / "embs", frames="crop")[0]
    info = json.loads(crop_out.with_suffix(".json").read_text())
    assert crop_out.name == "clip.npy" and info["fps"] is None and info["frame_mode"] == "crop"
    assert np.load(crop_out).shape == (len(frames), 32)


def test_embed_refuses_to_overwrite_and_same_names(root, checkpoint, videos, tmp_path):
    out = tmp_path / "embs"
    embed.embed_videos(checkpoint, videos[:1], out)
    before = np.load(out / f"{videos[0].stem}.npy")
    with pytest.raises(MVFormerError, match="already exists; pass --overwrite"):
        embed.embed_videos(checkpoint, videos[:2], out)
    assert not (out / f"{videos[1].stem}.npy").exists()  # refused before any work
    embed.embed_videos(checkpoint, videos[:1], out, overwrite=True)
    np.testing.assert_array_equal(np.load(out / f"{videos[0].stem}.npy"), before)
    twin = tmp_path / "other" / videos[0].name
    twin.parent.mkdir()
    twin.write_bytes(videos[0].read_bytes())
    with pytest.raises(MVFormerError, match="also named"):
        embed.embed_videos(checkpoint, [videos[0], twin], tmp_path / "twins")


def test_checkpoint_of_another_version_or_model_is_refused(root, videos, tmp_path, capsys):
    future = write_checkpoint(tmp_path / "future" / "checkpoint.pt", root, version=99)
    one_line_failure(["embed", str(future), str(videos[0]), "--out", str(tmp_path / "e")], capsys,
                     str(future), "version")
    other = write_checkpoint(tmp_path / "other" / "checkpoint.pt", root)
    state = torch.load(other, weights_only=True)
    state["config"]["model"]["num_tokens"] = 5  # weights of a 3-token model under a 5-token config
    torch.save(state, other)
    one_line_failure(["attention", str(other), str(videos[0]), "--out", str(tmp_path / "a")], capsys, str(other))
    assert not (tmp_path / "e").exists() and not (tmp_path / "a").exists()


def test_embed_and_align_take_names_with_glob_characters(checkpoint, videos, tmp_path):
    """`clip[1].mp4` is a file name, not a pattern."""
    clip = tmp_path / "in" / "clip[1].mp4"
    clip.parent.mkdir()
    clip.write_bytes(videos[0].read_bytes())
    (written,) = embed.embed_videos(checkpoint, [clip], tmp_path / "embs")
    assert written.name == "clip[1].npy" and np.load(written).shape == (len(read_video(clip)), 32)
    assert embed.embed_videos(checkpoint, [clip.parent], tmp_path / "folder") == [tmp_path / "folder" / "clip[1].npy"]
    align.align_videos(checkpoint, clip, [videos[1]], tmp_path / "a[0].gif", height=32)
    assert {row[0] for row in read_csv(tmp_path / "a[0]_path.csv")[1:]} == {videos[1].stem}


def test_a_folder_of_videos_with_a_picture_in_it_is_still_a_folder_of_videos(videos, tmp_path):
    for video in videos[:2]:
        (tmp_path / video.name).write_bytes(video.read_bytes())
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "sheet.png")
    assert videos_module.list_videos([tmp_path]) == [tmp_path / v.name for v in videos[:2]]


def test_non_finite_embeddings_are_never_returned(checkpoint, videos):
    """Weights the checkpoint check does not cover (the frozen backbone's) can still make NaN embeddings."""
    model = model_from_checkpoint(checkpoint)
    next(model.backbone.buffers()).fill_(float("nan"))  # the demo's pixel backbone: a fixed position code
    with pytest.raises(MVFormerError, match="NaN or Inf embeddings"):
        videos_module.embed_video_file(model, videos[0], torch.device("cpu"))


# --- outputs ---------------------------------------------------------------------------------------------------


def test_staged_outputs_appear_together_or_not_at_all(tmp_path):
    earlier = tmp_path / "a.txt"
    earlier.write_text("earlier")
    targets = [earlier, tmp_path / "new" / "deeper" / "b.txt"]
    with pytest.raises(RuntimeError), files.atomic_paths(targets) as temporaries:
        for temporary in temporaries:
            temporary.write_text("half")
        raise RuntimeError("the second output failed")
    assert earlier.read_text() == "earlier" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    with files.atomic_paths(targets) as temporaries:
        for temporary, text in zip(temporaries, ("one", "two")):
            temporary.write_text(text)
    assert [p.read_text() for p in targets] == ["one", "two"]
    assert sorted(p.name for p in targets[1].parent.iterdir()) == ["b.txt"]  # no temporaries left


def test_an_output_is_never_an_input_whatever_its_name(tmp_path):
    video = tmp_path / "in" / "clip.mp4"
    video.parent.mkdir()
    video.write_bytes(b"frames")
    (tmp_path / "link.mp4").symlink_to(video)
    (tmp_path / "hard.mp4").hardlink_to(video)
    for alias in (video, tmp_path / "link.mp4", tmp_path / "hard.mp4", tmp_path / "in" / ".." / "in" / "clip.mp4"):
        with pytest.raises(MVFormerError, match="is one of the inputs"):
            files.check_outputs([alias], overwrite=True, inputs=[video])
    with pytest.raises(MVFormerError, match="inside the input folder"):
        files.check_outputs([tmp_path / "in" / "sub" / "x.png"], overwrite=True, inputs=[video.parent])
    files.check_outputs([tmp_path / "x.png", tmp_path / "in.png"], overwrite=False, inputs=[video, video.parent])


# --- align -----------------------------------------------------------------------------------------------------


def dtw_reference(costs):
    """The textbook O(La * Lb) dynamic programme: the least total cost of a monotone path."""
    rows, cols = costs.shape
    total = np.full((rows + 1, cols + 1), np.inf)
    total[0, 0] = 0
    for i in range(1, rows + 1):
        for j in range(1, cols + 1):
            total[i, j] = costs[i - 1, j - 1] + min(total[i - 1, j - 1], total[i - 1, j], total[i, j - 1])
    return total[rows, cols]


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (7, 1), (9, 13), (20, 8)])
def test_dtw_path_is_monotone_complete_and_of_least_cost(shape):
    costs = np.random.default_rng(sum(shape)).random(shape)
    path = alignment.dtw_path(costs)
    assert tuple(path[0]) == (0, 0) and tuple(path[-1]) == (shape[0] - 1, shape[1] - 1)
    steps = np.diff(path, axis=0)
    assert np.all((steps >= 0) & (steps <= 1)) and np.all(steps.sum(axis=1) >= 1)
    assert costs[path[:, 0], path[:, 1]].sum() == pytest.approx(dtw_reference(costs))


def test_nearest_neighbour_path_and_shown_frames():
    costs = np.array([[3.0, 1.0, 2.0], [0.5, 4.0, 0.1], [1.0, 1.0, 0.0]])
    np.testing.assert_array_equal(alignment.nearest_neighbour_path(costs), [[0, 1], [1, 2], [2, 2]])
    path = np.array([[0, 0], [0, 1], [1, 2], [2, 2]])  # reference frame 0 pairs with 0 and 1: 1 is nearer
    np.testing.assert_array_equal(align.shown_frames(costs, path), [1, 2, 2])


@pytest.mark.parametrize("method", ["dtw", "nn"])
def test_aligning_a_video_with_itself_is_the_identity(checkpoint, videos, tmp_path, method):
    out = tmp_path / "self.mp4"
    (alignment,) = align.align_videos(checkpoint, videos[0], [videos[0]], out, method=method, height=64)
    length = len(read_video(videos[0]))
    identity = np.stack([np.arange(length)] * 2, axis=1)
    np.testing.assert_array_equal(alignment.path, identity)
    np.testing.assert_array_equal(alignment.shown, np.arange(length))
    rows = read_csv(tmp_path / "self_path.csv")
    assert rows[0] == ["video", "reference_frame", "frame", "distance"] and len(rows) == length + 1
    assert all(int(r[1]) == int(r[2]) and float(r[3]) < 1e-5 for r in rows[1:])
    video = read_video(out)
    assert video.shape == (length, 64, 128, 3)  # two 64x64 panels side by side
    above_bars = video[:, :60].astype(int)  # the bars (bottom 64 // 24 rows) differ in colour by design
    assert np.abs(above_bars[:, :, :64] - above_bars[:, :, 64:]).mean() < 1  # the same frames, up to H.264
    assert (tmp_path / "self_cost.png").stat().st_size > 0


def test_align_grid_of_videos_of_other_sizes_and_frame_rates(checkpoint, videos, tmp_path):
    wide = tmp_path / "wide.mp4"  # another size, aspect ratio and frame rate
    write_video(wide, viz.resize_frames(read_video(videos[1]), 48, 80), fps=10)
    out = tmp_path / "grid.gif"
    alignments = align.align_videos(checkpoint, videos[0], [videos[1], wide], out, height=64)
    length = len(read_video(videos[0]))
    frames = gif_frames(out)
    assert frames.shape == (length, 128, 212, 3)  # 2 x 2 cells, each 64 high and as wide as the widest (106)
    assert np.abs(frames[:, 64:, 106:].astype(int)).max() < 8  # the fourth cell is empty
    for aligned in alignments:
        assert tuple(aligned.path[0]) == (0, 0)
        assert tuple(aligned.path[-1]) == (length - 1, aligned.costs.shape[1] - 1)
    # progress bars: the reference's is empty on its first frame and full on its last
    bar_row = frames[:, 63, :106].astype(int)  # (T, 106, 3), the bottom row of the reference cell
    colour = viz.COLOURS[0].astype(int)
    assert np.abs(bar_row[-1] - colour).max() < 40 and np.abs(bar_row[0, 1:] - colour).max() > 40
    names = {row[0] for row in read_csv(tmp_path / "grid_path.csv")[1:]}
    assert names == {videos[1].stem, "wide"}


def test_align_refuses_short_videos_bad_outputs_and_existing_files(checkpoint, videos, tmp_path, capsys):
    single = tmp_path / "single.mp4"
    write_video(single, read_video(videos[0])[:1])
    out = tmp_path / "a.mp4"
    one_line_failure(["align", str(checkpoint), str(videos[0]), str(single), "--out", str(out)], capsys,
                     "single.mp4", "has 1 frame", "at least 2")
    one_line_failure(["align", str(checkpoint), str(videos[0]), str(videos[1]), "--out", str(tmp_path / "a.avi")],
                     capsys, "a.avi", ".mp4 or .gif")
    (tmp_path / "a_cost.png").write_bytes(b"")
    one_line_failure(["align", str(checkpoint), str(videos[0]), str(videos[1]), "--out", str(out)], capsys,
                     "a_cost.png", "already exists")
    assert main(["align", str(checkpoint), str(videos[0]), str(videos[1]), "--out", str(out), "--overwrite",
                 "--height", "32", "--no-progress"]) == 0
    assert read_video(out).shape[1:] == (32, 64, 3)


# --- retrieve --------------------------------------------------------------------------------------------------


def test_a_frame_retrieves_itself_first_at_distance_zero(root, checkpoint, videos, tmp_path):
    out = tmp_path / "sheet.png"
    matches = retrieve.retrieve_frames(checkpoint, videos[2], 7, [root], out, k=6)
    assert len(matches) == 6
    assert (matches[0].source, matches[0].frame) == (videos[2], 7) and matches[0].distance < 1e-6
    distances = [m.distance for m in matches]
    assert distances == sorted(distances) and distances[1] > 1e-4
    rows = read_csv(out.with_suffix(".csv"))
    assert rows[0] == ["rank", "video", "frame", "distance"] and rows[1][1:3] == [str(videos[2]), "7"]
    assert Image.open(out).size[0] > 0
    others = retrieve.retrieve_frames(checkpoint, videos[2], 7, [root], tmp_path / "others.png", k=3,
                                  skip_query_video=True)
    assert all(m.source != videos[2] for m in others) and others[0].distance >= distances[1] - 1e-9


def test_retrieval_input_errors(root, checkpoint, videos, tmp_path, capsys):
    assert retrieve.parse_frame_reference("dir:with:colons/clip.mp4:12") == (type(videos[0])("dir:with:colons/clip.mp4"),
                                                                        12)
    for spec in ("clip.mp4", "clip.mp4:-1", "clip.mp4:x", ":3"):
        with pytest.raises(MVFormerError, match="VIDEO:FRAME"):
            retrieve.parse_frame_reference(spec)
    one_line_failure(["retrieve", str(checkpoint), "--query", f"{videos[0]}:999", "--gallery", str(root),
                      "--out", str(tmp_path / "r.png")], capsys, "frame 999 out of range")
    one_line_failure(["retrieve", str(checkpoint), "--query", f"{videos[0]}:1", "--gallery", str(tmp_path),
                      "--out", str(tmp_path / "r.png")], capsys, "holds no videos")
    assert main(["retrieve", str(checkpoint), "--query", f"{videos[0]}:1", "--gallery", str(videos[1]),
                 "--out", str(tmp_path / "r.png"), "-k", "2", "--no-progress"]) == 0
    assert f"{videos[1]}:" in capsys.readouterr().out


# --- attention -------------------------------------------------------------------------------------------------


def test_attention_maps_sum_to_one_over_the_patch_grid(checkpoint, videos, tmp_path, monkeypatch):
    monkeypatch.setattr(videos_module, "DECODE_CHUNK", 7)
    maps = attention.attention_video(checkpoint, videos[0], tmp_path, every=2, strip_frames=4, display_size=64)
    frames = read_video(videos[0], size=64)
    assert maps.shape == (len(frames), 3, 8, 8)
    np.testing.assert_allclose(maps.sum(axis=(2, 3)), 1.0, atol=1e-5)
    model = model_from_checkpoint(checkpoint)
    patches, _ = model.backbone(model.prepare(frames))
    expected = model.head.pooling.attention(patches).detach().numpy().reshape(maps.shape)
    np.testing.assert_allclose(maps, expected, atol=1e-6)
    np.testing.assert_array_equal(np.load(tmp_path / "attention.npy"), maps)
    animation = gif_frames(tmp_path / "attention.gif")
    assert animation.shape == (math.ceil(len(frames) / 2), 64, 4 * 64, 3)  # the frame, then one panel per token
    assert Image.open(tmp_path / "attention_strip.png").size[0] > 0


def test_overlay_colours_the_attended_patch():
    images = np.zeros((1, 16, 16, 3), dtype=np.uint8)
    maps = np.full((1, 2, 2, 2), 0.25)
    maps[0, 0] = [[1.0, 0.0], [0.0, 0.0]]  # token 0 looks at the top-left patch only
    overlays = viz.overlay_attention(images, maps, strength=1.0)  # (1, 2, 16, 16, 3)
    np.testing.assert_array_equal(overlays[0, 0, 0, 0], viz.COLOURS[0])
    np.testing.assert_array_equal(overlays[0, 0, 15, 15], 0)
    assert overlays[0, 1].max() == 0  # a flat map marks nothing


def test_attention_needs_an_lstp_model(root, videos, tmp_path, capsys):
    late = write_checkpoint(tmp_path / "cls" / "checkpoint.pt", root, "model.pooling=cls", "model.num_tokens=1")
    one_line_failure(["attention", str(late), str(videos[0]), "--out", str(tmp_path / "att")], capsys,
                     "'cls'", "no spatial attention")


# --- progress --------------------------------------------------------------------------------------------------


def test_progress_against_labelled_reference(root, checkpoint, videos, tmp_path):
    out = tmp_path / "progress.png"
    result = progress.progress_against_reference(checkpoint, root, videos[4], out)
    length = len(read_video(videos[4]))
    assert result.predictions.shape == (length, len(phase_names) - 1)
    assert result.boundaries == [f"end of {name}" for name in phase_names[:-1]]
    assert 0.5 < result.reference_r2 <= 1.0  # even untrained, the time encoding carries progress
    rows = read_csv(out.with_suffix(".csv"))
    assert rows[0] == ["frame", "seconds", "end_of_approach", "end_of_tilt", "end_of_pour"]
    assert len(rows) == length + 1 and float(rows[-1][1]) == pytest.approx((length - 1) / 25)
    np.testing.assert_allclose(np.array(rows[1:], dtype=float)[:, 2:], result.predictions, atol=1e-6)
    assert np.all(np.diff(result.predictions[[0, -1]], axis=0) > 0)  # progress rises from first to last frame


def test_progress_needs_labels_and_two_phases(root, checkpoint, videos, tmp_path, capsys):
    unlabelled = tmp_path / "unlabelled"
    (unlabelled / "splits").mkdir(parents=True)
    (unlabelled / "videos").mkdir()
    (unlabelled / "videos" / videos[0].name).write_bytes(videos[0].read_bytes())
    (unlabelled / "splits" / "train.txt").write_text(f"{videos[0].stem}\n")
    args = ["progress", str(checkpoint), "--video", str(videos[1]), "--out", str(tmp_path / "p.png")]
    one_line_failure([*args, "--reference", str(unlabelled)], capsys, "no frame labels")
    (unlabelled / "labels").mkdir()
    (unlabelled / "labels" / f"{videos[0].stem}.csv").write_text(
        "frame,label\n" + "".join(f"{i},0\n" for i in range(len(read_video(videos[0])))))
    one_line_failure([*args, "--reference", str(unlabelled)], capsys, "at least two phases")
    assert main([*args, "--reference", str(root), "--no-progress"]) == 0
    assert "R^2" in capsys.readouterr().out


# --- pictures --------------------------------------------------------------------------------------------------


def test_tile_and_progress_bars_place_pixels_exactly():
    panels = [np.full((2, 4, 6, 3), value, dtype=np.uint8) for value in (10, 20, 30)]
    grid = viz.tile_videos(panels)  # 2 x 2 cells, the last empty
    assert grid.shape == (2, 8, 12, 3)
    assert grid[:, :4, :6].max() == 10 and grid[:, :4, 6:].min() == 20 and grid[:, 4:, :6].min() == 30
    assert grid[:, 4:, 6:].max() == 0
    frames = np.zeros((3, 48, 10, 3), dtype=np.uint8)
    marked = viz.draw_progress_bars(frames, np.array([0.0, 0.5, 1.0]), np.array([255, 0, 0], dtype=np.uint8))
    filled = (marked[:, -1, :, 0] == 255).sum(axis=1)
    np.testing.assert_array_equal(filled, [0, 5, 10])
    assert marked[:, :-2].max() == 0  # only the bottom two rows (48 // 24) hold the bar


def test_demo_pictures(root, checkpoint, tmp_path):
    written = pictures.write_demo_pictures(checkpoint.parent, root, tmp_path / "pictures")
    assert [p.name for p in written] == ["embeddings.png", "align.gif", "align_cost.png", "retrieve.png",
                                         "attention_strip.png", "attention.gif", "progress.png"]
    assert all(p.stat().st_size > 1000 for p in written)
