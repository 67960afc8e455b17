"""The bad-input table of the commands that start or read runs: train (configuration and run folder), evaluate,
export and convert-backbone. Each case: exit status 2, one line naming the culprit, nothing changed."""

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
    for name, content in (("no_model.pt", {k: v for k, v in state.items() if k != "model"}),
                          ("string_config.pt", {**state, "config": "penn_action"})):
        torch.save(content, base / name)
    (base / "bytes.yaml").write_bytes(bytes(range(256)))
    (base / "empty.yaml").write_text("")
    (base / "base_list.yaml").write_text("base: [1, 2]\n")
    (base / "a_file").write_text("not a folder")
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
            ("model.num_token=5", "did you mean 'model.num_tokens'"), ("train.precision=fp8", "'train.precision'")]
    table = [Case(f"train --set {override}", train_args(root, fresh, "--set", override), (override.split("=")[0],
                  message), watch) for override, message in sets]
    table += [
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
        Case("evaluate into existing results", ["evaluate", str(run), "--out", str(base)], ("--overwrite",), watch),
        Case("evaluate into the run itself", ["evaluate", str(run / "checkpoint.pt"), "--out", str(run),
                                              "--overwrite"], ("would hold the checkpoint",), watch),
        Case("evaluate a checkpoint without model", ["evaluate", str(base / "no_model.pt"), "--out", str(fresh)],
             ("lacks 'model'",), watch),
        Case("evaluate a checkpoint with a string config", ["evaluate", str(base / "string_config.pt"), "--out",
                                                            str(fresh)], ("'config' is a str",), watch),
        Case("export NaN weights", ["export", str(w["nan"]), "--out", str(fresh)], ("NaN or Inf",), watch),
        Case("export over files", ["export", str(run), "--out", str(base)], ("already holds files",), watch),
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
