"""Shareable exports (config.json + model.safetensors + README.md) and safe training checkpoints."""

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from mvformer.cli import main
from mvformer.config import RANGES, load_config
from mvformer.errors import MVFormerError
from mvformer.model.mvformer import MVFormer, build_model
from mvformer.pretrained import FORMAT_VERSION, load_pretrained, model_card, read_pretrained, save_pretrained
from mvformer.checkpoint import CHECKPOINT_VERSION, load_checkpoint, model_from_checkpoint, save_checkpoint
from mvformer.runs import EpochRecord, EvalRecord, MetricsLog
from mvformer.runtime import random_states

METRICS = {"classification": {"0.1": 0.625, "1.0": 0.8125}, "progression": {"0.1": 0.5, "1.0": 0.75},
           "kendalls_tau": 0.9375, "retrieval": {"5": 0.875, "10": 0.8671875}}


def demo_config(*overrides):
    return load_config("demo", ["data.root=/data/pouring", *overrides])


def trained_model(config, seed=0):
    """A model whose weights and BatchNorm statistics differ from any fresh initialisation."""
    torch.manual_seed(seed)
    model = build_model(config)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 6, 3, config.data.image_size, config.data.image_size), project=True)
    return model.eval()


def frames_for(config, seed=1):
    generator = torch.Generator().manual_seed(seed)
    size = config.data.image_size
    return torch.randn(2, 7, 3, size, size, generator=generator)  # (B, T, 3, S, S)


def assert_one_line_error(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("overrides", [[], ["backbone.name=tiny", "backbone.blocks=[1,3]"]], ids=["patches", "tiny"])
def test_round_trip_gives_identical_embeddings(tmp_path, overrides):
    config = demo_config(*overrides)
    model = trained_model(config)
    out = save_pretrained(model, tmp_path / "export", config, metrics=METRICS)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]

    stored = json.loads((out / "config.json").read_text())
    assert stored["format_version"] == FORMAT_VERSION and stored["mvformer_version"]
    assert stored["config"] == config.to_dict() and stored["metrics"] == METRICS
    assert not any(key.startswith("backbone.") for key in load_file(out / "model.safetensors"))

    torch.manual_seed(123)  # a fresh initialisation, so equality can only come from the loaded weights
    loaded, stored_config = read_pretrained(out)
    assert not loaded.training and stored_config == config
    frames = frames_for(config)
    assert not torch.equal(build_model(config).eval()(frames), model(frames))
    assert torch.equal(loaded(frames), model(frames))
    assert torch.equal(loaded.embed_video(frames[0], chunk_size=3), model.embed_video(frames[0], chunk_size=3))
    assert torch.equal(loaded(frames, project=True), model(frames, project=True))


def test_loading_uses_no_pickle(tmp_path, monkeypatch):
    config = demo_config()
    model = trained_model(config)
    save_pretrained(model, tmp_path / "export")

    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used")

    for name in ("Unpickler", "load", "loads"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = load_pretrained(tmp_path / "export")
    frames = frames_for(config)
    assert torch.equal(loaded(frames), model(frames))


def test_passed_backbone_is_used(tmp_path):
    config = demo_config()
    model = trained_model(config)
    save_pretrained(model, tmp_path / "export")
    loaded = load_pretrained(tmp_path / "export", backbone=model.backbone)
    assert loaded.backbone is model.backbone


@pytest.fixture
def export(tmp_path):
    return save_pretrained(trained_model(demo_config()), tmp_path / "export")


def test_missing_folder_and_files(tmp_path, export):
    with pytest.raises(MVFormerError) as error:
        load_pretrained(tmp_path / "nowhere")
    assert_one_line_error(error, str(tmp_path / "nowhere"), "no such folder")

    (export / "model.safetensors").unlink()
    with pytest.raises(MVFormerError) as error:
        load_pretrained(export)
    assert_one_line_error(error, str(export / "model.safetensors"), "not found")

    (export / "config.json").unlink()
    with pytest.raises(MVFormerError) as error:
        load_pretrained(export)
    assert_one_line_error(error, str(export / "config.json"), "not found")


@pytest.mark.parametrize("text, fragment", [
    ('{"format": "mvformer-pretrained", "format_version": 1,', "not valid JSON"),
    ('{"model_type": "vit", "hidden_size": 768}', "not an mvformer export"),
    ('[1, 2, 3]', "not an mvformer export"),
])
def test_config_json_that_is_not_an_export(export, text, fragment):
    (export / "config.json").write_text(text)
    with pytest.raises(MVFormerError) as error:
        load_pretrained(export)
    assert_one_line_error(error, str(export / "config.json"), fragment)


def edit_stored_config(export, edit):
    path = export / "config.json"
    stored = json.loads(path.read_text())
    edit(stored)
    path.write_text(json.dumps(stored))


def test_config_failing_validation_names_the_key(export):
    edit_stored_config(export, lambda stored: stored["config"]["model"].update(num_tokns=3))
    with pytest.raises(MVFormerError) as error:
        load_pretrained(export)
    assert_one_line_error(error, str(export / "config.json"), "model.num_tokns", "model.num_tokens")

    edit_stored_config(export, lambda stored: stored["config"]["model"].pop("num_tokns"))
    edit_stored_config(export, lambda stored: stored["config"]["model"].update(pooling="median"))
    with pytest.raises(MVFormerError) as error:
        load_pretrained(export)
    assert_one_line_error(error, str(export / "config.json"), "model.pooling", "median")


def test_newer_format_version_is_refused(export):
    edit_stored_config(export, lambda stored: stored.update(format_version=FORMAT_VERSION + 1,
                                                            mvformer_version="9.0.0"))
    with pytest.raises(MVFormerError) as error:
        load_pretrained(export)
    assert_one_line_error(error, str(export / "config.json"), f"format version {FORMAT_VERSION + 1}", "9.0.0",
                          "upgrade")


def test_weights_from_another_config(tmp_path, export):
    other = save_pretrained(trained_model(demo_config("model.embedding_size=16")), tmp_path / "other")
    (export / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(MVFormerError) as error:
        load_pretrained(export)
    assert_one_line_error(error, str(export / "model.safetensors"), "do not fit", "(16, 64)", "(32, 64)")

    deeper = save_pretrained(trained_model(demo_config("model.num_layers=3")), tmp_path / "deeper")
    (export / "model.safetensors").write_bytes((deeper / "model.safetensors").read_bytes())
    with pytest.raises(MVFormerError) as error:
        load_pretrained(export)
    assert_one_line_error(error, str(export / "model.safetensors"), "do not fit", "unexpected", "layers.2")


def test_missing_tensor_is_named(export):
    weights = load_file(export / "model.safetensors")
    del weights["head.embed.weight"]
    save_file(weights, str(export / "model.safetensors"))
    with pytest.raises(MVFormerError) as error:
        load_pretrained(export)
    assert_one_line_error(error, str(export / "model.safetensors"), "1 missing", "head.embed.weight")


@pytest.mark.parametrize("keep", [0.5, 0.999, 4], ids=["half", "last-bytes", "header"])
def test_truncated_weights(export, keep):
    path = export / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)] if keep < 1 else data[:keep])
    with pytest.raises(MVFormerError) as error:
        load_pretrained(export)
    assert_one_line_error(error, str(path), "truncated or corrupt")


