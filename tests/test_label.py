"""`mvformer label`: label transfer along alignment paths (votes, K nearest references, the relative-time
baseline, frame accuracy and boundary errors against plain-loop forms), the command end to end on a briefly trained
demo model, and one-line errors that leave nothing half-written."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bad_inputs import one_line_failure
from tiny_runs import trained_demo_run
from mvformer.apps import label as label_app
from mvformer.apps.videos import embed, output_name
from mvformer.checkpoint import load_model
from mvformer.cli import main
from mvformer.data.datasets import VideoDataset
from mvformer.data.synthetic import phase_names
from mvformer.data.video import read_video, write_video
from mvformer.errors import MVFormerError
from mvformer.evaluation import transfer
from mvformer.evaluation.time_only import TIME_ONLY_MARGIN

# --- transfer: votes, decisions, baseline -----------------------------------------------------------------------


def test_votes_split_over_paired_labelled_frames_by_hand():
    path = np.array([[0, 0], [1, 0], [1, 1], [2, 2]])  # target frame 1 pairs with reference frames 0 and 1
    votes = transfer.path_votes(path, np.array([0, 1, -1]), num_frames=3, num_classes=2)
    np.testing.assert_allclose(votes, [[1, 0], [0.5, 0.5], [0, 0]])  # frame 2 pairs only with an unlabelled frame
    labels, confidence = transfer.decide(votes + np.array([[0, 0], [0, 1], [0, 0]]))
    np.testing.assert_array_equal(labels, [0, 1, -1])
    np.testing.assert_allclose(confidence, [1.0, 0.75, 0.0])


def test_relative_time_path_by_hand():
    np.testing.assert_array_equal(transfer.relative_time_path(5, 3), [[0, 0], [1, 0], [2, 1], [3, 2], [4, 2]])
    np.testing.assert_array_equal(transfer.relative_time_path(3, 7)[:, 1], [0, 3, 6])


def plain_transfer(target, references, reference_labels, num_classes, method, k):
    """The transfer written out frame by frame: costs, paths and votes by loops."""
    costs = [np.array([[np.sum((a - b) ** 2) for b in ref] for a in target]) for ref in references]
    paths = [transfer.dtw_path(c) if method == "dtw" else np.array([[i, int(np.argmin(row))] for i, row in
                                                                    enumerate(c)]) for c in costs]
    mean_costs = [np.mean([c[i, j] for i, j in p]) for c, p in zip(costs, paths)]
    chosen = sorted(range(len(references)), key=lambda r: mean_costs[r])[:k]
    votes = np.zeros((len(target), num_classes))
    for r in chosen:
        for frame in range(len(target)):
            paired = [j for i, j in paths[r] if i == frame and reference_labels[r][j] >= 0]
            for j in paired:
                votes[frame, reference_labels[r][j]] += 1 / len(paired)
    return votes, chosen


@pytest.mark.parametrize("method,k", [("dtw", None), ("dtw", 2), ("nn", 1), ("nn", None)])
def test_transfer_equals_the_plain_loop_form(method, k):
    rng = np.random.default_rng(7)

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    target = unit(rng.normal(size=(11, 6)))
    references = [unit(rng.normal(size=(n, 6))) for n in (9, 14, 7)]
    labels = [rng.integers(-1, 3, size=len(r)) for r in references]
    result = transfer.transfer_labels(target, references, labels, 3, method, k)
    votes, chosen = plain_transfer(target, references, labels, 3, method, k or 3)
    np.testing.assert_array_equal(result.references, chosen)
    cast = votes.sum(axis=1)
    np.testing.assert_array_equal(result.labels, np.where(cast > 0, votes.argmax(axis=1), -1))
    np.testing.assert_allclose(result.confidence, np.where(cast > 0, votes.max(axis=1) / np.maximum(cast, 1e-12), 0))


def test_an_identical_reference_is_nearest_and_lends_its_labels():
    rng = np.random.default_rng(1)
    target = rng.normal(size=(12, 4))
    target /= np.linalg.norm(target, axis=1, keepdims=True)
    own = np.repeat([0, 1, 2], 4)
    others = [np.roll(target, 5, axis=0), target[::-1].copy()]
    result = transfer.transfer_labels(target, [others[0], target, others[1]], [own[::-1], own, own], 3, "dtw", 1)
    np.testing.assert_array_equal(result.references, [1])
    assert result.costs[1] == pytest.approx(0, abs=1e-12) and result.costs.min() == result.costs[1]
    np.testing.assert_array_equal(result.labels, own)
    np.testing.assert_array_equal(result.confidence, 1.0)
    # By relative time: frame t pairs with own[t] and with frame rint(t * 5 / 11) of [0, 0, 0, 2, 2, 2], whose
    # labels are 0 for t < 6 and 2 after; frames 4-7 get one vote each for two phases, the lower phase wins.
    baseline = transfer.relative_time_labels(12, [own, np.repeat([0, 2], 3)], 3)
    np.testing.assert_array_equal(baseline.labels, [0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    np.testing.assert_allclose(baseline.confidence, [1, 1, 1, 1, .5, .5, .5, .5, 1, 1, 1, 1])


def test_references_without_labelled_frames_are_refused():
    with pytest.raises(MVFormerError, match="swing2: no frame is labelled"):
        transfer.check_references([np.array([0, 1]), np.array([-1, -1])], ["swing1", "swing2"])


# --- scores ------------------------------------------------------------------------------------------------------


def plain_boundary_errors(predicted, truth, num_classes):
    """Per phase: true entries, missed ones, mean distance to the nearest predicted entry (loops)."""
    def entries(labels):
        return [(t, labels[t]) for t in range(1, len(labels))
                if labels[t] != labels[t - 1] and labels[t] >= 0 and labels[t - 1] >= 0]
    errors = {c: [] for c in range(num_classes)}
    missed = dict.fromkeys(range(num_classes), 0)
    for p, t in zip(predicted, truth):
        found = entries(p)
        for frame, phase in entries(t):
            candidates = [abs(frame - f) for f, c in found if c == phase]
            if candidates:
                errors[phase].append(min(candidates))
            else:
                missed[phase] += 1
    return [{"boundaries": len(errors[c]) + missed[c], "missed": missed[c],
             "mean_error": float(np.mean(errors[c])) if errors[c] else None} for c in range(num_classes)]


def test_boundary_errors_equal_the_plain_loop_form():
    rng = np.random.default_rng(3)
    truth = [np.repeat(rng.integers(-1, 4, size=8), rng.integers(1, 6, size=8)) for _ in range(6)]
    predicted = [np.where(rng.random(len(t)) < 0.2, rng.integers(-1, 4, size=len(t)), np.roll(t, 2)) for t in truth]
    predicted[0][:] = 0  # a video that never enters phases 1-3: its boundaries into them are missed
    result = transfer.boundary_errors(predicted, truth, 4)
    assert result == plain_boundary_errors(predicted, truth, 4)
    assert sum(entry["missed"] for entry in result) > 0


def test_scores_by_hand():
    truth = [np.array([0, 0, 1, 1, 1, 2]), np.array([-1, 0, 0, 1, 2, 2])]
    predicted = [np.array([0, 1, 1, 1, 2, 2]), np.array([2, 0, 1, 1, 1, 2])]
    scores = transfer.score_transfer(predicted, truth, 3, ["a", "b", "c"])
    assert scores["frame_accuracy"] == pytest.approx(7 / 11)  # the unlabelled frame does not count
    # entries into b: frame 2 (found at 1: 1) and frame 3 (found at 2: 1); into c: 5 (found 4: 1), 4 (found 5: 1)
    assert scores["boundary_error"] == {"a": {"boundaries": 0, "missed": 0, "mean_error": None},
                                        "b": {"boundaries": 2, "missed": 0, "mean_error": 1.0},
                                        "c": {"boundaries": 2, "missed": 0, "mean_error": 1.0}}


# --- the command ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory):
    """Synthetic pouring videos and a demo model trained on them for three epochs."""
    return trained_demo_run(tmp_path_factory.mktemp("label"))


@pytest.fixture(scope="module")
def copies(run_and_data, tmp_path_factory):
    """Another dataset root holding a copy of training video 1 (under a new name) and a validation video, with
    their hand labels and the same classes."""
    _, root = run_and_data
    other = tmp_path_factory.mktemp("other")
    (other / "videos").mkdir()
    (other / "labels").mkdir()
    for source, name in (("pour_001", "twin"), ("pour_005", "pour_005")):
        shutil.copy(root / "videos" / f"{source}.mp4", other / "videos" / f"{name}.mp4")
        shutil.copy(root / "labels" / f"{source}.csv", other / "labels" / f"{name}.csv")
    shutil.copy(root / "classes.txt", other / "classes.txt")
    return other


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_label_writes_a_dataset_and_scores_against_relative_time(run_and_data, copies, tmp_path, capsys):
    run, root = run_and_data
    out = tmp_path / "labelled"
    videos = [copies / "videos" / "twin.mp4", copies / "videos" / "pour_005.mp4", root / "videos" / "pour_002.mp4"]
    assert main(["label", str(run), "--reference", str(root), "--videos", *map(str, videos), "--out", str(out),
                 "--references", "1", "--score", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "transfer.json").read_text())

    # The twin's nearest reference is the video it copies (alignment cost 0): it gets those labels exactly.
    assert list(summary["videos"]["twin"]["references"]) == ["pour_001"]
    assert summary["videos"]["twin"]["references"]["pour_001"] == pytest.approx(0, abs=1e-5)
    dataset = VideoDataset(out, "all")  # the output is itself a dataset
    assert [r.name for r in dataset.records] == ["twin", "pour_005", "pour_002"]
    assert dataset.classes == list(phase_names) and dataset.labelled
    original = VideoDataset(root, "train").records[1]
    np.testing.assert_array_equal(dataset.records[0].labels, original.labels)
    assert dataset.records[0].num_frames == original.num_frames
    # A reference is never its own reference.
    assert "pour_002" not in summary["videos"]["pour_002"]["references"]
    confidence = read_rows(out / "confidence" / "pour_005.csv")
    assert confidence[0] == ["frame", "label", "confidence"] and len(confidence) == dataset.records[1].num_frames + 1
    assert [row[1] for row in confidence[1:]] == [phase_names[c] for c in dataset.records[1].labels]
    (lender,) = summary["videos"]["pour_005"]["references"]
    trained = load_model(run, "cpu")
    lender_record = next(r for r in VideoDataset(root, "train").records if r.name == lender)
    expected = transfer.transfer_labels(embed(trained, videos[1]).embeddings,
                                        [embed(trained, lender_record.path).embeddings],
                                        [lender_record.labels], 4)
    np.testing.assert_array_equal(dataset.records[1].labels, expected.labels)
    np.testing.assert_allclose([float(row[2]) for row in confidence[1:]], expected.confidence, atol=5e-5)

    # Scores: every video lies in a dataset root with labels beside it, so all three are scored.
    truths = [original.labels, VideoDataset(root, "val").records[1].labels,
              VideoDataset(root, "train").records[2].labels]
    predicted = [r.labels for r in dataset.records]
    expected = transfer.score_transfer(predicted, truths, 4, phase_names)
    scores = summary["scores"]
    assert scores["transfer"] == expected and scores["videos"] == 3
    assert scores["labelled_frames"] == sum(len(t) for t in truths)
    train_records = VideoDataset(root, "train").records
    names = [r.name for r in train_records]
    baseline = [transfer.relative_time_labels(len(t), [r.labels for r in train_records], 4,
                                              [names.index(n) for n in summary["videos"][video]["references"]]).labels
                for t, video in zip(truths, ["twin", "pour_005", "pour_002"])]
    assert scores["relative_time"] == transfer.score_transfer(baseline, truths, 4, phase_names)
    rows = {line.split("  ")[0]: line.split() for line in printed.splitlines() if line.startswith(("align", "rel"))}
    assert rows["alignment transfer"][2] == f"{expected['frame_accuracy']:.4f}"
    assert rows["relative time alone"][3] == f"{scores['relative_time']['frame_accuracy']:.4f}"
    gain = expected["frame_accuracy"] - scores["relative_time"]["frame_accuracy"]
    assert (f"warning: alignment gains {gain:+.4f} frame accuracy" in printed) == (gain < TIME_ONLY_MARGIN)


def test_split_names_the_targets_and_reference_split_the_lenders(run_and_data, tmp_path, capsys):
    """`--split val` labels exactly the reference root's val videos, from its train videos (--reference-split),
    scored against their own hand labels: the same result as listing those videos by hand."""
    run, root = run_and_data
    by_split, by_hand = tmp_path / "by_split", tmp_path / "by_hand"
    val_videos = [str(record.path) for record in VideoDataset(root, "val").records]
    common = ["--reference", str(root), "--reference-split", "train", "--score", "--no-progress"]
    assert main(["label", str(run), *common, "--split", "val", "--out", str(by_split)]) == 0
    assert main(["label", str(run), *common, "--videos", *val_videos, "--out", str(by_hand)]) == 0
    capsys.readouterr()
    from_split, from_hand = (json.loads((out / "transfer.json").read_text()) for out in (by_split, by_hand))
    assert list(from_split["videos"]) == [Path(video).stem for video in val_videos]
    assert from_split["scores"] == from_hand["scores"] and from_split["scores"]["videos"] == len(val_videos)
    one_line_failure(["label", str(run), "--reference", str(root), "--split", "test", "--out", str(tmp_path / "x")],
                     capsys, "splits/test.txt")


def nothing_left(out):
    """Neither the output nor a staging folder beside it."""
    return not out.exists() and not list(out.parent.glob(f".{out.name}.*"))


def test_bad_input_is_one_line_and_writes_nothing(run_and_data, copies, tmp_path, capsys):
    run, root = run_and_data
    out = tmp_path / "out"
    video = str(root / "videos" / "pour_005.mp4")

    unlabelled = tmp_path / "unlabelled"
    shutil.copytree(root, unlabelled)
    shutil.rmtree(unlabelled / "labels")
    one_line_failure(["label", str(run), "--reference", str(unlabelled), "--videos", video, "--out", str(out)],
                     capsys, "no frame labels")

    renamed = tmp_path / "renamed"
    shutil.copytree(copies, renamed)
    (renamed / "classes.txt").write_text("\n".join(reversed(phase_names)) + "\n")
    one_line_failure(["label", str(run), "--reference", str(root), "--videos", str(renamed / "videos" / "twin.mp4"),
                      "--out", str(out), "--score"], capsys, "classes.txt", "same classes")

    single = tmp_path / "single.mp4"
    write_video(single, read_video(video)[:1])
    one_line_failure(["label", str(run), "--reference", str(root), "--videos", str(single), "--out", str(out)],
                     capsys, "single.mp4", "has 1 frame")

    one_line_failure(["label", str(run), "--reference", str(root), "--videos", video, "--out", str(out),
                      "--references", "0"], capsys, "--references 0")
    loose = tmp_path / "loose.mp4"  # no dataset root around it, so no hand labels
    shutil.copy(video, loose)
    one_line_failure(["label", str(run), "--reference", str(root), "--videos", str(loose), "--out", str(out),
                      "--score"], capsys, "--score", "none of the videos has hand labels")
    assert nothing_left(out)

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    one_line_failure(["label", str(run), "--reference", str(root), "--videos", video, "--out", str(mine)],
                     capsys, "already exists", "--overwrite")
    one_line_failure(["label", str(run), "--reference", str(root), "--videos", video, "--out", str(mine),
                      "--overwrite"], capsys, "not an earlier output")
    assert (mine / "notes.txt").read_text() == "keep me"


def test_a_failure_while_writing_leaves_the_previous_output(run_and_data, tmp_path, monkeypatch):
    run, root = run_and_data
    out = tmp_path / "out"
    video = root / "videos" / "pour_005.mp4"
    label_app.label_command(run, root, [video], out, device="cpu", log=lambda line: None)
    before = (out / "labels" / "pour_005.csv").read_text()

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(label_app, "write_split", broken)
    with pytest.raises(MVFormerError, match=r"out: cannot write it \(disk full\); nothing was replaced"):
        label_app.label_command(run, root, [video, root / "videos" / "pour_006.mp4"], out, overwrite=True,
                                device="cpu")
    assert (out / "labels" / "pour_005.csv").read_text() == before and not (out / "labels" / "pour_006.csv").exists()
    assert not list(tmp_path.glob(".out.*"))


def test_names_a_split_file_cannot_hold_are_refused_before_any_work(run_and_data, tmp_path, capsys):
    run, root = run_and_data
    odd = tmp_path / "two\nlines.mp4"
    shutil.copy(root / "videos" / "pour_005.mp4", odd)
    one_line_failure(["label", str(run), "--reference", str(root), "--videos", str(odd), "--out",
                      str(tmp_path / "out")], capsys, "'two\\nlines' cannot be a video's name in a split file")
    assert nothing_left(tmp_path / "out")
    (tmp_path / "clips").mkdir()
    assert output_name(tmp_path / "clips" / "..") == tmp_path.name  # named by the folder it means, not '..'
