"""Training checkpoints and the run folder: write and read them, and turn "a run folder, a checkpoint or an
export folder" into a model.

A checkpoint holds plain tensors and containers only and is read with `torch.load(weights_only=True)`; it is
written to a temporary file and renamed over the previous one, so a kill never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from mvformer.config import config_from_dict, flatten_tree
from mvformer.errors import MVFormerError
from mvformer.files import atomic_path
from mvformer.model.backbone import FrozenBackbone
from mvformer.model.mvformer import MVFormer, build_model, check_finite_weights
from mvformer.pretrained import is_export, load_pretrained, save_pretrained
from mvformer.runtime import resolve_device

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 (epoch-boundary checkpoints) still loads as a model


def save_checkpoint(path: Path, state: dict) -> None:
    """Write to a temporary file beside `path`, then rename: a kill never leaves a half checkpoint."""
    with atomic_path(path) as temporary:
        torch.save(state, temporary)


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


CHECKPOINT_FIELDS = {  # what each version holds, and of which type
    1: {"config": dict, "model": dict, "epoch": int},
    2: {"config": dict, "model": dict, "epoch": int, "step": int, "world_size": int, "optimizer": dict,
        "random_states": list, "counters": dict, "epoch_losses": list},
}


def _check_fields(path: Path, state: dict, fields: dict) -> None:
    """One line naming the first field a (perhaps hand-made) checkpoint lacks or holds with the wrong type."""
    for name, kind in fields.items():
        if name not in state:
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


def model_from_checkpoint(path: str | Path, backbone: FrozenBackbone | None = None) -> MVFormer:
    """Rebuild a trained model (frozen backbone from its config, head from the checkpoint), in eval mode."""
    state = load_checkpoint(path)
    config = config_from_dict(state["config"], f"{path} (stored config)")
    model = build_model(config, backbone)
    model.load_trainable_state_dict(state["model"], str(path))
    check_finite_weights(model, str(path))
    return model.eval()


def trainable_weights(source: str | Path) -> dict[str, torch.Tensor]:
    """The head weights of a run folder, a checkpoint or an export folder (`train.init_from`: fine-tuning starts
    from them with a fresh optimiser and schedule)."""
    path = Path(source)
    if is_export(path):
        return load_pretrained(path).trainable_state_dict()
    return load_checkpoint(path)["model"]


def load_model(source: str | Path, device: str = "auto") -> tuple[MVFormer, torch.device]:
    """A trained model from a run folder, a checkpoint.pt or an `mvformer export` folder, in eval mode on
    `device` ("auto": CUDA when available)."""
    torch_device = resolve_device(device)
    model = load_pretrained(source) if is_export(Path(source)) else model_from_checkpoint(source)
    return model.to(torch_device).eval(), torch_device


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of a run's metrics.jsonl, in order."""
    path = Path(run_dir) / METRICS_NAME
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MVFormerError(f"{path}: not valid JSON lines ({str(error).splitlines()[0]})") from None


def _checkpoint_metrics(run_dir: Path, epoch: int) -> dict | None:
    """The last evaluation in RUN/metrics.jsonl made at the checkpoint's epoch (a later one scored other weights)."""
    if not (run_dir / METRICS_NAME).is_file():
        return None
    evaluations = [r["eval"] for r in read_metrics(run_dir)
                   if isinstance(r, dict) and r.get("epoch") == epoch and isinstance(r.get("eval"), dict)]
    return evaluations[-1] if evaluations else None


def export_checkpoint(run_or_checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """`mvformer export`: a training checkpoint (or a run folder holding one) -> a save_pretrained folder,
    with the run's evaluation at the checkpoint's epoch, if any, in the model card."""
    source = Path(run_or_checkpoint)
    checkpoint = source / CHECKPOINT_NAME if source.is_dir() else source
    state = load_checkpoint(checkpoint)
    model = model_from_checkpoint(checkpoint)
    # Version 1 stored the last finished epoch; version 2 stores where to resume (epoch, step within it).
    trained_epochs = state["epoch"] + 1 if state["version"] == 1 else state["epoch"]
    at_epoch_end = state.get("step", 0) == 0 and trained_epochs > 0
    metrics = _checkpoint_metrics(checkpoint.parent, trained_epochs - 1) if at_epoch_end else None
    return save_pretrained(model, out, metrics=metrics, data=model.config.data.root, overwrite=overwrite,
                           trained_epochs=trained_epochs)


@contextmanager
def run_folder_lock(run_dir: Path, is_main: bool) -> Iterator[None]:
    """Hold RUN/.lock while training writes into the run folder: a second process refuses to write into it too.
    A lock left by a process that no longer runs (killed) is taken over."""
    if not is_main:
        yield
        return
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / ".lock"
    for _ in range(2):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or 0)
                os.kill(holder, 0)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except PermissionError:
                pass
            raise MVFormerError(f"{run_dir}: another mvformer process ({holder}) is training into this folder") \
                from None
    else:
        raise MVFormerError(f"{run_dir}: cannot take the run folder's lock {lock}")
    try:
        os.write(descriptor, str(os.getpid()).encode())
        os.close(descriptor)
        yield
    finally:
        lock.unlink(missing_ok=True)
        if created and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a run that failed before writing anything leaves no folder behind
