"""Training-clip loading speed on real videos: mvformer's loader against the straightforward form, in one run.

Run by hand (about two minutes):  python benchmarks/loader.py [--data ../shared/data/pushups] [--clips 60]

A clip is what one training step of one video needs at the Penn Action configuration: two time-augmented views of
80 frames each (PROTOCOL.md sampling), as uint8 frames at 224x224.
- straightforward: what the published code does, decode every frame of the video to RGB at its native size, index
  the clip's frames, then resize them to 224x224 (bilinear, antialiased).
- mvformer: a `VideoDataset` (lengths and keyframes indexed from packets up front) decoding the same frames: it
  starts at the keyframe before the first needed frame, stops after the last, converts only the needed frames to
  RGB and resizes them inside the decoder.
Both run in this process on one thread, over the same videos and the same frame draws. Then mvformer's training
items (`TrainingClips`) run through a DataLoader with worker processes (one per core), as training uses them, and,
for scale, the per-clip cost of PROTOCOL.md's augmentations (`augment_batch`, run on the training device, here the
CPU on one thread).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mvformer.model.backbone import IMAGENET_MEAN, IMAGENET_STD
from mvformer.config import AugmentConfig
from mvformer.data.datasets import VideoDataset
from mvformer.train.clips import TrainingClips, augment_batch, collate_clips

SIZE = 224
CLIP_LEN = 80
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pushups"


def straightforward_clip(path: Path, indices: np.ndarray) -> torch.Tensor:
    """Decode the whole video at native size, keep the clip's frames, resize: uint8 (2, T, SIZE, SIZE, 3)."""
    with av.open(str(path)) as container:
        video = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])  # (L, H, W, 3)
    clip = torch.from_numpy(video[indices.ravel()]).permute(0, 3, 1, 2).float()  # (2T, 3, H, W)
    resized = F.interpolate(clip, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).view(*indices.shape, SIZE, SIZE, 3)


def time_clips(load, order: list[int]) -> float:
    """Clips per second of `load(index)` over `order`."""
    started = time.perf_counter()
    for index in order:
        load(index)
    return len(order) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a generic-layout dataset root")
    parser.add_argument("--clips", type=int, default=60, help="clips timed per form")
    args = parser.parse_args()
    torch.set_num_threads(1)

    started = time.perf_counter()
    videos = VideoDataset(args.data, "train", size=SIZE)
    print(f"indexed {len(videos)} videos ({sum(r.num_frames for r in videos.records)} frames) in "
          f"{time.perf_counter() - started:.2f} s (packets only, no decoding)")
    clips = TrainingClips(videos, CLIP_LEN, max_stretch=1.5, seed=0)
    order = np.random.default_rng(0).permutation(len(videos))[:args.clips].tolist()

    def views_of(index: int) -> np.ndarray:
        return clips.views(index).indices  # (2, T)

    def decoded_clip(index: int) -> torch.Tensor:
        return clips[index]["frames"]  # (2, T, SIZE, SIZE, 3) uint8

    check = order[0]
    fast, slow = decoded_clip(check).int(), straightforward_clip(videos.records[check].path, views_of(check)).int()
    print(f"same frames in both forms: mean |difference| {(fast - slow).abs().float().mean():.2f} grey levels "
          f"(two resize filters), shapes {tuple(fast.shape)}")

    slow_rate = time_clips(lambda i: straightforward_clip(videos.records[i].path, views_of(i)), order)
    fast_rate = time_clips(decoded_clip, order)
    workers = os.cpu_count() or 1
    loader = DataLoader(torch.utils.data.Subset(clips, order), batch_size=1, num_workers=workers,
                        collate_fn=collate_clips)
    started = time.perf_counter()
    for _ in loader:
        pass
    worker_rate = len(order) / (time.perf_counter() - started)
    item = clips[check]
    augment_rate = time_clips(lambda i: augment_batch(item["frames"][None], item["augment_seed"][None], SIZE,
                                                      AugmentConfig(), IMAGENET_MEAN, IMAGENET_STD), order[:5])

    print(f"\n{args.clips} two-view clips of {CLIP_LEN} frames at {SIZE} px from {args.data}")
    print(f"{'form':<44} {'clips/s':>8} {'ratio':>7}")
    print(f"{'straightforward (decode all, index, resize)':<44} {slow_rate:>8.2f} {1.0:>7.1f}")
    print(f"{'mvformer, this process':<44} {fast_rate:>8.2f} {fast_rate / slow_rate:>7.1f}")
    print(f"{f'mvformer, DataLoader with {workers} workers':<44} {worker_rate:>8.2f} {worker_rate / slow_rate:>7.1f}")
    print(f"\nfor scale: augmenting one clip (crop, flip, colour jitter, grayscale, blur) on one CPU thread: "
          f"{1 / augment_rate:.2f} s")

if __name__ == "__main__":
    main()
