"""Training checkpoints: write and read them, and turn "a run folder, a checkpoint, an export folder or an export's
Hub id" into a model (`load_model`, a `Trained`). The run folder's other files are `mvformer.runs`'.

A checkpoint holds plain tensors and containers only and is read with `torch.load(weights_only=True)`; it is
written to a temporary file and renamed over the previous one, so a kill never leaves half a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mvformer.config import Config, config_from_dict, flatten_tree
from mvformer.errors import MVFormerError
from mvformer.files import atomic_path
from mvformer.model.backbone import FrozenBackbone
from mvformer.model.mvformer import MVFormer, build_model
from mvformer.pretrained import load_pretrained, names_export, read_pretrained, save_pretrained
from mvformer.runs import CHECKPOINT_NAME, read_log
from mvformer.runtime import resolve_device

CHECKPOINT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 (epoch-boundary checkpoints) still loads as a model


def save_checkpoint(path: Path, state: dict) -> None:
    """Write to a temporary file beside `path`, then rename: a kill or a full disk never leaves a half checkpoint,
    and the previous one stays in place."""
    with atomic_path(path) as temporary:
        try:
            torch.save(state, temporary)
        except RuntimeError as error:  # torch reports a failed write (a full disk) so, naming no file
            raise MVFormerError(f"{path}: cannot write the checkpoint ({str(error).splitlines()[0]}); the previous "
                                f"one is kept") from None


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint (a file, or a run folder holding one), loaded with weights_only=True."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise MVFormerError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise MVFormerError(f"{path}: not a readable mvformer checkpoint ({type(error).__name__})") from None
    if not isinstance(state, dict) or state.get("version") not in READABLE_VERSIONS:
        raise MVFormerError(f"{path}: not an mvformer checkpoint of a version this mvformer reads "
                            f"({', '.join(map(str, READABLE_VERSIONS))})")
    _check_fields(path, state, CHECKPOINT_FIELDS[state["version"]])
    return state


CHECKPOINT_FIELDS = {  # what each version holds, and of which type: the writer (train.loop) writes exactly these
    1: {"config": dict, "model": dict, "epoch": int},
    2: {"version": int, "config": dict, "model": dict, "epoch": int, "step": int, "world_size": int,
        "optimizer": dict, "random_states": list, "counters": dict, "epoch_losses": list, "scaler": dict,
        "objective_head": dict},
}
LATER_FIELDS = ("scaler", "objective_head")  # version-2 fields that the first version-2 checkpoints lack


def _check_fields(path: Path, state: dict, fields: dict) -> None:
    """One line naming the first field a (perhaps hand-made) checkpoint lacks or holds with the wrong type."""
    for name, kind in fields.items():
        if name not in state:
            if name in LATER_FIELDS:
                continue
            raise MVFormerError(f"{path}: the checkpoint lacks '{name}'")
        if not isinstance(state[name], kind) or isinstance(state[name], bool):
            raise MVFormerError(f"{path}: the checkpoint's '{name}' is a {type(state[name]).__name__}, not a "
                                f"{kind.__name__}")
    bad = next((key for key, value in state["model"].items() if not isinstance(value, torch.Tensor)), None)
    if bad is not None:
        raise MVFormerError(f"{path}: the checkpoint's model weight '{bad}' is not a tensor")


def config_differences(stored: dict, current: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """The dotted keys on which two configs (as dicts) differ, `ignore`d keys left out."""
    flat_stored, flat_current = flatten_tree(stored), flatten_tree(current)
    return [key for key in sorted(flat_stored.keys() | flat_current.keys())
            if key not in ignore and flat_stored.get(key, "<absent>") != flat_current.get(key, "<absent>")]


def _from_checkpoint(path: str | Path, backbone: FrozenBackbone | None = None,
                     state: dict | None = None) -> tuple[MVFormer, Config]:
    """A checkpoint's model (frozen backbone from its config, head from the checkpoint, eval mode) and config;
    `state`: the checkpoint at `path`, where the caller has already loaded it."""
    state = load_checkpoint(path) if state is None else state
    config = config_from_dict(state["config"], f"{path} (stored config)")
    model = build_model(config, backbone)
    model.load_trainable_state_dict(state["model"], str(path))
    return model.eval(), config


def model_from_checkpoint(path: str | Path, backbone: FrozenBackbone | None = None) -> MVFormer:
    """Rebuild a trained model (frozen backbone from its config, head from the checkpoint), in eval mode."""
    return _from_checkpoint(path, backbone)[0]


def trainable_weights(source: str | Path) -> dict[str, torch.Tensor]:
    """The head weights of a run folder, a checkpoint, an export folder or an export's Hub id (`train.init_from`:
    fine-tuning starts from them with a fresh optimiser and schedule)."""
    if names_export(source):
        return load_pretrained(source).trainable_state_dict()
    return load_checkpoint(source)["model"]


@dataclass
class Trained:
    """A trained model loaded once, with the configuration it was trained with (data, evaluation settings) and
    where it came from: what every command and notebook call takes."""

    model: MVFormer  # eval mode, on `device`
    config: Config
    source: str | Path  # a run folder, a checkpoint, an export folder or an export's Hub id
    device: torch.device

    @property
    def run_dir(self) -> Path | None:
        """The run folder of a run or checkpoint source (None for an export)."""
        if names_export(self.source):
            return None
        source = Path(self.source)
        return source if source.is_dir() else source.parent

    @property
    def inputs(self) -> list[Path]:
        """The files the model was read from, which no output may replace: the file itself, or every file
        directly in a run or export folder (none for a Hub id: they lie in the Hugging Face cache)."""
        return source_files(self.source)


def source_files(source: str | Path) -> list[Path]:
    """The files a model source is read from (see `Trained.inputs`), known before the model is loaded."""
    source = Path(source)
    if not source.exists():
        return []
    return [path for path in source.iterdir() if path.is_file()] if source.is_dir() else [source]


def load_model(source: str | Path, device: str = "auto") -> Trained:
    """A trained model from a run folder, a checkpoint.pt, an `mvformer export` folder or the Hub id of an uploaded
    export, in eval mode on `device` ("auto": CUDA when available), with its training configuration."""
    torch_device = resolve_device(device)
    model, config = read_pretrained(source) if names_export(source) else _from_checkpoint(source)
    return Trained(model.to(torch_device).eval(), config, source, torch_device)


def export_checkpoint(run_or_checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """`mvformer export`: a training checkpoint (or a run folder holding one) -> a save_pretrained folder,
    with the run's evaluation at the checkpoint's epoch, if any, in the model card."""
    source = Path(run_or_checkpoint)
    checkpoint = source / CHECKPOINT_NAME if source.is_dir() else source
    state = load_checkpoint(checkpoint)
    model, config = _from_checkpoint(checkpoint, state=state)
    # Version 1 stored the last finished epoch; version 2 stores where to resume (epoch, step within it).
    trained_epochs = state["epoch"] + 1 if state["version"] == 1 else state["epoch"]
    at_epoch_end = state.get("step", 0) == 0 and trained_epochs > 0
    evaluation = read_log(checkpoint.parent).evaluation_after(trained_epochs - 1) if at_epoch_end else None
    metrics = evaluation.eval if evaluation is not None else None  # a later evaluation scored other weights
    return save_pretrained(model, out, config, metrics=metrics, data=config.data.root, overwrite=overwrite,
                           trained_epochs=trained_epochs, inputs=[checkpoint])
