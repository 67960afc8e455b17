"""Sharing a trained model without pickle: a folder of config.json, model.safetensors and a README.md model card.

Only the trainable head is stored; the frozen backbone is rebuilt from the config's backbone name and
weights path, exactly as training checkpoints do. Loading reads JSON and safetensors only, so an export
from a stranger cannot run code on the reader's machine. An export uploaded to the Hugging Face Hub loads by its
id (`ORG/NAME[@REVISION]`, resolved by `mvformer.hub`) as a folder does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mvformer import __version__
from mvformer.config import Config, config_from_dict, flatten_tree
from mvformer.errors import MVFormerError
from mvformer.files import output_folder
from mvformer.hub import parse_hub_id, resolve
from mvformer.model.mvformer import MVFormer, build_model, check_finite_weights

FORMAT_NAME = "mvformer-pretrained"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
WEIGHTLESS_BACKBONES = {"tiny": "a fixed-seed random ViT", "patches": "raw pixel patches"}


def is_export(directory: Path) -> bool:
    """Whether `directory` holds a config.json written by `save_pretrained`."""
    try:
        stored = json.loads((directory / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(stored, dict) and stored.get("format") == FORMAT_NAME


def names_export(source: str | Path) -> bool:
    """Whether `source` names an export: a folder written by `save_pretrained`, or a Hub id (mvformer models are
    published on the Hub as exports, never as training checkpoints)."""
    return parse_hub_id(source) is not None or is_export(Path(source))


def _format_number(value) -> str:
    if value is None or isinstance(value, float) and math.isnan(value):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _backbone_note(config: Config) -> str:
    backbone = config.backbone
    if backbone.name in WEIGHTLESS_BACKBONES:
        return (f"The `{backbone.name}` backbone ({WEIGHTLESS_BACKBONES[backbone.name]}) needs no weights file: "
                f"this folder is all that is needed.")
    if parse_hub_id(backbone.path) is not None:
        return (f"The frozen `{backbone.name}` backbone's weights are **not included**. `load_pretrained` fetches "
                f"them from the Hugging Face Hub (`{backbone.path}`) once, into the Hugging Face cache, and reads "
                f"them from there offline; to use other weights, edit `config.backbone.path` in `{CONFIG_NAME}` or "
                f"pass `backbone=` to `load_pretrained`.")
    where = (f"the config expects it at `{backbone.path}` (a relative path is read from the current directory)"
             if backbone.path else "the config names no such folder yet (`backbone.path` is empty)")
    return (f"The frozen `{backbone.name}` backbone's weights are **not included**. `load_pretrained` rebuilds "
            f"it from a local transformers `save_pretrained` folder; {where}. Put the weights there, edit "
            f"`config.backbone.path` in `{CONFIG_NAME}`, or pass `backbone=` to `load_pretrained`.")


def model_card(config: Config, metrics: dict | None = None, data: str | None = None,
               trained_epochs: int | None = None) -> str:
    """The README.md written beside the weights: architecture, training data, metrics, how to load."""
    model, backbone = config.model, config.backbone
    epochs = str(config.train.epochs) if trained_epochs in (None, config.train.epochs) \
        else f"{trained_epochs} of the {config.train.epochs} configured"
    fc_layers = ", ".join(map(str, model.fc_layers)) or "none"
    lines = [
        f"# {config.name}",
        "",
        f"An MV-Former frame-embedding model (mvformer {__version__}): a frozen image backbone, entity tokens "
        f"per frame, a transformer over tokens and frames, one L2-normalised embedding per frame. Trained "
        f"self-supervised with the sequence contrastive loss (SCL).",
        "",
        "## Architecture",
        "",
        "| part | setting |",
        "|---|---|",
        f"| backbone (frozen) | `{backbone.name}`, blocks {', '.join(map(str, backbone.blocks))}, "
        f"{config.data.image_size}x{config.data.image_size} frames |",
        f"| pooling | `{model.pooling}`, {model.num_tokens} token(s) of width {model.pool_dim}, "
        f"token id: {model.token_id} |",
        f"| FC layers | {fc_layers} |",
        f"| temporal encoder | {model.num_layers} layers, {model.num_heads} heads, hidden {model.hidden_size}, "
        f"feed-forward {model.ff_dim}, time encoding {model.time_encoding} |",
        f"| token reduction | {model.token_reduction} |",
        f"| embedding size | {model.embedding_size} |",
        "",
        "## Training",
        "",
        f"- data: `{data if data is not None else config.data.root}`",
        f"- epochs: {epochs}; clips of {config.data.clip_len} frames, batch {config.train.batch_size}, "
        f"lr {config.train.lr:g}, seed {config.train.seed}",
        f"- the whole configuration is in `{CONFIG_NAME}` under `config`",
        "",
        "## Metrics",
        "",
    ]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {key} | {_format_number(value)} |" for key, value in flatten_tree(metrics, "/").items()]
    else:
        lines.append("No evaluation was recorded with this model.")
    lines += [
        "",
        "## Loading",
        "",
        "```python",
        "from mvformer.data.video import read_video",
        "from mvformer.pretrained import load_pretrained",
        "",
        'model = load_pretrained("path/to/this/folder")  # or its Hub id ORG/NAME; eval mode, on the CPU',
        f'video = read_video("clip.mp4", size={config.data.image_size})  # uint8 (L, H, W, 3)',
        "embeddings = model.embed_video(model.prepare(video))  # (L, E), L2-normalised",
        "```",
        "",
        "Loading reads JSON and safetensors only (no pickle).",
        "",
        "## Backbone weights",
        "",
        _backbone_note(config),
        "",
    ]
    return "\n".join(lines)


def _not_an_export(directory: Path) -> str | None:
    """Why `directory` is not an earlier export that --overwrite may replace, or None."""
    return None if is_export(directory) else f"no {CONFIG_NAME} of format '{FORMAT_NAME}'"


def save_pretrained(model: MVFormer, directory: str | Path, config: Config | None = None,
                    metrics: dict | None = None, data: str | None = None, overwrite: bool = False,
                    trained_epochs: int | None = None, inputs: Sequence[Path] = ()) -> Path:
    """Write `model` as DIR/config.json, DIR/model.safetensors (trainable weights) and DIR/README.md.

    `config` is the run the model was trained in (default: `model.as_config()`, its architecture and input with
    every other setting the default, for a model built without a run). `metrics` (e.g. `evaluate_model`'s
    result) go into the card and config.json; `data` describes the training data (default: the config's data
    root). The folder is written through `files.output_folder`: a
    non-empty folder is refused unless it is an earlier export and `overwrite` is given, and then replaced whole;
    it never overlaps `inputs` (the checkpoint exported); a failure or a kill leaves the earlier export (or
    nothing). Weights holding NaN or Inf are refused.
    """
    directory = Path(directory)
    config = config if config is not None else model.as_config()
    check_finite_weights(model, "the model to export")
    tensors = {key: value.detach().cpu().contiguous() for key, value in model.trainable_state_dict().items()}
    stored = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "mvformer_version": __version__,
              "config": config.to_dict()}
    if trained_epochs is not None:
        stored["trained_epochs"] = trained_epochs
    if metrics is not None:
        stored["metrics"] = metrics
    config_text = json.dumps(stored, indent=2) + "\n"  # fails before any file is touched if metrics are not JSON
    card = model_card(config, metrics, data, trained_epochs)
    metadata = {"format": "pt", "mvformer_format_version": str(FORMAT_VERSION)}
    with output_folder(directory, _not_an_export, overwrite, inputs) as staging:
        try:
            save_file(tensors, str(staging / WEIGHTS_NAME), metadata=metadata)
        except SafetensorError as error:  # a full disk, among others: its message names no file
            raise MVFormerError(f"{directory}: cannot write {WEIGHTS_NAME} ({error}); nothing was replaced") from None
        (staging / CARD_NAME).write_text(card, encoding="utf-8")
        (staging / CONFIG_NAME).write_text(config_text, encoding="utf-8")
    return directory


def _read_stored_config(path: Path) -> Config:
    if not path.is_file():
        raise MVFormerError(f"{path}: not found; is {path.parent} a folder written by save_pretrained?")
    try:
        stored = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MVFormerError(f"{path}: not valid JSON ({str(error).splitlines()[0]})") from None
    exported = isinstance(stored, dict) and stored.get("format") == FORMAT_NAME
    if not exported or not isinstance(stored.get("config"), dict):
        raise MVFormerError(f"{path}: not an mvformer export (no '{FORMAT_NAME}' format and config)")
    version = stored.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise MVFormerError(f"{path}: 'format_version' must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise MVFormerError(f"{path}: written in format version {version} by mvformer "
                            f"{stored.get('mvformer_version', '?')}; this mvformer ({__version__}) reads up to "
                            f"version {FORMAT_VERSION}, upgrade it")
    return config_from_dict(stored["config"], str(path))


def read_pretrained(directory: str | Path, backbone=None) -> tuple[MVFormer, Config]:
    """A model written by `save_pretrained` (its folder, or the Hub id it was uploaded under), in eval mode on the
    CPU, and the configuration it was stored with; the backbone is rebuilt from the config unless one is passed.
    Reads JSON and safetensors only: no pickle."""
    directory = resolve(directory)
    if not directory.is_dir():
        raise MVFormerError(f"{directory}: no such folder (expected one written by save_pretrained)")
    config = _read_stored_config(directory / CONFIG_NAME)
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise MVFormerError(f"{weights_path}: not found; the export is incomplete")
    try:
        state = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise MVFormerError(f"{weights_path}: not a readable safetensors file, truncated or corrupt ({reason})") \
            from None
    model = build_model(config, backbone)
    model.load_trainable_state_dict(state, str(weights_path))
    return model.eval(), config


def load_pretrained(directory: str | Path, backbone=None) -> MVFormer:
    """The model of `read_pretrained` (eval mode, on the CPU)."""
    return read_pretrained(directory, backbone)[0]
