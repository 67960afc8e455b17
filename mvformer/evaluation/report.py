"""`mvformer evaluate`: a checkpoint over a dataset's train and val videos -> embeddings, metrics, pictures."""

import json
from pathlib import Path

import numpy as np

from mvformer.data.datasets import VideoDataset
from mvformer.errors import MVFormerError
from mvformer.evaluation.embed import embed_dataset
from mvformer.evaluation.embeddings_io import format_table, score_files
from mvformer.train import model_from_checkpoint, resolve_device
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


def evaluate_checkpoint(checkpoint: str, data_roots: list[str] | None = None, out_dir: str | None = None) -> dict:
    """Embed every frame of the train and val splits of each dataset root (default: the training data),
    write DATASET.npz per dataset, metrics.json (each dataset and the mean over them, as the paper averages
    Penn Action's 13 actions) and an alignment picture of two validation videos; print the table."""
    model = model_from_checkpoint(checkpoint)
    config = model.config
    roots = [Path(root) for root in (data_roots or [config.data.root])]
    names = [root.name for root in roots]
    if len(set(names)) != len(names):
        raise MVFormerError(f"dataset folders must have different names to be reported apart: {', '.join(names)}")
    splits = []
    for root in roots:
        train_set = VideoDataset(root, "train", size=config.data.image_size)
        val_set = VideoDataset(root, "val", size=config.data.image_size)
        if any(r.labels is None for r in train_set.records + val_set.records):
            raise MVFormerError(f"{root}: the dataset has no frame labels, so it cannot be scored")
        splits.append((train_set, val_set))
    device = resolve_device(config.train.device)
    model.to(device)
    embedded = [(embed_dataset(model, train_set, device, f"embedding {name} train"),
                 embed_dataset(model, val_set, device, f"embedding {name} val"))
                for name, (train_set, val_set) in zip(names, splits)]

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