def test_save_refuses_a_foreign_non_empty_folder(tmp_path):
    model = trained_model(demo_config())
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.tex").write_text("keep me")
    with pytest.raises(MVFormerError) as error:
        save_pretrained(model, folder)
    assert_one_line_error(error, str(folder), "already exists; pass --overwrite")
    with pytest.raises(MVFormerError) as error:  # a folder that is not an export is never replaced
        save_pretrained(model, folder, overwrite=True)
    assert_one_line_error(error, str(folder), "not an earlier output", "no config.json of format 'mvformer-pretrained'")
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"] and (folder / "thesis.tex").read_text() == \
        "keep me"

    retrained = trained_model(demo_config(), seed=5)
    save_pretrained(retrained, tmp_path / "export")
    with pytest.raises(MVFormerError) as error:  # another model's export is never replaced without asking
        save_pretrained(model, tmp_path / "export")
    assert_one_line_error(error, "already exists; pass --overwrite")
    save_pretrained(model, tmp_path / "export", overwrite=True)
    frames = frames_for(demo_config())
    assert torch.equal(load_pretrained(tmp_path / "export")(frames), model(frames))
    assert not list((tmp_path / "export").glob(".*.tmp"))

    (tmp_path / "file").write_text("")
    with pytest.raises(MVFormerError, match="not a folder"):
        save_pretrained(model, tmp_path / "file")


def test_model_card_describes_model_data_metrics_and_backbone(tmp_path):
    config = demo_config("train.epochs=40")
    out = save_pretrained(trained_model(config), tmp_path / "export", config, metrics=METRICS,
                          data="synthetic pouring v2")
    card = (out / "README.md").read_text()
    assert card.startswith("# demo\n")
    for row in ("| classification/1.0 | 0.8125 |", "| progression/0.1 | 0.5000 |", "| kendalls_tau | 0.9375 |",
                "| retrieval/10 | 0.8672 |"):
        assert row in card
    assert "`patches`, blocks 0, 64x64 frames" in card and "3 token(s) of width 64" in card
    assert "2 layers, 4 heads, hidden 64" in card and "| embedding size | 32 |" in card
    assert "synthetic pouring v2" in card and "epochs: 40;" in card
    assert "load_pretrained" in card and "needs no weights file" in card

    vit = load_config("penn_action", ["backbone.path=/models/dino_vitb8"])
    vit_card = model_card(vit, None, None, trained_epochs=120)
    assert "**not included**" in vit_card and "`/models/dino_vitb8`" in vit_card
    assert "blocks 3, 7, 11" in vit_card and "120 of the 500 configured" in vit_card
    assert "No evaluation was recorded" in vit_card and "/models/dino_vitb8" not in card


