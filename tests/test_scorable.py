"""Score what can be scored: the rules of `evaluation.scorable` on hand-made labels, and every scorer (training,
`evaluate`, `report`'s rows) on a real run whose one validation video has no frame of the first phase."""

import csv
import json
import shutil

import numpy as np
import pytest

from mvformer.apps.report import run_metrics
from mvformer.cli import main
from mvformer.config import load_config
from mvformer.data.synthetic import generate_pouring_dataset
from mvformer.errors import MVFormerError
from mvformer.evaluation.metrics import evaluate_embeddings
from mvformer.evaluation.scorable import TASKS, skip_lines, unscorable_tasks
from mvformer.runs import read_log

UP_DOWN = [np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])]


def test_labels_with_every_phase_in_every_video_allow_every_task():
    assert unscorable_tasks(UP_DOWN, UP_DOWN, 2, TASKS, (0.1, 1.0)) == {}


def test_a_video_without_a_phase_rules_out_progression_only_and_names_video_and_phase():
    val = [np.array([0, 0, 2, 2]), np.array([1, 1, 2, 2]), np.array([0, 1, 2, 2])]
    train = [np.array([0, 1, 2]), np.array([0, 1, 1, 2])]
    why = unscorable_tasks(train, val, 3, TASKS, (1.0,), val_names=["a", "b", "c"], class_names=["x", "y", "z"])
    assert why == {"progression": "val video 'a' has no frame of phase 1 ('y'); it needs every phase but the last "
                                  "(0..1) in every labelled video"}
    assert unscorable_tasks(train, val, 3, ("classification", "kendalls_tau"), (1.0,)) == {}  # not asked: not named


def test_the_last_phase_and_unlabelled_videos_are_not_needed_for_progression():
    val = [np.array([0, 1, 1]), np.array([0, 0, 1, 2]), np.full(3, -1)]  # no last phase (2), one unlabelled video
    assert unscorable_tasks(UP_DOWN, val, 3, TASKS, (1.0,)) == {}


def test_probes_need_a_labelled_frame_in_the_fewest_videos_a_fraction_fits_on():
    train = [np.full(4, -1), *UP_DOWN]  # first of 3 unlabelled: fractions 0.1 and 0.5 fit on 1 video, 0.7 on 2
    assert set(unscorable_tasks(train, UP_DOWN, 2, TASKS, (0.5, 1.0))) == {"classification", "progression"}
    assert unscorable_tasks(train, UP_DOWN, 2, TASKS, (0.7, 1.0)) == {}


def test_pairwise_metrics_need_two_labelled_validation_videos():
    val = [UP_DOWN[0], np.full(4, -1)]
    assert set(unscorable_tasks(UP_DOWN, val, 2, TASKS, (1.0,))) == {"kendalls_tau", "retrieval"}


def test_nothing_to_score_is_refused():
    with pytest.raises(MVFormerError, match="no labelled frame in the validation videos"):
        unscorable_tasks(UP_DOWN, [np.full(4, -1)] * 2, 2, TASKS, (1.0,))
    with pytest.raises(MVFormerError, match=r"none of the requested tasks can be scored \(kendalls_tau"):
        unscorable_tasks(UP_DOWN, UP_DOWN[:1], 2, ("kendalls_tau", "retrieval"), (1.0,))


def test_skip_lines_group_tasks_and_say_how_to_leave_them_out():
    why = {"kendalls_tau": "one video", "retrieval": "one video", "progression": "no phase 1"}
    lines = skip_lines("pushups", why, TASKS)
    assert lines == ["pushups: kendalls_tau and retrieval skipped (n/a): one video; the other tasks are scored (to "
                     "leave them out: --set eval.tasks=[classification])",
                     "pushups: progression skipped (n/a): no phase 1; the other tasks are scored (to leave it out: "
                     "--set eval.tasks=[classification])"]
    assert skip_lines("f.npz", {"progression": "x"}, TASKS, "--tasks")[0].endswith(
        "(to leave it out: --tasks classification kendalls_tau retrieval)")


def test_evaluate_embeddings_reports_a_skipped_task_as_none_and_scores_the_rest():
    rng = np.random.default_rng(0)
    val = [np.array([1, 1, 2, 2]), np.array([0, 1, 2, 2]), np.array([0, 0, 1, 2])]
    train = [np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])]
    embs = [rng.normal(size=(len(labels), 3)) for labels in train + val]
    got = evaluate_embeddings(embs[:2], train, embs[2:], val, 3, fractions=(1.0,), ks=(2,))
    assert got["progression"] == {"1.0": None}
    alone = evaluate_embeddings(embs[:2], train, embs[2:], val, 3, fractions=(1.0,), ks=(2,),
                                tasks=("classification", "kendalls_tau", "retrieval"))
    assert {task: got[task] for task in alone} == alone


