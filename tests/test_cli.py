"""The command line: bad input gives one line naming the culprit, exit status 2, and no run folder."""

import json
import shutil
import subprocess
import sys

import pytest

from mvformer.cli import main
from mvformer.data.synthetic import generate_pouring_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_pouring_dataset(tmp_path_factory.mktemp("data") / "pouring", num_train=2, num_val=2,
                                    min_frames=20, max_frames=24, seed=1)


@pytest.fixture
def broken(dataset, tmp_path):
    """A private copy of the dataset to break."""
    return shutil.copytree(dataset, tmp_path / "broken")


def run_cli(args, capsys):
    status = main(args)
    err = capsys.readouterr().err.strip()
    return status, err


def train_args(root, out_dir, *extra):
    return ["train", "demo", "--no-progress", "--set", f"data.root={root}", "--set", f"train.output_dir={out_dir}",
            "--set", "train.epochs=1", "--set", "train.batch_size=2", *extra]


def assert_one_line_failure(status, err, *fragments):
    assert status == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("mvformer: error: ")
    for fragment in fragments:
        assert fragment in err


def test_unknown_config_key(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    status, err = run_cli(train_args(dataset, out, "--set", "model.num_token=5"), capsys)
    assert_one_line_failure(status, err, "unknown key 'model.num_token'", "did you mean 'model.num_tokens'")
    assert not out.exists()


def test_missing_weights_folder(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    args = train_args(dataset, out, "--set", "backbone.name=vit", "--set", f"backbone.path={tmp_path / 'nowhere'}",
                      "--set", "backbone.blocks=[1]")
    status, err = run_cli(args, capsys)
    assert_one_line_failure(status, err, str(tmp_path / "nowhere"), "weights")
    assert not out.exists()


def test_video_that_cannot_be_decoded(broken, tmp_path, capsys):
    (broken / "videos" / "pour_000.mp4").write_bytes(b"\x00not a video" * 100)
    out = tmp_path / "run"
    status, err = run_cli(train_args(broken, out), capsys)
    assert_one_line_failure(status, err, "pour_000.mp4", "cannot decode")
    assert not out.exists()


def test_label_file_of_the_wrong_length(broken, tmp_path, capsys):
    labels = broken / "labels" / "pour_001.csv"
    labels.write_text("".join(labels.read_text().splitlines(keepends=True)[:-3]))
    out = tmp_path / "run"
    status, err = run_cli(train_args(broken, out), capsys)
    assert_one_line_failure(status, err, "labels/pour_001.csv", "rows but", "frames")
    assert not out.exists()


def test_empty_split(broken, tmp_path, capsys):
    (broken / "splits" / "train.txt").write_text("\n")
    out = tmp_path / "run"
    status, err = run_cli(train_args(broken, out), capsys)
    assert_one_line_failure(status, err, "splits/train.txt", "no videos")
    assert not out.exists()


def test_missing_checkpoint_for_evaluate(tmp_path, capsys):
    status, err = run_cli(["evaluate", str(tmp_path / "run")], capsys)
    assert_one_line_failure(status, err, "checkpoint not found")


def test_train_then_evaluate_writes_results(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(dataset, out, "--set", "data.clip_len=8")) == 0
    assert (out / "checkpoint.pt").is_file() and (out / "metrics.jsonl").is_file()
    copy = shutil.copytree(dataset, tmp_path / "copy")
    assert main(["evaluate", str(out), "--no-progress", "--data", str(dataset), str(copy)]) == 0
    printed = capsys.readouterr().out
    assert "mean" in printed and "tau" in printed
    assert {p.name for p in (out / "eval").iterdir()} == {"metrics.json", "pouring.npz", "copy.npz", "alignment.png"}
    result = json.loads((out / "eval" / "metrics.json").read_text())
    assert set(result["datasets"]) == {"pouring", "copy"}
    assert result["mean"]["kendalls_tau"] == pytest.approx(result["datasets"]["pouring"]["kendalls_tau"])


def test_installed_entry_point_exits_with_status_2():
    result = subprocess.run([sys.executable, "-m", "mvformer", "train", "no_such_config"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        result.stderr.strip()] and "no such config file or shipped config" in result.stderr
