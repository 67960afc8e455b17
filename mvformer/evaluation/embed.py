"""Run a model over whole videos (every frame, no augmentation) and score the embeddings."""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mvformer.config import Config, EvalConfig
from mvformer.data.datasets import VideoDataset, check_label_pair, is_generic_root, split_overlap_warning
from mvformer.data.formats import open_dataset, penn_action_actions
from mvformer.errors import MVFormerError
from mvformer.evaluation.metrics import evaluate_embeddings, mean_of_metrics
from mvformer.evaluation.scorable import skip_lines, unscorable_tasks
from mvformer.features.cache import FeatureCache
from mvformer.model.mvformer import MVFormer
from mvformer.progress import progress_bar

CHUNK_FRAMES = 256  # frames through the backbone (or read from the cache) at once


def _video_chunks(model: MVFormer, frames: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Backbone features (t, P, C), (t, C_cls) of consecutive chunks of decoded uint8 frames (L, H, W, 3)."""
    for start in range(0, len(frames), CHUNK_FRAMES):
        patches, cls = model.features(model.prepare(frames[start:start + CHUNK_FRAMES])[None])
        yield patches[0], cls[0]


def _cached_chunks(cache: FeatureCache, split: str, index: int,
                   num_frames: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Cached features of consecutive chunks of one cached video (the backbone replaced by reads)."""
    for start in range(0, num_frames, CHUNK_FRAMES):
        yield cache.features(split, index, np.arange(start, min(start + CHUNK_FRAMES, num_frames)))


def _cache_rows(cache: FeatureCache, split: str, dataset: VideoDataset) -> list[int]:
    """The cached video of each video of `dataset`, by name (a dataset may be a part of the cached split, as one
    Penn Action action is of all 13)."""
    rows = {video.name: row for row, video in enumerate(cache.records(split))}
    missing = [record.name for record in dataset.records if record.name not in rows]
    if missing:
        raise MVFormerError(f"{cache.folder}: video {missing[0]} of {dataset.root} is not in the cached {split} split")
    return [rows[record.name] for record in dataset.records]


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
    rows = _cache_rows(cache, split, dataset) if cache is not None else None
    embeddings = []
    for index in progress_bar(range(len(dataset)) if indices is None else indices, desc=desc, leave=False,
                              unit="video"):
        chunks = _video_chunks(model, dataset.frames(index)) if cache is None else \
            _cached_chunks(cache, split, rows[index], dataset.records[index].num_frames)
        embeddings.append(model.embed_token_chunks(chunks).cpu().numpy())
    model.train(was_training)
    return embeddings


@dataclass
class EvaluationSet:
    """One dataset scored on its own: its train split (probes are fitted there) and its val split."""

    name: str
    train: VideoDataset
    val: VideoDataset
    notes: list[str] = field(default_factory=list)  # check_scorable's lines: tasks left out, videos in both splits


def evaluation_sets(config: Config, roots: Sequence[str | Path] | None = None,
                    opened: tuple[VideoDataset, VideoDataset] | None = None) -> list[EvaluationSet]:
    """The datasets a run is scored on (PROTOCOL.md): the training data by default, else each of `roots` (a root
    holding splits/ in the generic layout, any other in the config's format). Penn Action without a chosen action
    becomes its 13 actions, each scored on its own and averaged. `opened`: the training data's (train, val) splits
    already opened, reused when they are what is scored."""
    sets = []
    for root in [Path(root) for root in (roots or [config.data.root])]:
        format = "generic" if is_generic_root(root) else config.data.format
        subset = None if format == "generic" else config.data.subset
        if format == "penn_action" and subset is None:
            named = [(action, action) for action in penn_action_actions(root)]
        else:
            named = [(root.name if subset is None else f"{root.name}_{subset}", subset)]
        for name, chosen in named:
            if opened is not None and roots is None and chosen == subset:
                train_set, val_set = opened
            else:
                train_set, val_set = (open_dataset(root, split, format, chosen, size=config.data.decode_size)
                                      for split in ("train", "val"))
            sets.append(EvaluationSet(name, train_set, val_set))
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise MVFormerError(f"dataset folders must have different names to be reported apart: {', '.join(names)}")
    for dataset in sets:
        check_scorable(dataset, config.eval)
    return sets


def check_scorable(dataset: EvaluationSet, cfg: EvalConfig) -> None:
    """Before any long work: refuse a set that cannot be scored at all (a video without labels, a val class train
    does not know, no labelled val frame), and put in `dataset.notes` one line per task its labels do not allow
    (`evaluation.scorable`: reported as n/a, the others scored) and a warning when a video is in both splits."""
    check_label_pair(dataset.train, dataset.val)
    train, val = dataset.train.records, dataset.val.records
    try:
        unscorable = unscorable_tasks([r.labels for r in train], [r.labels for r in val], dataset.train.num_classes,
                                      cfg.tasks, cfg.fractions, [r.name for r in train], [r.name for r in val],
                                      dataset.train.classes)
    except MVFormerError as error:
        raise MVFormerError(f"{dataset.train.root}: {error}") from None
    overlap = split_overlap_warning(dataset.train, dataset.val)
    dataset.notes = skip_lines(dataset.name, unscorable, cfg.tasks) + ([f"{dataset.name}: {overlap}"] if overlap
                                                                       else [])


def score_sets(sets: Sequence[EvaluationSet], embeddings: Sequence[tuple[list[np.ndarray], list[np.ndarray]]],
               cfg: EvalConfig) -> dict:
    """The protocol metrics of each set from its (train, val) embeddings, and their mean over sets:
    {"datasets": {name: metrics}, "mean": metrics}. The one scoring path of training and `mvformer evaluate`."""
    datasets = {}
    for dataset, (train_embs, val_embs) in zip(sets, embeddings):
        try:
            datasets[dataset.name] = evaluate_embeddings(
                train_embs, [r.labels for r in dataset.train.records], val_embs, [r.labels for r in dataset.val.records],
                num_classes=dataset.train.num_classes, fractions=tuple(cfg.fractions), ks=tuple(cfg.ks),
                stride=cfg.stride, tasks=tuple(cfg.tasks), classifier=cfg.classifier)
        except MVFormerError as error:
            raise MVFormerError(f"{dataset.train.root}: {error}") from None
    return {"datasets": datasets, "mean": mean_of_metrics(list(datasets.values()))}


def evaluate_model(model: MVFormer, train_set: VideoDataset, val_set: VideoDataset, cfg: EvalConfig,
                   device: torch.device) -> dict:
    """Embed both splits with `model` and score them (the metrics of this one dataset)."""
    dataset = EvaluationSet("data", train_set, val_set)
    check_scorable(dataset, cfg)
    embeddings = [(embed_split(model, train_set, device, split="train", desc="embedding train"),
                   embed_split(model, val_set, device, split="val", desc="embedding val"))]
    return score_sets([dataset], embeddings, cfg)["mean"]
