"""Run a model over whole videos (every frame, no augmentation) and score the embeddings."""

import numpy as np
import torch

from mvformer.config import EvalConfig
from mvformer.data.augment import augment_views, normalize
from mvformer.data.datasets import VideoDataset
from mvformer.errors import MVFormerError
from mvformer.evaluation.metrics import evaluate_embeddings
from mvformer.model import MVFormer
from mvformer.progress import progress_bar


def prepare_frames(frames: np.ndarray, model: MVFormer, device: torch.device) -> torch.Tensor:
    """uint8 (L, H, W, 3) -> normalised float (L, 3, S, S): centre crop, resize, backbone mean/std."""
    video = torch.from_numpy(frames)[None]  # (1, L, H, W, 3)
    resized = augment_views(video, None, model.config.data.image_size, None)[0]  # (L, 3, S, S)
    return normalize(resized, model.backbone.mean, model.backbone.std).to(device)


@torch.no_grad()
def embed_dataset(model: MVFormer, dataset: VideoDataset, device: torch.device, desc: str = "embedding",
                  chunk_size: int = 256, indices: list[int] | None = None) -> list[np.ndarray]:
    """One (L, E) float32 array of L2-normalised embeddings per video of `dataset` (or of `indices`), in order."""
    was_training = model.training
    model.eval()
    embeddings = []
    for index in progress_bar(range(len(dataset)) if indices is None else indices, desc=desc, leave=False,
                              unit="video"):
        frames = prepare_frames(dataset.frames(index), model, device)
        embeddings.append(model.embed_video(frames, chunk_size).float().cpu().numpy())
    model.train(was_training)
    return embeddings


def score_embeddings(train_embs: list[np.ndarray], train_set: VideoDataset, val_embs: list[np.ndarray],
                     val_set: VideoDataset, cfg: EvalConfig) -> dict:
    """The four protocol metrics of per-video embeddings of a labelled train/val pair of datasets."""
    if train_set.num_classes is None or any(r.labels is None for r in train_set.records + val_set.records):
        raise MVFormerError(f"{train_set.root}: the dataset has no frame labels, so it cannot be scored")
    return evaluate_embeddings(
        train_embs, [r.labels for r in train_set.records], val_embs, [r.labels for r in val_set.records],
        num_classes=train_set.num_classes, fractions=tuple(cfg.fractions), ks=tuple(cfg.ks), stride=cfg.stride,
        classifier=cfg.classifier)


def evaluate_model(model: MVFormer, train_set: VideoDataset, val_set: VideoDataset, cfg: EvalConfig,
                   device: torch.device) -> dict:
    """Embed both splits with `model` and score them."""
    train_embs = embed_dataset(model, train_set, device, "embedding train")
    val_embs = embed_dataset(model, val_set, device, "embedding val")
    return score_embeddings(train_embs, train_set, val_embs, val_set, cfg)
