"""`mvformer evaluate-embeddings` and FineGym's SGD linear probe: scores equal the library's, bad files give one
line naming the file, undefined metrics are null."""

import json

import numpy as np
import pytest

from mvformer.cli import build_parser, main
from mvformer.config import load_config
from mvformer.evaluation import metrics
from mvformer.evaluation.embeddings_io import score_files
from mvformer.evaluation.time_only import time_only_files
from mvformer.evaluation.metrics import CLASSIFIERS, TASKS, classification_accuracy, evaluate_embeddings
from mvformer.evaluation.probes import predict_classes, train_sgd_linear_probe

NUM_CLASSES = 3


def make_split(rng, num_videos, class_means, unlabelled_share=0.15):
    """Per video: L2-normalised clustered embeddings (frames, D) and non-decreasing labels, some unlabelled (-1)."""
    embs, labels = [], []
    for _ in range(num_videos):
        length = int(rng.integers(10, 20))
        num_classes = len(class_means)
        video_labels = np.sort(np.concatenate([np.arange(num_classes),
                                               rng.integers(0, num_classes, size=length - num_classes)]))
        frames = class_means[video_labels] + 0.5 * rng.normal(size=(length, class_means.shape[1]))
        embs.append(frames / np.linalg.norm(frames, axis=1, keepdims=True))
        last_of_phase = np.append(np.diff(video_labels) != 0, True)  # progression needs every phase in every video
        video_labels[(rng.random(length) < unlabelled_share) & ~last_of_phase] = -1
        labels.append(video_labels)
    return embs, labels


def make_dataset(seed, num_train=6, num_val=4, dim=8):
    rng = np.random.default_rng(seed)
    class_means = 2 * rng.normal(size=(NUM_CLASSES, dim))
    return (*make_split(rng, num_train, class_means), *make_split(rng, num_val, class_means))


def write_npz(path, dataset, **replace):
    """The embeddings.npz layout: frames concatenated per split, split by *_lens; `replace` overrides arrays."""
    train_embs, train_labels, val_embs, val_labels = dataset
    arrays = {}
    for split, embs, labels in (("train", train_embs, train_labels), ("val", val_embs, val_labels)):
        arrays[f"{split}_embs"] = np.concatenate(embs)  # (frames, D)
        arrays[f"{split}_labels"] = np.concatenate(labels)  # (frames,)
        arrays[f"{split}_lens"] = np.array([len(e) for e in embs])  # (videos,)
        arrays[f"{split}_names"] = np.array([f"{split}{i}" for i in range(len(embs))])
    arrays.update(replace)
    arrays = {name: array for name, array in arrays.items() if array is not None}
    np.savez(path, **arrays)
    return path


def run(argv, capsys):
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err.strip()


def test_json_equals_evaluate_embeddings_called_directly(tmp_path, capsys):
    dataset = make_dataset(0)
    path = write_npz(tmp_path / "pour.npz", dataset)
    out = tmp_path / "scores.json"
    status, stdout, err = run(["evaluate-embeddings", str(path), "--stride", "2", "--ks", "2", "5",
                               "--fractions", "0.5", "1", "--json", str(out)], capsys)
    assert status == 0 and err == ""
    expected = evaluate_embeddings(*dataset, num_classes=NUM_CLASSES, fractions=(0.5, 1.0), ks=(2, 5), stride=2)
    written = json.loads(out.read_text())
    assert {key: written[key] for key in ("datasets", "mean")} == {"datasets": {"pour": expected}, "mean": expected}
    assert written["time_only"] == time_only_files([path], stride=2, ks=(2, 5), fractions=(0.5, 1.0))
    assert set(expected["classification"]) == {"0.5", "1.0"} and set(expected["retrieval"]) == {"2", "5"}
    table = stdout.splitlines()
    assert table[0].split() == ["dataset", "class@0.5", "class@1.0", "prog@0.5", "prog@1.0", "tau", "AP@2", "AP@5"]
    assert [line.split()[0] for line in table[1:4]] == ["pour", "mean", "time"]  # the time-only control row
    assert float(table[1].split()[5]) == pytest.approx(expected["kendalls_tau"], abs=1e-4)


