"""A run that cannot learn stops with one line instead of finishing without a word, and a resumed run finishes
what it still owes (the evaluation after its last epoch)."""

import json

import pytest
import torch

from bad_inputs import one_line_failure
from mvformer.checkpoint import CHECKPOINT_FIELDS
from mvformer.cli import main
from mvformer.data.synthetic import generate_pouring_dataset
from mvformer.runs import read_log
from mvformer.train import loop


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate_pouring_dataset(tmp_path_factory.mktemp("guards") / "data", num_train=4, num_val=2,
                                    min_frames=16, max_frames=20, seed=3)


def train_args(root, out, *extra):
    return ["train", "demo", "--no-progress", "--set", f"data.root={root}", "--set", f"train.output_dir={out}",
            "--set", "train.epochs=2", "--set", "train.batch_size=2", "--set", "data.clip_len=8", *extra]


@pytest.mark.parametrize("spoil, message", [
    (lambda loss: loss * float("nan"), "the loss or gradient of every step (2) was NaN or Inf"),
    (lambda loss: loss * 0, "every gradient was exactly zero (2 steps): the scl loss is constant"),
])
def test_a_run_that_cannot_learn_stops_with_one_line(root, tmp_path, monkeypatch, capsys, spoil, message):
    original = loop.objective_loss
    monkeypatch.setattr(loop, "objective_loss", lambda *args: (spoil(original(*args)[0]), original(*args)[1]))
    one_line_failure(train_args(root, tmp_path / "run"), capsys, "epoch 0:", message)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_resumed_run_finishes_its_final_evaluation(root, tmp_path, capsys):
    """Killed after its last checkpoint but before the final evaluation, `--resume` evaluates and logs it; a run
    with nothing owed resumes to nothing."""
    run = tmp_path / "run"
    assert main(train_args(root, run)) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    evaluation = read_log(run).evaluations[-1]
    assert evaluation.epoch == 1 and json.loads(lines[-1])["eval"] == evaluation.eval
    (run / "metrics.jsonl").write_text("".join(lines[:-1]))  # the kill: after the last checkpoint, before this

    assert main([*train_args(root, run), "--resume"]) == 0
    resumed = read_log(run).evaluations
    assert len((run / "metrics.jsonl").read_text().splitlines()) == len(lines) and resumed[-1].epoch == 1
    assert resumed[-1] == evaluation  # the same weights, scored the same way
    assert main([*train_args(root, run), "--resume"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == len(lines)
    capsys.readouterr()
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2
    assert {key: type(value) for key, value in state.items()} == CHECKPOINT_FIELDS[2]  # writer and schema agree
