"""`mvformer evaluate`: a trained model over a dataset's train and val videos -> embeddings, metrics, a picture.

Scoring goes through `evaluation.scoring.score_with_controls`, the same path as training's evaluation. OUT is
written through `files.output_folder`: never an input (the checkpoint, a dataset root) nor inside or around one, an
earlier evaluation (it holds metrics.json) replaced only with `overwrite`, one writer at a time, and staged, so that
a failed or killed evaluation leaves the earlier results, or none, but never half of them.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np

from mvformer.checkpoint import Trained, load_model
from mvformer.data.datasets import VideoDataset
from mvformer.errors import MVFormerError
from mvformer.evaluation.alignment import align
from mvformer.evaluation.embed import EvaluationSet, embed_split, evaluation_sets
from mvformer.evaluation.embeddings_io import format_table
from mvformer.evaluation.scoring import score_with_controls
from mvformer.features.cache import open_feature_cache
from mvformer.files import output_folder
from mvformer.hub import parse_hub_id
from mvformer.progress import note
from mvformer.runs import EVAL_METRICS_NAME, EVAL_NAME
from mvformer.viz import PhaseLabels, plot_cost_matrices

MARKER = EVAL_METRICS_NAME  # every evaluation folder holds it


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


def _embed_set(trained: Trained, dataset: EvaluationSet) -> tuple[list, list]:
    """Embeddings of both splits, from the feature cache when one matches this dataset, else from the videos."""
    config = trained.config
    data = dataclasses.replace(config.data, root=str(dataset.train.root))
    cache = open_feature_cache(dataclasses.replace(config, data=data),
                               datasets={"train": dataset.train, "val": dataset.val})
    cached = " (cached)" if cache is not None else ""
    return tuple(embed_split(trained.model, split_set, trained.device, cache, split,
                             f"embedding {dataset.name} {split}{cached}")
                 for split, split_set in (("train", dataset.train), ("val", dataset.val)))


def plot_alignment_picture(embeddings: list[np.ndarray], dataset: VideoDataset, path: Path) -> None:
    """alignment.png: the distances of the first two validation videos' frames, (La, E) and (Lb, E), with each
    frame's nearest neighbour (the pairs Kendall's tau scores) and their phases where labelled."""
    costs, path_nn = align(*embeddings, "nn")  # (La, Lb), (K, 2)
    names = dataset.phase_names
    phases = [PhaseLabels(record.labels, names) if record.labels is not None and names else None
              for record in dataset.records[:2]]
    plot_cost_matrices([costs], [path_nn], [dataset.records[1].name], dataset.records[0].name, path,
                       "nearest neighbours", phases[0], phases[1:])


def evaluate_checkpoint(checkpoint: str, data_roots: list[str] | None = None, out_dir: str | None = None,
                        overwrite: bool = False) -> EvaluationReport:
    """Embed every frame of the train and val splits of each dataset (default: the training data), write
    DATASET.npz per dataset, metrics.json (each dataset and the mean over them, as the paper averages Penn
    Action's 13 actions) and an alignment picture of two validation videos, into OUT (default RUN/eval)."""
    source = Path(checkpoint)
    if out_dir is None and parse_hub_id(checkpoint) is not None:
        raise MVFormerError(f"{checkpoint}: a Hub id has no run folder to hold eval/; pass --out DIR")
    out = Path(out_dir) if out_dir else (source if source.is_dir() else source.parent) / EVAL_NAME
    trained = load_model(checkpoint)
    config = trained.config
    with output_folder(out, MARKER, overwrite, [*trained.inputs, *(data_roots or [config.data.root])]) as staging:
        sets = evaluation_sets(config, data_roots)
        for line in (line for dataset in sets for line in dataset.notes):
            note(line)
        embedded = [_embed_set(trained, dataset) for dataset in sets]
        metrics = score_with_controls(sets, embedded, trained.model, config.eval)
        for dataset, (train_embs, val_embs) in zip(sets, embedded):
            save_embeddings(staging / f"{dataset.name}.npz", train_embs, dataset.train, val_embs, dataset.val)
        first_val = embedded[0][1]
        if len(first_val) >= 2:
            plot_alignment_picture(first_val[:2], sets[0].val, staging / "alignment.png")
        (staging / MARKER).write_text(json.dumps(metrics, indent=2))
    return EvaluationReport(metrics, out, format_table(metrics, {"time only": metrics["time_only"]["mean"]}))
