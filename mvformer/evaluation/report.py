"""`mvformer evaluate`: a checkpoint over a dataset's train and val videos -> embeddings, metrics, pictures."""

import json
from pathlib import Path

import numpy as np

from mvformer.data.datasets import VideoDataset
from mvformer.evaluation.embed import embed_dataset, score_embeddings
from mvformer.train import model_from_checkpoint, resolve_device
from mvformer.viz import plot_alignment


def metrics_table(metrics: dict) -> str:
    """Two aligned columns, one metric per line (e.g. `classification@1.0  0.912`)."""
    lines = []
    for name, value in metrics.items():
        entries = value.items() if isinstance(value, dict) else [(None, value)]
        for key, number in entries:
            label = name if key is None else f"{name}@{key}"
            lines.append(f"{label:<22} {'n/a' if number is None else f'{number:.4f}'}")
    return "\n".join(lines)


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


def evaluate_checkpoint(checkpoint: str, data_root: str | None = None, out_dir: str | None = None) -> dict:
    """Embed every frame of the train and val splits, score them, write embeddings.npz, metrics.json
    and an alignment picture of two validation videos; print the table."""
    model = model_from_checkpoint(checkpoint)
    config = model.config
    root = data_root or config.data.root
    train_set = VideoDataset(root, "train", size=config.data.image_size)
    val_set = VideoDataset(root, "val", size=config.data.image_size)
    device = resolve_device(config.train.device)
    model.to(device)
    train_embs = embed_dataset(model, train_set, device, "embedding train")
    val_embs = embed_dataset(model, val_set, device, "embedding val")
    metrics = score_embeddings(train_embs, train_set, val_embs, val_set, config.eval)

    checkpoint_path = Path(checkpoint)
    run_dir = checkpoint_path if checkpoint_path.is_dir() else checkpoint_path.parent
    out = Path(out_dir) if out_dir else run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    save_embeddings(out / "embeddings.npz", train_embs, train_set, val_embs, val_set)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if len(val_embs) >= 2:
        plot_alignment(val_embs[0], val_embs[1], out / "alignment.png",
                       f"{val_set.records[0].name} vs {val_set.records[1].name}")
    print(metrics_table(metrics))
    print(f"wrote {out / 'metrics.json'}, {out / 'embeddings.npz'}")
    return metrics
