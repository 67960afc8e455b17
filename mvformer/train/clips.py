"""Training clips: two time-augmented views of each video, from decoded frames or from the feature cache, and
how they are batched.

The draw of video i in epoch e (frames and augmentation) depends on (seed, e, i) only, so it is the same with any
number of loader workers or ranks, and after a resume.
"""


from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from mvformer.config import AugmentConfig
from mvformer.data.datasets import VideoDataset
from mvformer.data.sampling import ClipViews, sample_views
from mvformer.data.transforms import augment_views, normalize
from mvformer.errors import MVFormerError
from mvformer.features.cache import AUGMENTED_SPLIT, FeatureCache


Sampler = Callable[[int, np.random.Generator], ClipViews]  # (video length, generator) -> the item's views


class _Clips(Dataset):
    """What both clip sources share: the views of video i in epoch e, drawn from (seed, e, i), and the item's
    time fields: steps and masks (V, T), seq_lens (V,), plus frame labels (V, T) (-1: unlabelled or padding)
    when `labels` are given (the supervised objective). V = 2 views by default; `sampler` draws others (one view
    for TCC, anchor-positive pairs for TCN)."""

    def __init__(self, lengths: list[int], clip_len: int, max_stretch: float, seed: int, rule: str = "whole_video",
                 consistent_offset: float = 0.2, sampler: Sampler | None = None,
                 labels: list[np.ndarray] | None = None):
        self.lengths = lengths
        self.sampler = sampler
        self.labels = labels
        self.clip_len = clip_len
        self.max_stretch = max_stretch
        self.seed = seed
        self.rule = rule
        self.consistent_offset = consistent_offset
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.lengths)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def views(self, index: int, rng: np.random.Generator | None = None) -> ClipViews:
        rng = rng if rng is not None else self.rng(index)
        if self.sampler is not None:
            return self.sampler(self.lengths[index], rng)
        return sample_views(self.lengths[index], self.clip_len, rng, max_stretch=self.max_stretch, rule=self.rule,
                            consistent_offset=self.consistent_offset)

    def item(self, index: int, drawn: ClipViews, **inputs: torch.Tensor) -> dict:
        """One training item: the inputs of the `drawn` views (frames, augmented views or cached tokens) and their
        time fields."""
        item = {**inputs, "steps": torch.from_numpy(drawn.steps), "masks": torch.from_numpy(drawn.masks),
                "seq_lens": torch.full((drawn.indices.shape[0],), drawn.seq_len, dtype=torch.int64)}
        if self.labels is not None:
            labels = np.where(drawn.masks, self.labels[index][drawn.indices], -1)  # (V, T)
            item["labels"] = torch.from_numpy(labels.astype(np.int64))
        return item


class TrainingClips(_Clips):
    """Two views of each video: uint8 frames (2, T, H, W, 3) and the seed of their augmentation, applied to whole
    batches on the training device by `augment_batch`. Frames decoded at native resolution (which differs between
    videos) are augmented here instead, with the same draw: `views` float (2, T, 3, S, S) in [0, 1]. A video that
    cannot be decoded gives {"skipped": reason} instead: training skips it and counts it."""

    def __init__(self, videos: VideoDataset, clip_len: int, max_stretch: float, seed: int, rule: str = "whole_video",
                 consistent_offset: float = 0.2, augment_here: tuple[int, AugmentConfig] | None = None,
                 sampler: Sampler | None = None, labels: list[np.ndarray] | None = None):
        super().__init__([record.num_frames for record in videos.records], clip_len, max_stretch, seed, rule,
                         consistent_offset, sampler, labels)
        self.videos = videos
        self.augment_here = augment_here  # (output size, augmentation) for native-resolution frames

    def __getitem__(self, index: int) -> dict:
        views = self.views(index)
        needed, where = np.unique(views.indices, return_inverse=True)  # decode each frame once
        try:
            frames = self.videos.frames(index, needed)[where.reshape(views.indices.shape)]  # (2, T, H, W, 3)
        except MVFormerError as error:
            return {"skipped": str(error)}
        seed = np.random.default_rng([self.seed, self.epoch, index, 1]).integers(2**63)
        if self.augment_here is None:
            return self.item(index, views, frames=torch.from_numpy(frames), augment_seed=torch.tensor(seed))
        size, augment = self.augment_here
        views_here = augment_views(torch.from_numpy(frames), torch.Generator().manual_seed(int(seed)), size, augment)
        return self.item(index, views, views=views_here)


