"""The bad-input table of the commands that start or read runs: train (configuration and run folder), evaluate,
export and convert-backbone. Each case: exit status 2, one line naming the culprit, nothing changed."""

import os
import shutil

import pytest
import torch

from bad_inputs import Case, run_case
from mvformer.cli import main
from mvformer.data.synthetic import generate_pouring_dataset


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small dataset, a finished one-epoch run, a checkpoint with NaN weights, and hand-made broken files."""
    base = tmp_path_factory.mktemp("runs")
    root = generate_pouring_dataset(base / "data", num_train=4, num_val=2, min_frames=20, max_frames=24, seed=2)
    run = base / "run"
    assert main(train_args(root, run)) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    nan = base / "nan"
    nan.mkdir()
    state["model"] = {key: value.float() * float("nan") if value.is_floating_point() else value
                      for key, value in state["model"].items()}
    torch.save(state, nan / "checkpoint.pt")
    integers = base / "integers"
    integers.mkdir()
    torch.save({**state, "model": {key: value.long() for key, value in state["model"].items()}},
               integers / "checkpoint.pt")
    for name, content in (("no_model.pt", {k: v for k, v in state.items() if k != "model"}),
                          ("string_config.pt", {**state, "config": "penn_action"})):
        torch.save(content, base / name)
    (base / "bytes.yaml").write_bytes(bytes(range(256)))
    (base / "empty.yaml").write_text("")
    (base / "base_list.yaml").write_text("base: [1, 2]\n")
    (base / "a_file").write_text("not a folder")
    for name, line in (("list_line", "[1, 2]"), ("number_line", "3"), ("half_record", '{"epoch": 0, "loss": 1}')):
        shutil.copytree(run, base / name)
        with (base / name / "metrics.jsonl").open("a") as handle:
            handle.write(line + "\n")
    for name, text in (("garbage_eval", "garbage"), ("empty_eval", "{}"), ("list_eval", "[]")):
        shutil.copytree(run, base / name)
        (base / name / "eval").mkdir()
        (base / name / "eval" / "metrics.json").write_text(text)
    (base / ".raced.lock").write_text(str(os.getpid()))  # another writer of base/raced, alive: this process
    (base / "mine").mkdir()
    (base / "mine" / "notes.txt").write_text("the user's")
    assert main(["evaluate", str(run), "--out", str(base / "earlier"), "--no-progress"]) == 0
    (base / "link").symlink_to(base / "earlier")
    return {"base": base, "root": root, "run": run, "nan": nan}


def train_args(root, out, *extra):
    return ["train", "demo", "--no-progress", "--set", f"data.root={root}", "--set", f"train.output_dir={out}",
            "--set", "train.epochs=1", "--set", "train.batch_size=2", "--set", "data.clip_len=8", *extra]


def cases(w) -> list[Case]:
    base, root, run = w["base"], w["root"], w["run"]
    fresh = base / "fresh"
    watch = (base,)
    sets = [("model.num_tokens=1000000000000", "'model.num_tokens' must lie in"),
            ("train.lr=-1", "'train.lr' must lie in"), ("train.lr=1e999", "'train.lr' must be a finite number"),
            ("train.seed=-1", "'train.seed' must lie in"), ("model.fc_layers=[0]", "'model.fc_layers' must lie in"),
            ("data.image_size=4", "'data.image_size' must lie in"), ("data.max_stretch=.nan", "finite number"),
            ("train.grad_clip=-1", "'train.grad_clip' must lie in"), ("model.num_layers=0", "'model.num_layers'"),
            ("eval.ks=[0]", "'eval.ks' must lie in"), ("eval.ks=[]", "'eval.ks' must list at least one value"),
            ("train.objective=magic", "'train.objective' is 'magic'"), ("data.frames=stretch", "'data.frames'"),
            ("model.num_token=5", "did you mean 'model.num_tokens'"), ("train.precision=fp8", "'train.precision'"),
            ("train.batch_size=5", "larger than the training set (4 videos)"),
            ("data.clip_len=100000", "'data.clip_len' must lie in"),
            ("tcc.temperature=1e-300", "'tcc.temperature' must lie in"),
            ("tcc.huber_delta=1e300", "'tcc.huber_delta' must lie in"),
            ("tcn.reg_lambda=1e300", "'tcn.reg_lambda' must lie in"),
            ("tcn.positive_window=100000000000000000000", "'tcn.positive_window' must lie in")]
    table = [Case(f"train --set {override}", train_args(root, fresh, "--set", override), (override.split("=")[0],
                  message), watch) for override, message in sets]
    table += [
        Case("TCC with one video per batch", train_args(root, fresh, "--set", "train.objective=tcc", "--set",
                                                        "train.batch_size=1"), ("train.objective tcc",), watch),
        Case("config of random bytes", ["train", str(base / "bytes.yaml")], ("bytes.yaml", "not a UTF-8"), watch),
        Case("empty config", ["train", str(base / "empty.yaml")], ("empty.yaml", "empty"), watch),
        Case("base: [1, 2]", ["train", str(base / "base_list.yaml")], ("base_list.yaml", "'base' must name"), watch),
        Case("output_dir is a file", train_args(root, base / "a_file"), ("a_file", "not a folder"), watch),
        Case("fresh run over another run", train_args(root, run), ("already holds a checkpoint",), watch),
        Case("no data.root", ["train", "demo", "--set", 'data.root=""', "--set", f"train.output_dir={fresh}"],
             ("data.root is not set",), watch),
        Case("data.root null", ["train", "demo", "--set", "data.root=", "--set", f"train.output_dir={fresh}"],
             ("'data.root' must be str",), watch),
        Case("resume with another config", train_args(root, run, "--set", "model.dropout=0.3", "--resume"),
             ("first: 'model.dropout'",), watch),
        Case("init_from nowhere", train_args(root, fresh, "--set", f"train.init_from={base / 'nowhere'}"),
             ("nowhere", "not found"), watch),
        Case("evaluate NaN weights", ["evaluate", str(w["nan"]), "--out", str(fresh)], ("NaN or Inf",), watch),
        Case("evaluate integer weights", ["evaluate", str(base / "integers"), "--out", str(fresh)],
             ("is torch.int64, not floating point",), watch),
        Case("export integer weights", ["export", str(base / "integers"), "--out", str(fresh)],
             ("is torch.int64, not floating point",), watch),
        Case("init_from NaN weights", train_args(root, fresh, "--set", f"train.init_from={w['nan']}"),
             ("NaN or Inf",), watch),
        Case("evaluate into existing results", ["evaluate", str(run), "--out", str(base / "earlier")],
             ("already exists; pass --overwrite",), watch),
        Case("evaluate around the run", ["evaluate", str(run), "--out", str(base), "--overwrite"],
             ("must lie outside the input", "must not hold it"), watch),
        Case("evaluate into the run itself", ["evaluate", str(run / "checkpoint.pt"), "--out", str(run),
                                              "--overwrite"], ("must lie outside the input", "checkpoint.pt"), watch),
        Case("evaluate into the dataset", ["evaluate", str(run), "--out", str(root), "--overwrite"],
             ("must lie outside the input",), watch),
        Case("evaluate into the dataset's videos", ["evaluate", str(run), "--out", str(root / "videos"),
                                                    "--overwrite"], ("must lie outside the input",), watch),
        Case("evaluate over a user's folder", ["evaluate", str(run), "--out", str(base / "mine"), "--overwrite"],
             ("mine", "not an earlier output of this command (no metrics.json)"), watch),
        Case("evaluate through a symbolic link", ["evaluate", str(run), "--out", str(base / "link"), "--overwrite"],
             ("link", "is a symbolic link"), watch),
        Case("evaluate a Hub id without --out", ["evaluate", "some-org/some-model"], ("pass --out DIR",), watch),
        Case("evaluate a checkpoint without model", ["evaluate", str(base / "no_model.pt"), "--out", str(fresh)],
             ("lacks 'model'",), watch),
        Case("evaluate a checkpoint with a string config", ["evaluate", str(base / "string_config.pt"), "--out",
                                                            str(fresh)], ("'config' is a str",), watch),
        *(Case(f"report of a run whose log holds {what}", ["report", str(base / name), "--out", str(fresh)],
               ("metrics.jsonl line", message), watch)
          for name, what, message in (("list_line", "a list", "is a JSON list, not an object"),
                                      ("number_line", "a number", "is a JSON int, not an object"),
                                      ("half_record", "half a record", "the EpochRecord lacks 'lr'"))),
        *(Case(f"report of a run whose eval/metrics.json is {what}", ["report", str(base / name), "--out",
                                                                       str(fresh)], ("metrics.json", message), watch)
          for name, what, message in (("garbage_eval", "garbage", "not valid JSON"),
                                      ("empty_eval", "{}", "lacks the 'datasets' metrics"),
                                      ("list_eval", "[]", "is a JSON list"))),
        *(Case(f"{command} racing another {command} into one --out", [command, str(run), "--out", str(base / "raced")],
               ("raced: another mvformer process", "is writing it"), watch) for command in ("evaluate", "export")),
        Case("export NaN weights", ["export", str(w["nan"]), "--out", str(fresh)], ("NaN or Inf",), watch),
        Case("export over files", ["export", str(run), "--out", str(base / "mine")], ("already exists",), watch),
        Case("export over a user's folder", ["export", str(run), "--out", str(base / "mine"), "--overwrite"],
             ("not an earlier output",), watch),
        Case("export around the run", ["export", str(run), "--out", str(base), "--overwrite"],
             ("must lie outside the input",), watch),
        Case("export of nothing", ["export", str(base / "nowhere"), "--out", str(fresh)], ("not found",), watch),
        Case("convert-backbone of nothing", ["convert-backbone", str(base / "nowhere.pth"), str(fresh)],
             ("nowhere.pth",), watch),
        Case("convert-backbone of a config", ["convert-backbone", str(base / "empty.yaml"), str(fresh)],
             ("empty.yaml",), watch),
    ]
    return table


NAMES = [case.name for case in cases({key: __import__("pathlib").Path("/x") for key in ("base", "root", "run",
                                                                                          "nan")})]


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_to_a_run_command(world, name, capsys):
    case = next(case for case in cases(world) if case.name == name)
    run_case(case, capsys)
    assert not (world["base"] / "fresh").exists()
