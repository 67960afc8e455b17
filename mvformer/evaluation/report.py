"""`mvformer evaluate`: a trained model over a dataset's train and val videos -> embeddings, metrics, a picture.

Scoring goes through `evaluation.embed.score_sets`, the same path as training's evaluation. Outputs are written to
a temporary folder beside the destination and moved into place only once complete, so a failed evaluation leaves
nothing that looks like a result, and earlier results are replaced only with `overwrite`.
"""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np

from mvformer.checkpoint import load_model
from mvformer.data.datasets import VideoDataset
from mvformer.errors import MVFormerError
from mvformer.evaluation.embed import EvaluationSet, embed_split, evaluation_sets, score_sets
from mvformer.evaluation.metrics import mean_of_metrics
from mvformer.evaluation.spread import embedding_spread, health_record, warning_line
from mvformer.evaluation.time_only import no_gain_line, time_only_metrics
from mvformer.evaluation.embeddings_io import format_table
from mvformer.features.cache import open_feature_cache
from mvformer.model.mvformer import MVFormer
from mvformer.progress import note
from mvformer.viz import plot_alignment


@dataclasses.dataclass
class EvaluationReport:
    metrics: dict  # {"datasets": {name: metrics}, "mean": metrics}
    out_dir: Path
    table: str


def save_embeddings(path: Path, train_embs: list[np.ndarray], train_set: VideoDataset,
                    val_embs: list[np.ndarray], val_set: VideoDataset) -> None:
    """The model-free evaluation format: frames of all videos concatenated, split by `*_lens`; `num_classes` is the
    dataset's, so that `evaluate-embeddings` scores the file as `evaluate` did."""
    arrays = {"num_classes": np.array(train_set.num_classes, dtype=np.int64)}
    for split, embs, dataset in (("train", train_embs, train_set), ("val", val_embs, val_set)):
        arrays[f"{split}_embs"] = np.concatenate(embs).astype(np.float32)  # (frames, E)
        arrays[f"{split}_lens"] = np.array([len(e) for e in embs], dtype=np.int64)
        arrays[f"{split}_names"] = np.array([r.name for r in dataset.records])
        arrays[f"{split}_labels"] = np.concatenate([r.labels for r in dataset.records]).astype(np.int64)
    np.savez(path, **arrays)


def _embed_set(model: MVFormer, dataset: EvaluationSet, device) -> tuple[list, list]:
    """Embeddings of both splits, from the feature cache when one matches this dataset, else from the videos."""
    config = model.config
    data = dataclasses.replace(config.data, root=str(dataset.train.root))
    cache = open_feature_cache(dataclasses.replace(config, data=data),
                               datasets={"train": dataset.train, "val": dataset.val})
    cached = " (cached)" if cache is not None else ""
    return tuple(embed_split(model, split_set, device, cache, split, f"embedding {dataset.name} {split}{cached}")
                 for split, split_set in (("train", dataset.train), ("val", dataset.val)))


def score_with_controls(sets: list[EvaluationSet], embedded: list[tuple[list, list]], model: MVFormer,
                        say=note) -> dict:
    """`score_sets` plus what a sceptical reader asks next, for training and `evaluate` alike: the time-only row
    (the same videos embedded by relative time alone through the model's sinusoidal code, no training) and each
    set's spread (a collapsed embedding is flagged and the metrics it makes meaningless are marked); warnings go
    to `say`, one line each."""
    cfg = model.config.eval
    result = score_sets(sets, embedded, cfg)
    time_only = {dataset.name: time_only_metrics(
        [r.labels for r in dataset.train.records], [r.labels for r in dataset.val.records], dataset.train.num_classes,
        model.config.model.hidden_size, model.config.data.clip_len, cfg.fractions, cfg.ks, cfg.stride, cfg.tasks,
        cfg.classifier) for dataset in sets}
    result["time_only"] = {"datasets": time_only, "mean": mean_of_metrics(list(time_only.values()))}
    result["health"] = {}
    for dataset, (train_embs, val_embs) in zip(sets, embedded):
        spread = embedding_spread(train_embs + val_embs)
        result["health"][dataset.name] = health_record(result["datasets"][dataset.name], spread)
        line = warning_line(spread, result["health"][dataset.name]["unreliable"])
        if line:
            say(f"{dataset.name}: {line}")
    result["collapsed"] = any(health["collapsed"] for health in result["health"].values())
    line = no_gain_line(result["mean"], result["time_only"]["mean"])
    if line:
        say(line)
    return result


def _output_folder(checkpoint: str, out_dir: str | None, overwrite: bool) -> Path:
    source = Path(checkpoint)
    out = Path(out_dir) if out_dir else (source if source.is_dir() else source.parent) / "eval"
    if out.exists() and not out.is_dir():
        raise MVFormerError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise MVFormerError(f"{out}: already holds results; pass --overwrite to replace them")
    if source.resolve() == out.resolve() or source.resolve().is_relative_to(out.resolve()):
        raise MVFormerError(f"{out}: the output folder would hold the checkpoint it evaluates; choose another --out")
    return out


def evaluate_checkpoint(checkpoint: str, data_roots: list[str] | None = None, out_dir: str | None = None,
                        overwrite: bool = False) -> EvaluationReport:
    """Embed every frame of the train and val splits of each dataset (default: the training data), write
    DATASET.npz per dataset, metrics.json (each dataset and the mean over them, as the paper averages Penn
    Action's 13 actions) and an alignment picture of two validation videos."""
    out = _output_folder(checkpoint, out_dir, overwrite)
    model, device = load_model(checkpoint)
    config = model.config
    sets = evaluation_sets(config, data_roots)
    embedded = [_embed_set(model, dataset, device) for dataset in sets]
    metrics = score_with_controls(sets, embedded, model)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for dataset, (train_embs, val_embs) in zip(sets, embedded):
            save_embeddings(staging / f"{dataset.name}.npz", train_embs, dataset.train, val_embs, dataset.val)
        first_val = embedded[0][1]
        if len(first_val) >= 2:
            names = [record.name for record in sets[0].val.records[:2]]
            plot_alignment(first_val[0], first_val[1], staging / "alignment.png", f"{names[0]} vs {names[1]}")
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return EvaluationReport(metrics, out, format_table(metrics, {"time only": metrics["time_only"]["mean"]}))
