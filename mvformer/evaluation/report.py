"""`mvformer evaluate`: a checkpoint over a dataset's train and val videos -> embeddings, metrics, pictures."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from mvformer.checkpoint import model_from_checkpoint
from mvformer.config import Config
from mvformer.data.datasets import VideoDataset, is_generic_root
from mvformer.data.formats import open_dataset, penn_action_actions
from mvformer.errors import MVFormerError
from mvformer.evaluation.embed import embed_split
from mvformer.evaluation.embeddings_io import format_table, score_files
from mvformer.features.cache import open_feature_cache
from mvformer.model.mvformer import MVFormer
from mvformer.runtime import resolve_device
from mvformer.viz import plot_alignment


def save_embeddings(path: Path, train_embs: list[np.ndarray], train_set: VideoDataset,
                    val_embs: list[np.ndarray], val_set: VideoDataset) -> None:
    """The model-free evaluation format: frames of all videos concatenated, split by `*_lens`."""
    arrays = {}
    for split, embs, dataset in (("train", train_embs, train_set), ("val", val_embs, val_set)):
        arrays[f"{split}_embs"] = np.concatenate(embs).astype(np.float32)  # (frames, E)
        arrays[f"{split}_lens"] = np.array([len(e) for e in embs], dtype=np.int64)
        arrays[f"{split}_names"] = np.array([r.name for r in dataset.records])
        if all(r.labels is not None for r in dataset.records):
            arrays[f"{split}_labels"] = np.concatenate([r.labels for r in dataset.records]).astype(np.int64)
    np.savez(path, **arrays)


def evaluation_datasets(config: Config, data_roots: list[str] | None) -> list[tuple[str, tuple[Path, str, str | None]]]:
    """(report name, (root, format, subset)) of each dataset to score, the training data by default.

    A root holding splits/ is read in the generic layout, any other in the config's format. Penn Action without a
    chosen action becomes its 13 actions, each scored on its own (PROTOCOL.md).
    """
    datasets = []
    for root in [Path(root) for root in (data_roots or [config.data.root])]:
        format = "generic" if is_generic_root(root) else config.data.format
        subset = None if format == "generic" else config.data.subset
        if format == "penn_action" and subset is None:
            datasets += [(action, (root, format, action)) for action in penn_action_actions(root)]
        else:
            datasets.append((root.name if subset is None else f"{root.name}_{subset}", (root, format, subset)))
    return datasets


def _embed_splits(model: MVFormer, name: str, root_format_subset: tuple[Path, str, str | None],
                  train_set: VideoDataset, val_set: VideoDataset, device: torch.device) -> tuple[list, list]:
    """Embeddings of both splits, from the feature cache when one matches this dataset, else from the videos."""
    root, format, subset = root_format_subset
    data = dataclasses.replace(model.config.data, root=str(root), format=format, subset=subset)
    cache = open_feature_cache(dataclasses.replace(model.config, data=data), datasets={"train": train_set,
                                                                                       "val": val_set})
    cached = " (cached)" if cache is not None else ""
    return tuple(embed_split(model, dataset, device, cache, split, f"embedding {name} {split}{cached}")
                 for split, dataset in (("train", train_set), ("val", val_set)))


def evaluate_checkpoint(checkpoint: str, data_roots: list[str] | None = None, out_dir: str | None = None) -> dict:
    """Embed every frame of the train and val splits of each dataset root (default: the training data),
    write DATASET.npz per dataset, metrics.json (each dataset and the mean over them, as the paper averages
    Penn Action's 13 actions) and an alignment picture of two validation videos; print the table."""
    model = model_from_checkpoint(checkpoint)
    config = model.config
    datasets = evaluation_datasets(config, data_roots)
    names = [name for name, _ in datasets]
    if len(set(names)) != len(names):
        raise MVFormerError(f"dataset folders must have different names to be reported apart: {', '.join(names)}")
    splits = []
    for name, (root, format, subset) in datasets:
        train_set, val_set = (open_dataset(root, split, format, subset, size=config.data.image_size)
                              for split in ("train", "val"))
        if not (train_set.labelled and val_set.labelled):
            raise MVFormerError(f"{root}: the dataset has no frame labels, so it cannot be scored")
        splits.append((train_set, val_set))
    device = resolve_device(config.train.device)
    model.to(device)
    embedded = [_embed_splits(model, name, root_format_subset, train_set, val_set, device)
                for (name, root_format_subset), (train_set, val_set) in zip(datasets, splits)]

    checkpoint_path = Path(checkpoint)
    run_dir = checkpoint_path if checkpoint_path.is_dir() else checkpoint_path.parent
    out = Path(out_dir) if out_dir else run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (train_set, val_set), (train_embs, val_embs) in zip(names, splits, embedded):
        paths.append(out / f"{name}.npz")
        save_embeddings(paths[-1], train_embs, train_set, val_embs, val_set)
    first_val_embs, first_val_set = embedded[0][1], splits[0][1]
    if len(first_val_embs) >= 2:
        plot_alignment(first_val_embs[0], first_val_embs[1], out / "alignment.png",
                       f"{first_val_set.records[0].name} vs {first_val_set.records[1].name}")
    result = score_files(paths, stride=config.eval.stride, fractions=config.eval.fractions, ks=config.eval.ks,
                         classifier=config.eval.classifier)
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    print(format_table(result))
    print(f"wrote {out / 'metrics.json'} and the embeddings ({', '.join(p.name for p in paths)})")
    return result
