"""The five commands that use a model on videos (embed, align, retrieve, attention, progress), on tiny generated
videos and an untrained demo model: shapes, contents (what each picture shows: names, frame numbers, phases, one
attention scale), held-out scores, and one-line errors for bad input."""

import csv
import json
import math
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import r2_score

from bad_inputs import one_line_failure
from mvformer import files, viz
from mvformer.apps import align, attention, embed, pictures, progress, retrieve
from mvformer.apps import videos as videos_module
from mvformer.checkpoint import CHECKPOINT_VERSION, load_model, model_from_checkpoint, save_checkpoint
from mvformer.cli import main
from mvformer.config import load_config
from mvformer.data.datasets import VideoDataset
from mvformer.data.synthetic import generate_pouring_dataset, phase_names
from mvformer.data.video import read_video, write_video
from mvformer.errors import MVFormerError
from mvformer.evaluation import alignment
from mvformer.evaluation.metrics import progression_targets
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
    written = embed.embed_command(checkpoint, [root], tmp_path / "embs")
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
        assert info["config"] == load_model(checkpoint, "cpu").config.to_dict()


def test_embed_frame_folder_records_no_frame_rate(root, checkpoint, videos, tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    frames = read_video(videos[0])
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame_{index:04d}.png")
    crop_out = embed.embed_command(checkpoint, [folder], tmp_path / "embs", frames="crop")[0]
    info = json.loads(crop_out.with_suffix(".json").read_text())
    assert crop_out.name == "clip.npy" and info["fps"] is None and info["frame_mode"] == "crop"
    assert np.load(crop_out).shape == (len(frames), 32)


def test_embed_refuses_to_overwrite_and_same_names(root, checkpoint, videos, tmp_path):
    out = tmp_path / "embs"
    embed.embed_command(checkpoint, videos[:1], out)
    before = np.load(out / f"{videos[0].stem}.npy")
    with pytest.raises(MVFormerError, match="already exists; pass --overwrite"):
        embed.embed_command(checkpoint, videos[:2], out)
    assert not (out / f"{videos[1].stem}.npy").exists()  # refused before any work
    embed.embed_command(checkpoint, videos[:1], out, overwrite=True)
    np.testing.assert_array_equal(np.load(out / f"{videos[0].stem}.npy"), before)
    twin = tmp_path / "other" / videos[0].name
    twin.parent.mkdir()
    twin.write_bytes(videos[0].read_bytes())
    with pytest.raises(MVFormerError, match="also named"):
        embed.embed_command(checkpoint, [videos[0], twin], tmp_path / "twins")


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
    (written,) = embed.embed_command(checkpoint, [clip], tmp_path / "embs")
    assert written.name == "clip[1].npy" and np.load(written).shape == (len(read_video(clip)), 32)
    assert embed.embed_command(checkpoint, [clip.parent], tmp_path / "folder") == [tmp_path / "folder" / "clip[1].npy"]
    align.align_command(checkpoint, clip, [videos[1]], tmp_path / "a[0].gif", height=32)
    assert {row[0] for row in read_csv(tmp_path / "a[0]_path.csv")[1:]} == {videos[1].stem}


def test_a_folder_of_videos_with_a_picture_in_it_is_still_a_folder_of_videos(videos, tmp_path):
    for video in videos[:2]:
        (tmp_path / video.name).write_bytes(video.read_bytes())
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "sheet.png")
    assert videos_module.list_videos([tmp_path]) == [tmp_path / v.name for v in videos[:2]]


def test_non_finite_embeddings_are_never_returned(checkpoint, videos):
    """Weights the checkpoint check does not cover (the frozen backbone's) can still make NaN embeddings."""
    trained = load_model(checkpoint, "cpu")
    next(trained.model.backbone.buffers()).fill_(float("nan"))  # the demo's pixel backbone: a fixed position code
    with pytest.raises(MVFormerError, match="NaN or Inf embeddings"):
        videos_module.embed(trained, videos[0])


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


def nearest_of(picture, candidates):
    """Index of the candidate image nearest to `picture` in mean absolute difference: which source a decoded
    (lossy) picture shows, without a tolerance on the codec's error."""
    errors = [np.abs(picture.astype(int) - candidate.astype(int)).mean() for candidate in candidates]
    return int(np.argmin(errors))