def test_mean_over_two_datasets(tmp_path):
    first, second = make_dataset(1), make_dataset(2)
    paths = [write_npz(tmp_path / "a.npz", first), write_npz(tmp_path / "b.npz", second)]
    result = score_files(paths, ks=(5,), fractions=(1.0,))
    a, b = result["datasets"]["a"], result["datasets"]["b"]
    assert a == evaluate_embeddings(*first, num_classes=NUM_CLASSES, fractions=(1.0,), ks=(5,))
    assert result["mean"]["kendalls_tau"] == pytest.approx((a["kendalls_tau"] + b["kendalls_tau"]) / 2)
    assert result["mean"]["retrieval"]["5"] == pytest.approx((a["retrieval"]["5"] + b["retrieval"]["5"]) / 2)
    for task in ("classification", "progression"):
        assert result["mean"][task]["1.0"] == pytest.approx((a[task]["1.0"] + b[task]["1.0"]) / 2)


def test_files_with_the_same_name_are_told_apart_by_folder(tmp_path):
    paths = []
    for run_name in ("run1", "run2"):
        (tmp_path / run_name).mkdir()
        paths.append(write_npz(tmp_path / run_name / "embeddings.npz", make_dataset(3)))
    result = score_files(paths, tasks=("kendalls_tau",))
    assert list(result["datasets"]) == ["run1/embeddings", "run2/embeddings"]


def test_unlabelled_frames_are_left_out(tmp_path):
    train_embs, train_labels, val_embs, val_labels = make_dataset(4)
    assert any((labels < 0).any() for labels in train_labels + val_labels)
    rng = np.random.default_rng(5)

    def scramble_unlabelled(embs, labels):
        return [np.where((lab < 0)[:, None], rng.normal(size=e.shape), e) for e, lab in zip(embs, labels)]

    clean = write_npz(tmp_path / "clean.npz", (train_embs, train_labels, val_embs, val_labels))
    scrambled = write_npz(tmp_path / "scrambled.npz", (scramble_unlabelled(train_embs, train_labels), train_labels,
                                                       scramble_unlabelled(val_embs, val_labels), val_labels))
    result = score_files([clean, scrambled], stride=2, ks=(3,))
    for task, clean_scores in result["datasets"]["clean"].items():
        assert result["datasets"]["scrambled"][task] == pytest.approx(clean_scores, abs=1e-9)


def test_tasks_subset(tmp_path, capsys):
    path = write_npz(tmp_path / "a.npz", make_dataset(6))
    out = tmp_path / "scores.json"
    status, stdout, _ = run(["evaluate-embeddings", str(path), "--tasks", "kendalls_tau", "retrieval",
                             "--json", str(out)], capsys)
    assert status == 0
    written = json.loads(out.read_text())
    assert set(written["datasets"]["a"]) == set(written["mean"]) == {"kendalls_tau", "retrieval"}
    assert stdout.splitlines()[0].split() == ["dataset", "tau", "AP@5", "AP@10", "AP@15"]


@pytest.mark.parametrize("classifier", CLASSIFIERS)
def test_cli_accepts_every_library_task_and_classifier(classifier):
    args = build_parser().parse_args(["evaluate-embeddings", "a.npz", "--tasks", *TASKS, "--classifier", classifier])
    assert args.tasks == list(TASKS) and args.classifier == classifier


