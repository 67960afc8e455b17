"""One training epoch on real videos, backbone on the fly against the frozen-feature cache, in one run.

Run by hand (about 15 minutes on two CPU cores with the defaults):
    python benchmarks/epoch.py [--data ../shared/data/pushups] [--videos 40] [--copies 1]

Setting: the Penn Action configuration (3 tokens, blocks [1, 3], clips of 2 x 80 frames at 224 px, PROTOCOL.md's
augmentations, batch 1, fp32) with a small ViT: ViT-S/16 geometry (384 wide, 6 heads), four blocks, random
weights saved with `save_pretrained` into a temporary folder (nothing is downloaded). The first `--videos` training
videos of the dataset make the epoch.
- on the fly: `train()` decodes, augments and runs the backbone for every clip (`data.feature_cache=none`).
- cached: `cache_features` first runs the backbone once over every frame, plus `--copies` augmented copies of
  each (the cache's stand-in for online augmentation); `train()` then reads tokens from the cache.
Printed: seconds per epoch and clips per second of each, their ratio, the frames per second of `cache-features`
itself, and after how many epochs the cache has paid for itself.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from transformers import ViTConfig, ViTModel

from mvformer.config import load_config
from mvformer.data.datasets import VideoDataset
from mvformer.features.build import cache_features
from mvformer.train.loop import train

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pushups"
SMALL_VIT = dict(hidden_size=384, num_hidden_layers=4, num_attention_heads=6, intermediate_size=1536,
                 image_size=224, patch_size=16)


def subset_root(source: Path, dest: Path, count: int) -> int:
    """A generic-layout root whose train split is the first `count` training videos of `source` (symlinks)."""
    names = VideoDataset(source, "train").records[:count]
    (dest / "videos").mkdir(parents=True)
    (dest / "splits").mkdir()
    for record in names:
        (dest / "videos" / record.path.name).symlink_to(record.path)
    (dest / "splits" / "train.txt").write_text("".join(f"{record.name}\n" for record in names))
    return sum(record.num_frames for record in names)


def timed_epoch(config) -> float:
    started = time.perf_counter()
    train(config)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a generic-layout dataset root")
    parser.add_argument("--videos", type=int, default=40, help="training videos in the epoch")
    parser.add_argument("--copies", type=int, default=1, help="augmented copies stored by the cache")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        torch.manual_seed(0)
        ViTModel(ViTConfig(**SMALL_VIT), add_pooling_layer=False).save_pretrained(folder / "vit-small")
        frames = subset_root(args.data, folder / "data", args.videos)
        base = [f"data.root={folder / 'data'}", "data.format=generic", "backbone.name=vit",
                f"backbone.path={folder / 'vit-small'}", "backbone.blocks=[1, 3]", "model.pool_dim=384",
                "train.epochs=1", "train.batch_size=1", "train.precision=fp32", "train.device=cpu",
                "data.num_workers=2"]
        on_the_fly = load_config("penn_action", base + [f"train.output_dir={folder / 'run-fly'}",
                                                        "data.feature_cache=none"])
        cached = load_config("penn_action", base + [f"train.output_dir={folder / 'run-cached'}",
                                                    f"data.feature_cache={folder / 'cache'}"])

        fly_seconds = timed_epoch(on_the_fly)
        started = time.perf_counter()
        cache_features(cached, copies=args.copies, splits=("train",))
        cache_seconds = time.perf_counter() - started
        cached_seconds = timed_epoch(cached)

    cached_frames = frames * (1 + args.copies)
    print(f"\none epoch of {args.videos} videos ({frames} frames) from {args.data}, small ViT (ViT-S/16 geometry, "
          f"4 blocks), Penn Action head, clips of 2 x 80 frames at 224 px")
    print(f"{'form':<32} {'s/epoch':>9} {'clips/s':>8} {'ratio':>7}")
    print(f"{'on the fly':<32} {fly_seconds:>9.1f} {args.videos / fly_seconds:>8.2f} {1.0:>7.1f}")
    print(f"{'from the feature cache':<32} {cached_seconds:>9.1f} {args.videos / cached_seconds:>8.2f} "
          f"{fly_seconds / cached_seconds:>7.1f}")
    print(f"\ncache-features: {cached_frames} frames (copy 0 + {args.copies} augmented) in {cache_seconds:.1f} s, "
          f"{cached_frames / cache_seconds:.1f} frames/s")
    print(f"the cache pays for itself after {cache_seconds / max(fly_seconds - cached_seconds, 1e-9):.1f} epochs")


if __name__ == "__main__":
    main()