@pytest.mark.parametrize("method", ["dtw", "nn"])
def test_aligning_a_video_with_itself_is_the_identity(root, checkpoint, videos, tmp_path, method):
    out = tmp_path / "self.mp4"
    (alignment,) = align.align_command(checkpoint, videos[0], [videos[0]], out, method=method, height=64)
    length = len(read_video(videos[0]))
    identity = np.stack([np.arange(length)] * 2, axis=1)
    np.testing.assert_array_equal(alignment.path, identity)
    np.testing.assert_array_equal(alignment.shown, np.arange(length))
    rows = read_csv(tmp_path / "self_path.csv")
    assert rows[0] == ["video", "reference_frame", "frame", "distance"] and len(rows) == length + 1
    assert all(int(r[1]) == int(r[2]) and float(r[3]) < 1e-5 for r in rows[1:])
    video = read_video(out)
    caption = 2 * viz.caption_line_height(64)  # two lines: the name; the frame number and phase
    assert video.shape == (length, 64 + caption, 128, 3)  # two 64x64 panels side by side, captioned
    source = read_video(videos[0])  # 64 x 64: shown as it is
    bar = 64 - max(2, 64 // 24)  # the progress bars' rows differ in colour by design
    for panel in (video[:, :bar, :64], video[:, :bar, 64:]):
        assert [nearest_of(frame, source[:, :bar]) for frame in panel] == list(range(length))
    phases = videos_module.phase_labels(videos[0], length)  # the synthetic dataset is labelled
    assert phases is not None and phases.names == list(phase_names)
    expected = [viz.caption(videos_module.frame_caption(f"{videos[0].stem} (reference)", f, length - 1, phases), 64,
                            caption // 2) for f in range(length)]
    for frame in (0, length // 2, length - 1):
        assert nearest_of(video[frame, 64:, :64], expected) == frame  # names the frame shown, and its phase
    assert (tmp_path / "self_cost.png").stat().st_size > 0


def test_phase_labels_are_found_beside_a_dataset_video_and_checked(root, videos, tmp_path):
    length = len(read_video(videos[1]))
    phases = videos_module.phase_labels(videos[1], length)
    rows = read_csv(root / "labels" / f"{videos[1].stem}.csv")[1:]
    assert [phases.name(f) for f in range(length)] == [label for _, label in rows] and not phases.transferred
    loose = tmp_path / videos[1].name  # outside a dataset: no labels
    loose.write_bytes(videos[1].read_bytes())
    assert videos_module.phase_labels(loose, length) is None
    with pytest.raises(MVFormerError, match=f"labels/{videos[1].stem}.csv has {length} rows but"):
        videos_module.phase_labels(videos[1], length + 1)


def test_align_grid_of_videos_of_other_sizes_and_frame_rates(checkpoint, videos, tmp_path):
    wide = tmp_path / "wide.mp4"  # another size, aspect ratio and frame rate
    write_video(wide, viz.resize_frames(read_video(videos[1]), 48, 80), fps=10)
    out = tmp_path / "grid.gif"
    alignments = align.align_command(checkpoint, videos[0], [videos[1], wide], out, height=64)
    length = len(read_video(videos[0]))
    frames = gif_frames(out)
    caption = 2 * viz.caption_line_height(64)
    assert frames.shape == (length, 64 + caption, 3 * 106, 3)  # one row of three cells, each as wide as the widest
    for aligned in alignments:
        assert tuple(aligned.path[0]) == (0, 0)
        assert tuple(aligned.path[-1]) == (length - 1, aligned.costs.shape[1] - 1)
    # progress bars: the reference's is empty on its first frame and full on its last
    bar_row = frames[:, 63, :106].astype(int)  # (T, 106, 3), the bottom row of the reference's picture
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
    assert read_video(out).shape[1:] == (32 + 2 * viz.caption_line_height(32), 64, 3)


# --- retrieve --------------------------------------------------------------------------------------------------


def test_retrieval_leaves_the_query_video_out_unless_asked(root, checkpoint, videos, tmp_path):
    out = tmp_path / "sheet.png"
    others = retrieve.retrieve_command(checkpoint, videos[2], 7, [root], out, k=6)
    assert len(others) == 6 and all(m.video.source != videos[2] for m in others)
    rows = read_csv(out.with_suffix(".csv"))
    assert rows[0] == ["rank", "video", "frame", "distance"] and videos[2].name not in "".join(r[1] for r in rows)
    assert Image.open(out).size[0] > 0
    matches = retrieve.retrieve_command(checkpoint, videos[2], 7, [root], tmp_path / "all.png", k=6,
                                       include_query_video=True)
    assert (matches[0].video.source, matches[0].frame) == (videos[2], 7) and matches[0].distance < 1e-6
    distances = [m.distance for m in matches]
    assert distances == sorted(distances) and distances[1] > 1e-4
    # the same search with the query's video among the candidates: the others' best are no nearer than before
    assert [(m.video.source, m.frame) for m in matches if m.video.source != videos[2]] == [
        (m.video.source, m.frame) for m in others][:len([m for m in matches if m.video.source != videos[2]])]


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
    monkeypatch.setattr(attention, "COMPOSE_BATCH", 3)  # several batches per chunk
    maps = attention.attention_command(checkpoint, videos[0], tmp_path, every=2, strip_frames=4,
                                       display_size=64).maps
    frames = read_video(videos[0], size=64)
    assert maps.shape == (len(frames), 3, 8, 8)
    np.testing.assert_allclose(maps.sum(axis=(2, 3)), 1.0, atol=1e-5)
    model = model_from_checkpoint(checkpoint)
    patches, _ = model.backbone(model.prepare(frames))
    expected = model.head.pooling.attention(patches).detach().numpy().reshape(maps.shape)
    np.testing.assert_allclose(maps, expected, atol=1e-6)
    np.testing.assert_array_equal(np.load(tmp_path / "attention.npy"), maps)
    assert not (tmp_path / "attention.gif").exists()  # an mp4 unless a gif is asked for
    with av.open(str(tmp_path / "attention.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, float(stream.average_rate)) == ("h264", 25 / 2)
    animation = read_video(tmp_path / "attention.mp4")
    caption, bar = 2 * viz.caption_line_height(64), viz.colourbar_image(64 + 2 * viz.caption_line_height(64), 1.0, "")
    # the frame, one panel per token, then the colour bar; every other frame
    assert animation.shape == (math.ceil(len(frames) / 2), 64 + caption, 4 * 64 + bar.shape[1], 3)
    assert Image.open(tmp_path / "attention_strip.png").size[0] > 0


def test_attention_keeps_the_aspect_ratio_and_writes_a_gif_on_request(checkpoint, videos, tmp_path):
    wide = tmp_path / "wide.mp4"
    write_video(wide, viz.resize_frames(read_video(videos[1]), 48, 80))
    attention.attention_command(checkpoint, wide, tmp_path / "squash", display_size=48)
    squashed = read_video(tmp_path / "squash" / "attention.mp4")
    width = viz.display_width(48, 80, 48)  # the whole frame, as wide as it is: 80
    caption = 2 * viz.caption_line_height(48)
    bar = viz.colourbar_image(48 + caption, 1.0, "").shape[1]
    source = read_video(wide)
    assert squashed.shape == (len(source), 48 + caption, 4 * width + bar, 3)
    assert [nearest_of(frame, source) for frame in squashed[:, :48, :width]] == list(range(len(source)))
    attention.attention_command(checkpoint, wide, tmp_path / "crop", display_size=48, frames="crop", animation="gif",
                              every=3)
    cropped = gif_frames(tmp_path / "crop" / "attention.gif")
    assert cropped.shape == (math.ceil(len(source) / 3), 48 + caption, 4 * 48 + bar, 3)  # the centre square
    assert not (tmp_path / "crop" / "attention.mp4").exists()


def test_overlay_shows_attention_on_one_scale():
    images = np.zeros((1, 16, 16, 3), dtype=np.uint8)
    maps = np.full((1, 2, 2, 2), 0.25)  # token 1: spread evenly over the four patches
    maps[0, 0] = [[1.0, 0.0], [0.0, 0.0]]  # token 0 looks at the top-left patch only
    table = viz.colour_table(viz.ATTENTION_MAP)
    overlays = viz.overlay_attention(images, maps, scale=4.0, strength=1.0)  # (1, 2, 16, 16, 3); 4 = 1.0 x patches
    np.testing.assert_array_equal(overlays[0, 0, 0, 0], table[255])  # the top of the scale
    np.testing.assert_array_equal(overlays[0, 0, 15, 15], table[0])
    np.testing.assert_array_equal(overlays[0, 1], np.broadcast_to(table[64], (16, 16, 3)))  # 1 of 4: round(255 / 4)
    half = viz.overlay_attention(np.full((1, 16, 16, 3), 200, dtype=np.uint8), maps, scale=4.0, strength=0.5)
    np.testing.assert_array_equal(half[0, 1, 0, 0], (200 * 128 + table[64].astype(int) * 128 + 128) >> 8)


def test_attention_needs_an_lstp_model(root, videos, tmp_path, capsys):
    late = write_checkpoint(tmp_path / "cls" / "checkpoint.pt", root, "model.pooling=cls", "model.num_tokens=1")
    one_line_failure(["attention", str(late), str(videos[0]), "--out", str(tmp_path / "att")], capsys,
                     "'cls'", "no spatial attention")


# --- progress --------------------------------------------------------------------------------------------------


def heldout_r2_by_hand(embs, labels, num_classes):
    """Leave one video out with numpy least squares: fit on the other videos' labelled frames (an intercept
    column), predict the video's; then 1 - SS_res / SS_tot per boundary over all predictions, averaged."""
    truths, predictions = [], []
    for held in range(len(embs)):
        rows = [(np.c_[np.ones(len(e)), e][l >= 0], progression_targets(l, num_classes)[l >= 0])
                for i, (e, l) in enumerate(zip(embs, labels)) if i != held]
        weights = np.linalg.lstsq(np.concatenate([x for x, _ in rows]), np.concatenate([y for _, y in rows]),
                                  rcond=None)[0]
        kept = labels[held] >= 0
        predictions.append(np.c_[np.ones(kept.sum()), embs[held][kept]] @ weights)
        truths.append(progression_targets(labels[held], num_classes)[kept])
    truth, predicted = np.concatenate(truths), np.concatenate(predictions)
    return float(np.mean(1 - ((truth - predicted) ** 2).sum(0) / ((truth - truth.mean(0)) ** 2).sum(0)))


def test_heldout_r2_is_leave_one_video_out_and_not_the_fit():
    rng = np.random.default_rng(0)
    sizes = ((4, 6, 5), (7, 5, 9), (6, 8, 4), (5, 5, 10))  # frames of three phases in four videos, unlike each other
    labels = [np.repeat([0, 1, 2], n) for n in sizes]
    labels[1][:2] = -1  # unlabelled frames take no part
    embs = [rng.normal(size=(len(l), 8)) for l in labels]
    # every fold is a well-posed least-squares problem (at least 53 frames, 9 unknowns), solved in float64 by two
    # routes: they agree to rounding (about 1e-13 here), far inside 1e-9
    assert progress.heldout_r2(embs, labels, 3) == pytest.approx(heldout_r2_by_hand(embs, labels, 3), abs=1e-9)
    noise = [rng.normal(size=(len(l), 66)) for l in labels]  # nearly as many dimensions as labelled frames (72)
    features = np.concatenate([e[l >= 0] for e, l in zip(noise, labels)])
    targets = np.concatenate([progression_targets(l, 3)[l >= 0] for l in labels])
    assert progress.fit_progress(noise, labels, 3).score(features, targets) > 0.9  # noise fits its own videos...
    assert progress.heldout_r2(noise, labels, 3) < 0  # ...and predicts others worse than their mean
    signal = [np.nan_to_num(np.c_[progression_targets(l, 3), rng.normal(size=(len(l), 2))]) for l in labels]
    # embeddings holding the targets themselves: every fold's fit is exact, so R^2 is 1 up to rounding
    assert progress.heldout_r2(signal, labels, 3) == pytest.approx(1.0, abs=1e-9)
    assert progress.heldout_r2(embs[:1], labels[:1], 3) is None  # one video: nothing to hold out


def test_repeated_phases_are_found():
    assert progress.repeated_phase(np.array([0, 0, 1, 1, 0, 1])) == 0  # up, down, up, down
    assert progress.repeated_phase(np.array([0, -1, 0, 1, 1, 2])) is None  # an unlabelled gap splits nothing
    assert progress.repeated_phase(np.array([-1, 2, 1, 2])) == 2


def test_progress_against_labelled_reference(root, checkpoint, videos, tmp_path):
    out = tmp_path / "progress.png"
    said = []
    result = progress.progress_command(checkpoint, root, videos[4], out, say=said.append)
    assert said == []  # each phase once per video: nothing to warn about
    length = len(read_video(videos[4]))
    assert result.predictions.shape == (length, len(phase_names) - 1)
    assert result.boundaries == [f"end of {name}" for name in phase_names[:-1]]
    trained = load_model(checkpoint, "cpu")
    dataset = VideoDataset(root, "train")
    embs = [videos_module.embed(trained, r.path).embeddings for r in dataset.records]
    labels = [r.labels for r in dataset.records]
    assert result.heldout_r2 == progress.heldout_r2(embs, labels, len(phase_names))  # over every reference video
    truth = progression_targets(VideoDataset(root, "val").records[0].labels, len(phase_names))
    np.testing.assert_allclose(result.truth, truth)  # the val video's own labels: drawn as ground truth
    assert result.video_r2 == r2_score(truth, result.predictions)
    rows = read_csv(out.with_suffix(".csv"))
    assert rows[0] == ["frame", "seconds", "end_of_approach", "end_of_tilt", "end_of_pour"]
    assert len(rows) == length + 1 and float(rows[-1][1]) == pytest.approx((length - 1) / 25)
    np.testing.assert_allclose(np.array(rows[1:], dtype=float)[:, 2:], result.predictions, atol=1e-6)
    # a reference video is never fitted on when it is the video: its curve is the other references' regressor's
    own = progress.progress_command(checkpoint, root, videos[0], tmp_path / "own.png")
    others = progress.fit_progress(embs[1:], labels[1:], len(phase_names))
    np.testing.assert_array_equal(own.predictions, others.predict(embs[0].astype(np.float64)))


def test_progress_warns_once_of_phases_that_repeat(root, checkpoint, videos, tmp_path):
    cyclic = Path(shutil.copytree(root, tmp_path / "cyclic"))
    label_file = cyclic / "labels" / f"{videos[1].stem}.csv"
    rows = read_csv(label_file)[1:]
    rows[-1][1] = "approach"  # the last frame goes back to the first phase
    label_file.write_text("frame,label\n" + "".join(f"{frame},{label}\n" for frame, label in rows))
    said = []
    progress.progress_command(checkpoint, cyclic, cyclic / "videos" / videos[4].name,
                                        tmp_path / "p.png", say=said.append)
    assert len(said) == 1 and "phases repeat within 1 video" in said[0] and f"{videos[1].stem}: 'approach'" in said[0]


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
    panels = [np.full((2, 4, 6, 3), value, dtype=np.uint8) for value in (10, 20, 30, 40, 50)]
    assert viz.grid_shape(3) == (1, 3) and viz.grid_shape(4) == (2, 2) and viz.grid_shape(5) == (2, 3)
    grid = viz.tile_videos(panels[:3])  # one row: no empty cell
    assert grid.shape == (2, 4, 18, 3)
    assert [grid[:, :, 6 * i:6 * (i + 1)].max() for i in range(3)] == [10, 20, 30]
    grid = viz.tile_videos(panels)  # 2 x 3, the short last row centred on the caption grey
    assert grid.shape == (2, 8, 18, 3)
    assert grid[:, 4:, 3:9].min() == grid[:, 4:, 3:9].max() == 40 and grid[:, 4:, 9:15].min() == 50
    np.testing.assert_array_equal(grid[:, 4:, :3], np.broadcast_to(viz.BAR_BACKGROUND, (2, 4, 3, 3)))
    np.testing.assert_array_equal(grid[:, 4:, 15:], np.broadcast_to(viz.BAR_BACKGROUND, (2, 4, 3, 3)))
    frames = np.zeros((3, 48, 10, 3), dtype=np.uint8)
    marked = viz.draw_progress_bars(frames, np.array([0.0, 0.5, 1.0]), np.array([255, 0, 0], dtype=np.uint8))
    filled = (marked[:, -1, :, 0] == 255).sum(axis=1)
    np.testing.assert_array_equal(filled, [0, 5, 10])
    assert marked[:, :-2].max() == 0  # only the bottom two rows (48 // 24) hold the bar


def test_captions_are_drawn_under_their_frames():
    frames = np.zeros((2, 20, 60, 3), dtype=np.uint8)
    lines = [(((f"frame {i}", viz.TEXT_COLOUR),), (("up", (255, 0, 0)),)) for i in range(2)]
    captioned = viz.add_captions(frames, lines)
    height = viz.caption_line_height(20)
    assert captioned.shape == (2, 20 + 2 * height, 60, 3) and captioned[:, :20].max() == 0
    assert (captioned[0, 20:] != captioned[1, 20:]).any()  # the frame numbers differ
    red = captioned[:, 20 + height:]  # the second line: red text on grey
    assert ((red[..., 0] > 200) & (red[..., 1] < 60)).any()
    np.testing.assert_array_equal(viz.caption(lines[0], 60, height), captioned[0, 20:])
    long = viz.caption(((("x" * 200, viz.TEXT_COLOUR),),), 60, height)  # cut at the edge, not wrapped or lost
    assert long.shape == (height, 60, 3)


def test_demo_pictures(root, checkpoint, tmp_path):
    written = pictures.write_demo_pictures(load_model(checkpoint.parent, "cpu"), root, tmp_path / "pictures")
    assert [p.name for p in written] == ["embeddings.png", "align.gif", "align_cost.png", "retrieve.png",
                                         "attention_strip.png", "attention.mp4", "progress.png"]
    assert all(p.stat().st_size > 1000 for p in written)