def bad_inputs(tmp_path):
    """(file, extra arguments, fragments the error must hold) per kind of bad input."""
    dataset = make_dataset(7)
    train_embs = np.concatenate(dataset[0])
    with_nan, with_inf = train_embs.copy(), train_embs.copy()
    with_nan[3, 1], with_inf[5, 0] = np.nan, np.inf
    text_file = tmp_path / "notes.npz"
    text_file.write_text("these are not embeddings\n")
    npy_file = tmp_path / "single.npy"
    np.save(npy_file, train_embs)
    return {
        "missing file": (tmp_path / "absent.npz", [], ["no such file"]),
        "text, not npz": (text_file, [], ["not an .npz archive"]),
        "npy, not npz": (npy_file, [], ["not an .npz archive"]),
        "missing array": (write_npz(tmp_path / "nolens.npz", dataset, val_lens=None), [], ["val_lens"]),
        "lengths": (write_npz(tmp_path / "lens.npz", dataset, train_lens=np.array([len(train_embs) - 1, 2])), [],
                    ["train_lens", "sum to"]),
        "nan": (write_npz(tmp_path / "nan.npz", dataset, train_embs=with_nan), [], ["train_embs", "NaN or Inf"]),
        "inf": (write_npz(tmp_path / "inf.npz", dataset, train_embs=with_inf), [], ["train_embs", "NaN or Inf"]),
        "labels length": (write_npz(tmp_path / "labels.npz", dataset,
                                    val_labels=np.concatenate(dataset[3])[:-1]), [], ["val_labels", "rows"]),
        "fraction above 1": (write_npz(tmp_path / "ok.npz", dataset), ["--fractions", "0.5", "1.5"],
                             ["--fractions", "1.5", "(0, 1]"]),
        "fraction 0": (write_npz(tmp_path / "ok.npz", dataset), ["--fractions", "0"], ["--fractions", "(0, 1]"]),
    }


@pytest.mark.parametrize("kind", ["missing file", "text, not npz", "npy, not npz", "missing array", "lengths",
                                  "nan", "inf", "labels length", "fraction above 1", "fraction 0"])
def test_bad_input_is_one_line_naming_the_file(kind, tmp_path, capsys):
    path, extra, fragments = bad_inputs(tmp_path)[kind]
    status, stdout, err = run(["evaluate-embeddings", str(path), *extra], capsys)
    assert status == 2 and stdout == ""
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("mvformer: error: ")
    if not kind.startswith("fraction"):  # an option's error names the option instead of a file
        assert str(path) in err
    for fragment in fragments:
        assert fragment in err


def test_a_bad_second_file_fails_before_any_scoring(tmp_path, capsys):
    good = write_npz(tmp_path / "good.npz", make_dataset(8))
    status, stdout, err = run(["evaluate-embeddings", str(good), str(tmp_path / "absent.npz")], capsys)
    assert status == 2 and stdout == "" and "absent.npz: no such file" in err
    status, stdout, err = run(["evaluate-embeddings", str(good), "--num-classes", "2"], capsys)
    assert status == 2 and stdout == "" and "good.npz: label 2 is out of range for --num-classes 2" in err


def test_single_validation_video_gives_null_tau_and_ap_and_a_note(tmp_path, capsys):
    train_embs, train_labels, val_embs, val_labels = make_dataset(9)
    path = write_npz(tmp_path / "one.npz", (train_embs, train_labels, val_embs[:1], val_labels[:1]))
    out = tmp_path / "scores.json"
    status, stdout, err = run(["evaluate-embeddings", str(path), "--json", str(out)], capsys)
    assert status == 0
    scores = json.loads(out.read_text())
    assert scores["datasets"]["one"]["kendalls_tau"] is None and scores["mean"]["kendalls_tau"] is None
    assert scores["datasets"]["one"]["retrieval"] == {"5": None, "10": None, "15": None}
    assert scores["datasets"]["one"]["classification"]["1.0"] is not None
    assert len(err.splitlines()) == 1 and str(path) in err and "kendalls_tau and retrieval skipped (n/a)" in err
    assert "1 validation video(s) with labelled frames" in err
    assert "n/a" in stdout