class CachedTrainingClips(_Clips):
    """`TrainingClips` from cached tokens: the same views of video i in epoch e, patches (2, T, P, C) and
    cls (2, T, C_cls) float16.

    Each view reads one augmented copy drawn after the views from the same generator (distinct copies for the
    two views when there are enough, as two online draws would differ); copy 0 when the cache has no copies or
    `augmented` is False.
    """

    def __init__(self, cache: FeatureCache, split: str, clip_len: int, max_stretch: float, seed: int,
                 rule: str = "whole_video", consistent_offset: float = 0.2, augmented: bool = True,
                 sampler: Sampler | None = None, labels: list[np.ndarray] | None = None):
        super().__init__([video.num_frames for video in cache.records(split)], clip_len, max_stretch, seed, rule,
                         consistent_offset, sampler, labels)
        self.cache = cache
        self.split = split
        self.num_copies = cache.num_copies if augmented and split == AUGMENTED_SPLIT else 0

    def _draw_copies(self, rng: np.random.Generator, num_views: int) -> np.ndarray:
        if self.num_copies == 0:
            return np.zeros(num_views, dtype=np.int64)
        if self.num_copies >= num_views:
            return rng.choice(self.num_copies, size=num_views, replace=False) + 1
        return rng.integers(1, self.num_copies + 1, size=num_views)

    def __getitem__(self, index: int) -> dict:
        rng = self.rng(index)
        views = self.views(index, rng)
        copies = self._draw_copies(rng, len(views.indices))
        num_views, clip_len = views.indices.shape
        patches = torch.empty(num_views, clip_len, self.cache.num_patches, self.cache.patch_dim,
                              dtype=torch.float16)  # (2, T, P, C)
        cls = torch.empty(num_views, clip_len, self.cache.cls_dim, dtype=torch.float16)  # (2, T, C_cls)
        for view, (indices, copy) in enumerate(zip(views.indices, copies)):  # each view read in place
            self.cache.features(self.split, index, indices, int(copy), out=(patches[view], cls[view]))
        return self.item(index, views, patches=patches, cls=cls)


def augment_batch(frames: torch.Tensor, seeds: torch.Tensor, out_size: int, augment: AugmentConfig,
                  mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 frames (B, V, T, H, W, 3) on the training device -> normalised (B, V, T, 3, S, S); video b's views
    are drawn from its own seed, so the result does not depend on how videos are batched or sharded."""
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    views = augment_views(frames.flatten(0, 1), generators, out_size, augment)  # (B * V, T, 3, S, S)
    return normalize(views, mean, std).view(*frames.shape[:2], *views.shape[1:])


@dataclass
class Batch:
    """One step's share of a global batch, on the training device: what the objectives read. B videos, V views,
    T frames a view; the visual input is either `frames` or the cached `patches` and `cls`."""

    masks: torch.Tensor  # (B, V, T): 1 for a frame of the video, 0 for padding
    steps: torch.Tensor  # (B, V, T) int64: each frame's index in its video
    seq_lens: torch.Tensor  # (B, V) int64: the video's length
    frames: torch.Tensor | None = None  # normalised (B, V, T, 3, S, S)
    patches: torch.Tensor | None = None  # float16 cached patch tokens (B, V, T, P, C)
    cls: torch.Tensor | None = None  # float16 cached CLS tokens (B, V, T, C_cls)
    labels: torch.Tensor | None = None  # (B, V, T) int64 phases, -1 unlabelled or padding (supervised objective)


def training_batch(clips: dict, device: torch.device, image_size: int, augment: AugmentConfig,
                   mean: tuple[float, ...], std: tuple[float, ...]) -> Batch:
    """A collated batch of clips (`collate_clips`) moved to `device` as a `Batch`: uint8 frames augmented there
    from each video's seed, frames augmented in the loader (native resolution) normalised, cached tokens as
    they are. The seeds stay on the host (reading them back from a GPU would sync once per video)."""
    moved = {key: value.to(device, non_blocking=True) for key, value in clips.items() if key != "augment_seed"}
    if "frames" in moved:
        moved["frames"] = augment_batch(moved["frames"], clips["augment_seed"], image_size, augment, mean, std)
    elif "views" in moved:
        moved["frames"] = normalize(moved.pop("views"), mean, std)
    return Batch(**moved)


def collate_clips(items: list[dict]) -> dict:
    """Stack the readable clips of a batch; "skipped" lists the reasons of those that were not. A batch of one
    clip (Penn Action's) is a view of it, not a copy: cached tokens of ViT-B/8 are 0.6 GB a clip."""
    readable = [item for item in items if "skipped" not in item]
    if len(readable) == 1:
        batch = {key: value[None] for key, value in readable[0].items()}
    else:
        batch = {key: torch.stack([item[key] for item in readable]) for key in readable[0]} if readable else {}
    batch["skipped"] = [item["skipped"] for item in items if "skipped" in item]
    return batch


def check_batch_fits(num_videos: int, batch_size: int) -> None:
    """An epoch needs at least one whole global batch."""
    if num_videos < batch_size:
        raise MVFormerError(f"train.batch_size ({batch_size}) is larger than the training set ({num_videos} videos)")


def epoch_batches(num_videos: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """The global batches of one epoch, (steps, batch_size) video indices: a fixed shuffle of (seed, epoch).

    The last incomplete batch is dropped so that every rank gets its share of every batch.
    """
    check_batch_fits(num_videos, batch_size)
    order = np.random.default_rng([seed, epoch, 2]).permutation(num_videos)
    steps = num_videos // batch_size
    return order[:steps * batch_size].reshape(steps, batch_size)