def train_format_checkpoint(path, config, epoch):
    """A checkpoint in exactly the dict format `train()` writes, after one real optimiser step."""
    model = trained_model(config)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    model(frames_for(config), project=True).square().sum().backward()
    optimizer.step()
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"version": CHECKPOINT_VERSION, "config": config.to_dict(), "epoch": epoch + 1, "step": 0,
                           "world_size": 1, "model": model.trainable_state_dict(),
                           "optimizer": optimizer.state_dict(), "random_states": [random_states()],
                           "counters": {}, "epoch_losses": []})
    return model


def test_training_checkpoints_load_weights_only(tmp_path, monkeypatch):
    config = demo_config()
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    model = train_format_checkpoint(checkpoint, config, epoch=3)

    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: loads.append(kwargs) or real_load(*args, **kwargs))
    state = load_checkpoint(checkpoint)
    assert loads == [{"map_location": "cpu", "weights_only": True}]
    assert state["epoch"] == 4 and state["optimizer"]["state"]  # epoch 3 finished: resume at epoch 4
    frames = frames_for(config)
    assert torch.equal(model_from_checkpoint(checkpoint)(frames), model(frames))


class RunsCodeOnLoad:
    ran = False

    def __reduce__(self):
        return RunsCodeOnLoad.mark, ()

    @staticmethod
    def mark():
        RunsCodeOnLoad.ran = True


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"version": CHECKPOINT_VERSION, "payload": RunsCodeOnLoad()}, path)
    with pytest.raises(MVFormerError) as error:
        load_checkpoint(path)
    assert_one_line_error(error, str(path), "not a readable mvformer checkpoint")
    assert not RunsCodeOnLoad.ran


@pytest.mark.parametrize("keep", [0.5, 0.0], ids=["half", "empty"])
def test_truncated_training_checkpoint(tmp_path, keep):
    path = tmp_path / "run" / "checkpoint.pt"
    train_format_checkpoint(path, demo_config(), epoch=0)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(MVFormerError) as error:
        model_from_checkpoint(path.parent)
    assert_one_line_error(error, str(path), "not a readable mvformer checkpoint")


def test_export_command(tmp_path, capsys):
    config = demo_config(f"train.output_dir={tmp_path / 'run'}")
    run = tmp_path / "run"
    model = train_format_checkpoint(run / "checkpoint.pt", config, epoch=4)
    later = {**METRICS, "kendalls_tau": 0.25}
    records = [EpochRecord(4, 1.5, 1e-3, 9.0, 0, 0), EvalRecord(4, METRICS, METRICS, False, {}),
               EvalRecord(9, later, later, False, {})]  # epoch 9 scored weights this checkpoint does not hold
    log = MetricsLog(run)
    for record in records:
        log.write(record)

    assert main(["export", str(run), "--out", str(tmp_path / "export")]) == 0
    assert str(tmp_path / "export") in capsys.readouterr().out
    frames = frames_for(config)
    assert torch.equal(load_pretrained(tmp_path / "export")(frames), model(frames))
    stored = json.loads((tmp_path / "export" / "config.json").read_text())
    assert stored["metrics"] == METRICS and stored["trained_epochs"] == 5
    card = (tmp_path / "export" / "README.md").read_text()
    assert "| kendalls_tau | 0.9375 |" in card and "0.2500" not in card
    assert "`/data/pouring`" in card and "epochs: 5 of the 100 configured" in card

    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text().splitlines(keepends=True)[0])
    assert main(["export", str(run / "checkpoint.pt"), "--out", str(tmp_path / "export")]) == 2  # never replaced
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(["export", str(run / "checkpoint.pt"), "--out", str(tmp_path / "export"), "--overwrite"]) == 0
    assert "No evaluation was recorded" in (tmp_path / "export" / "README.md").read_text()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.csv").write_text("1,2\n")
    assert main(["export", str(run), "--out", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mvformer: error: ") and err.count("\n") == 1 and "already exists" in err
    assert main(["export", str(run), "--out", str(foreign), "--overwrite"]) == 2
    assert "not an earlier output" in capsys.readouterr().err
    assert [path.name for path in foreign.iterdir()] == ["data.csv"]

    assert main(["export", str(tmp_path / "no_run"), "--out", str(tmp_path / "x")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_model_built_without_a_run_exports_and_loads(tmp_path):
    """save_pretrained needs no run config: the export stores the model's architecture and input
    (`MVFormer.as_config`), and loads to the same embeddings."""
    config = demo_config()
    torch.manual_seed(0)
    model = MVFormer(config.model, config.backbone, image_size=64, train_len=24).eval()
    loaded, stored = read_pretrained(save_pretrained(model, tmp_path / "export"))
    assert (stored.data.image_size, stored.data.clip_len, stored.model) == (64, 24, config.model)
    never_chunked = RANGES["eval.frames_per_batch"][1]
    assert (loaded.image_size, loaded.train_len, loaded.max_encoder_frames) == (64, 24, never_chunked)
    frames = frames_for(config)
    assert torch.equal(loaded(frames), model(frames))