def test_mean_is_null_where_one_dataset_is_null(tmp_path):
    train_embs, train_labels, val_embs, val_labels = make_dataset(10)
    paths = [write_npz(tmp_path / "one.npz", (train_embs, train_labels, val_embs[:1], val_labels[:1])),
             write_npz(tmp_path / "many.npz", (train_embs, train_labels, val_embs, val_labels))]
    notes = []
    result = score_files(paths, tasks=("classification", "kendalls_tau", "retrieval"), ks=(5,), fractions=(1.0,),
                         note=notes.append)
    assert result["datasets"]["many"]["kendalls_tau"] is not None
    assert result["mean"]["kendalls_tau"] is None and result["mean"]["retrieval"] == {"5": None}
    assert result["mean"]["classification"]["1.0"] is not None
    assert len(notes) == 1 and "one.npz" in notes[0]


@pytest.mark.parametrize(("change", "skipped", "fragments"), [
    ("phase_missing", ("progression",), ("train video 'train2' has no frame of phase 1", "--tasks classification "
                                                                                          "kendalls_tau retrieval")),
    ("first_train_unlabelled", ("classification", "progression"),
     ("classification and progression skipped", "no labelled frame in the first 1 training video(s)")),
])
def test_a_task_the_labels_do_not_allow_is_skipped_and_the_rest_scored(tmp_path, capsys, change, skipped, fragments):
    """One line names the video and the phase (or the videos) and says how to leave the task out; the other
    tasks get exactly the scores they get when asked for alone."""
    train_embs, train_labels, val_embs, val_labels = make_dataset(11)
    if change == "phase_missing":
        train_labels[2] = np.where(train_labels[2] == 1, 0, train_labels[2])
    else:
        train_labels[0] = np.full_like(train_labels[0], -1)
    path = write_npz(tmp_path / "some.npz", (train_embs, train_labels, val_embs, val_labels))
    out = tmp_path / "scores.json"
    status, _, err = run(["evaluate-embeddings", str(path), "--fractions", "0.1", "1", "--json", str(out)], capsys)
    assert status == 0 and len(err.splitlines()) == 1 and str(path) in err
    for fragment in fragments:
        assert fragment in err
    scores = json.loads(out.read_text())["datasets"]["some"]
    kept = [task for task in TASKS if task not in skipped]
    alone = score_files([path], tasks=kept, fractions=(0.1, 1.0))["datasets"]["some"]
    for task in TASKS:
        if task in skipped:
            assert set(scores[task].values()) == {None}
        else:
            assert scores[task] == alone[task]


def test_pairwise_metrics_do_not_depend_on_the_tiling(monkeypatch):
    """Tiles of a few query rows x a few candidate videos (as on FineGym-sized sets) give the same numbers."""
    _, _, val_embs, val_labels = make_dataset(16, num_val=7)
    whole = metrics.kendalls_tau(val_embs, 2, val_labels), metrics.retrieval_precision(val_embs, val_labels, (3, 8))
    monkeypatch.setattr(metrics, "TAU_CANDIDATE_FRAMES", 20)
    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", 20 * 13)
    tiled = metrics.kendalls_tau(val_embs, 2, val_labels), metrics.retrieval_precision(val_embs, val_labels, (3, 8))
    assert tiled[0] == pytest.approx(whole[0], abs=1e-12)
    assert tiled[1] == pytest.approx(whole[1], abs=1e-12)


# ---------------------------------------------------------------- FineGym's SGD linear probe


def clustered_videos(seed, num_videos, num_classes=4, dim=16):
    """Linearly separable: each class a tight cluster around its own direction; L2-normalised frames."""
    rng = np.random.default_rng(seed)
    directions = np.eye(dim)[:num_classes] * 3
    videos = []
    for _ in range(num_videos):
        labels = np.sort(rng.integers(0, num_classes, size=int(rng.integers(15, 25))))
        frames = directions[labels] + 0.3 * rng.normal(size=(len(labels), dim))
        videos.append((frames / np.linalg.norm(frames, axis=1, keepdims=True), labels))
    return videos