@pytest.fixture(scope="module")
def run_missing_a_phase(tmp_path_factory):
    """A demo run trained one epoch on pouring videos whose second validation video lacks the first phase."""
    base = tmp_path_factory.mktemp("missing_phase")
    root = generate_pouring_dataset(base / "pouring", num_train=4, num_val=3, size=64, min_frames=16, max_frames=24)
    name = (root / "splits" / "val.txt").read_text().split()[1]
    rows = list(csv.reader((root / "labels" / f"{name}.csv").open()))[1:]
    first, last = rows[0][1], rows[-1][1]
    with (root / "labels" / f"{name}.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["frame", "label"], *([frame, last if label == first else label]
                                                           for frame, label in rows)])
    return base, root, name


def test_every_scorer_skips_progression_names_the_video_and_scores_the_rest(run_missing_a_phase, capsys):
    base, root, name = run_missing_a_phase
    run = base / "run"
    args = ["train", "demo", "--no-progress", "--set", f"data.root={root}", "--set", "data.clip_len=16", "--set",
            "train.epochs=1", "--set", "train.batch_size=2", "--set", f"train.output_dir={run}"]
    assert main(args) == 0
    err = capsys.readouterr().err
    line = (f"pouring: progression skipped (n/a): val video '{name}' has no frame of phase 0 ('approach'); it needs "
            f"every phase but the last (0..2) in every labelled video; the other tasks are scored (to leave it out: "
            f"--set eval.tasks=[classification,kendalls_tau,retrieval])")
    assert err.count(line) == 1  # said once, before the first step, not at every evaluation
    evaluation = read_log(run).evaluations[0]
    assert set(evaluation.eval["progression"].values()) == {None}
    assert all(value is not None for value in evaluation.eval["classification"].values())
    assert set(evaluation.time_only["progression"].values()) == {None}

    assert main(["evaluate", str(run), "--no-progress"]) == 0
    assert line in capsys.readouterr().err
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert set(metrics["mean"]["progression"].values()) == {None} and metrics["mean"]["kendalls_tau"] is not None

    rows = run_metrics(run, load_config(run / "config.yaml"))
    assert rows["model"] == metrics["mean"] and set(rows["time_only"]["progression"].values()) == {None}
    assert f"val video '{name}' has no frame of phase 0" in rows["note"]


def test_report_rows_follow_eval_tasks(run_missing_a_phase, capsys):
    """The report's time-only row scores the run's eval.tasks, as the model's row was."""
    base, root, _ = run_missing_a_phase
    run = base / "tasks_run"
    assert main(["train", "demo", "--no-progress", "--set", f"data.root={root}", "--set", "data.clip_len=16",
                 "--set", "train.epochs=1", "--set", "train.batch_size=2", "--set", f"train.output_dir={run}",
                 "--set", "eval.tasks=[classification,kendalls_tau]"]) == 0
    assert "skipped" not in capsys.readouterr().err  # progression was not asked for: nothing to say
    rows = run_metrics(run, load_config(run / "config.yaml"))
    assert set(rows["model"]) == set(rows["time_only"]) == {"classification", "kendalls_tau"}
    assert rows["note"] is None


def test_a_video_in_both_splits_is_named_once(run_missing_a_phase, tmp_path, capsys):
    """Trained on and scored: training says so before the first step."""
    base, root, _ = run_missing_a_phase
    shared = tmp_path / "shared"
    shutil.copytree(root, shared)
    train_names = (shared / "splits" / "train.txt").read_text().split()
    (shared / "splits" / "val.txt").write_text("\n".join([train_names[0], *(shared / "splits" / "val.txt")
                                                          .read_text().split()]) + "\n")
    assert main(["train", "demo", "--no-progress", "--set", f"data.root={shared}", "--set", "data.clip_len=16",
                 "--set", "train.epochs=1", "--set", "train.batch_size=2", "--set",
                 f"train.output_dir={tmp_path / 'run'}"]) == 0
    err = capsys.readouterr().err
    assert err.count(f"warning: 1 of the 4 videos of split val are also in split train (first: '{train_names[0]}')") \
        == 1
