"""Run a model over whole videos (every frame, no augmentation) and score the embeddings."""

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from mvformer.config import EvalConfig
from mvformer.data.datasets import VideoDataset
from mvformer.errors import MVFormerError
from mvformer.evaluation.metrics import evaluate_embeddings
from mvformer.features.cache import FeatureCache
from mvformer.model.mvformer import MVFormer
from mvformer.progress import progress_bar

CHUNK_FRAMES = 256  # frames through the backbone (or read from the cache) at once


def _video_chunks(model: MVFormer, frames: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Backbone features (t, P, C), (t, C_cls) of consecutive chunks of decoded uint8 frames (L, H, W, 3)."""
    for start in range(0, len(frames), CHUNK_FRAMES):
        patches, cls = model.features(model.prepare(frames[start:start + CHUNK_FRAMES])[None])
        yield patches[0], cls[0]


def _cached_chunks(cache: FeatureCache, split: str, index: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Cached features of consecutive chunks of one video (the backbone replaced by reads)."""
    num_frames = cache.records(split)[index].num_frames
    for start in range(0, num_frames, CHUNK_FRAMES):
        yield cache.features(split, index, np.arange(start, min(start + CHUNK_FRAMES, num_frames)))


@torch.no_grad()
def embed_split(model: MVFormer, dataset: VideoDataset, device: torch.device, cache: FeatureCache | None = None,
                split: str = "val", desc: str = "embedding", indices: Sequence[int] | None = None) -> list[np.ndarray]:
    """One (L, E) float32 array of L2-normalised embeddings per video of `dataset` (or of `indices`), in order:
    from the feature cache's `split` when one is given, else decoded from the videos; both through
    `MVFormer.embed_token_chunks`."""
    if cache is not None and (model.backbone.patch_dim, model.backbone.cls_dim) != (cache.patch_dim, cache.cls_dim):
        raise MVFormerError(f"{cache.folder}: cached tokens have {cache.patch_dim}/{cache.cls_dim} channels, the "
                            f"model expects {model.backbone.patch_dim}/{model.backbone.cls_dim}")
    was_training = model.training
    model.eval().to(device)
    embeddings = []
    for index in progress_bar(range(len(dataset)) if indices is None else indices, desc=desc, leave=False,
                              unit="video"):
        chunks = _video_chunks(model, dataset.frames(index)) if cache is None else _cached_chunks(cache, split, index)
        embeddings.append(model.embed_token_chunks(chunks).cpu().numpy())
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
    train_embs = embed_split(model, train_set, device, split="train", desc="embedding train")
    val_embs = embed_split(model, val_set, device, split="val", desc="embedding val")
    return score_embeddings(train_embs, train_set, val_embs, val_set, cfg)