def test_sgd_probe_separates_clusters_and_is_deterministic():
    train, val = clustered_videos(11, 23), clustered_videos(12, 8)
    val_features = np.concatenate([frames for frames, _ in val])
    val_classes = np.concatenate([labels for _, labels in val])
    first, second = train_sgd_linear_probe(train, 4), train_sgd_linear_probe(train, 4)
    assert np.mean(predict_classes(first, val_features) == val_classes) > 0.97
    assert first.out_features == 4 and first.in_features == 16
    for a, b in zip(first.parameters(), second.parameters()):
        assert np.array_equal(a.detach().numpy(), b.detach().numpy())


def test_sgd_probe_in_classification_accuracy_with_one_training_video():
    train, val = clustered_videos(13, 5), clustered_videos(14, 3)
    train_embs, train_labels = [f for f, _ in train], [lab for _, lab in train]
    val_embs, val_labels = [f for f, _ in val], [lab for _, lab in val]
    got = classification_accuracy(train_embs, train_labels, val_embs, val_labels, fractions=(0.1,),
                                  classifier="sgd-linear")  # 0.1 of 5 videos -> the first video only
    num_classes = int(max(max(lab.max() for lab in train_labels), max(lab.max() for lab in val_labels))) + 1
    probe = train_sgd_linear_probe(train[:1], num_classes)
    expected = np.mean(predict_classes(probe, np.concatenate(val_embs)) == np.concatenate(val_labels))
    assert got == {0.1: pytest.approx(expected, abs=1e-12)}
    assert 0 <= got[0.1] <= 1


def test_sgd_linear_classifier_from_the_cli_and_the_finegym_configs(tmp_path, capsys):
    dataset = make_dataset(15)
    path = write_npz(tmp_path / "gym.npz", dataset)
    out = tmp_path / "scores.json"
    status, _, _ = run(["evaluate-embeddings", str(path), "--tasks", "classification", "--fractions", "1",
                        "--classifier", "sgd-linear", "--num-classes", "5", "--json", str(out)], capsys)
    assert status == 0
    expected = evaluate_embeddings(*dataset, num_classes=5, fractions=(1.0,), tasks=("classification",),
                                   classifier="sgd-linear")
    assert json.loads(out.read_text())["datasets"]["gym"] == expected
    assert load_config("finegym99").eval.classifier == load_config("finegym288").eval.classifier == "sgd-linear"
    assert load_config("penn_action").eval.classifier == "logistic"


def test_json_is_replaced_only_with_overwrite(tmp_path, capsys):
    path = write_npz(tmp_path / "pour.npz", make_dataset(17))
    out = tmp_path / "scores.json"
    args = ["evaluate-embeddings", str(path), "--tasks", "kendalls_tau", "--json", str(out)]
    assert run(args, capsys)[0] == 0
    first = out.read_text()
    out.write_text("an earlier result")
    status, stdout, err = run(args, capsys)
    assert status == 2 and stdout == "" and "already exists" in err and out.read_text() == "an earlier result"
    assert run([*args, "--overwrite"], capsys)[0] == 0
    assert out.read_text() == first and json.loads(first)["datasets"]["pour"]["kendalls_tau"] is not None


def test_an_unlabelled_video_after_the_first_needs_no_phase(tmp_path):
    """The progression check skips videos without labelled frames, as the metric does."""
    train_embs, train_labels, val_embs, val_labels = make_dataset(18)
    train_labels[3] = np.full_like(train_labels[3], -1)
    path = write_npz(tmp_path / "a.npz", (train_embs, train_labels, val_embs, val_labels))
    result = score_files([path], tasks=("progression",), fractions=(1.0,))
    expected = metrics.phase_progression(train_embs, train_labels, val_embs, val_labels, NUM_CLASSES, (1.0,))
    assert result["datasets"]["a"]["progression"]["1.0"] == pytest.approx(expected[1.0], abs=1e-12)
