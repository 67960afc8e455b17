"""Frames per second of the frozen backbones on a CPU, in one run: what a laptop pays per frame for each.

Run by hand (a few minutes on two CPU cores with the defaults):
    python benchmarks/backbones.py [--threads 2] [--frames 16] [--repeats 3]

Backbones, each on `--frames` random frames at a time (one backbone chunk; 224 px unless said), best of `--repeats`
timed passes after a warm-up pass; the passes take turns across backbones, so load on a shared machine hits them
alike:
- patches: raw 8x8 pixel patches (the demo's backbone, no network);
- efficientnet_lite0: the shipped `lite0` config's blocks, channels_last (as mvformer runs it), at 224 px (`lite0`'s
  size) and at 160 px, and the same network at 224 px in the default memory order, to show what channels_last buys;
- ViT-S/16 and ViT-B/8: DINO's geometries with random weights (the same operations and FLOPs as the DINO models;
  no weights are needed), all 12 blocks.
Printed: multiply-accumulates per frame (torch's FLOP counter, halved), frames per second, and each backbone's
time per frame relative to efficientnet_lite0's.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import ViTConfig, ViTModel

from mvformer.config import load_config
from mvformer.model.backbone import EfficientNetBackbone, FrozenBackbone, TransformerBackbone, build_backbone
from mvformer.model.efficientnet import load_efficientnet_lite0

IMAGE_SIZE = 224
VIT_SMALL_16 = dict(hidden_size=384, num_attention_heads=6, intermediate_size=1536, patch_size=16)
VIT_BASE_8 = dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072, patch_size=8)


def random_vit(geometry: dict) -> FrozenBackbone:
    """A DINO-sized ViT (12 blocks) with random weights, all blocks run."""
    config = ViTConfig(**geometry, num_hidden_layers=12, image_size=IMAGE_SIZE, attn_implementation="sdpa")
    torch.manual_seed(0)
    return TransformerBackbone(ViTModel(config, add_pooling_layer=False), [11], IMAGE_SIZE)


class DefaultMemoryOrderLite0(EfficientNetBackbone):
    """efficientnet_lite0 with its network and inputs in PyTorch's default (N, C, H, W) memory order."""

    memory_format = torch.contiguous_format


def backbones() -> dict[str, FrozenBackbone]:
    blocks = load_config("lite0").backbone.blocks
    return {
        "patches": build_backbone("patches", [0], image_size=IMAGE_SIZE),
        f"efficientnet_lite0, blocks {blocks}, channels_last": build_backbone("efficientnet_lite0", blocks,
                                                                            image_size=IMAGE_SIZE),
        "efficientnet_lite0, default memory order": DefaultMemoryOrderLite0(load_efficientnet_lite0(), blocks,
                                                                            IMAGE_SIZE),
        "efficientnet_lite0, channels_last, 160 px": build_backbone("efficientnet_lite0", blocks, image_size=160),
        "ViT-S/16 (random weights)": random_vit(VIT_SMALL_16),
        "ViT-B/8 (random weights)": random_vit(VIT_BASE_8),
    }


def macs_per_frame(backbone: FrozenBackbone) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        backbone(torch.zeros(1, 3, backbone.image_size, backbone.image_size))
    return counter.get_total_flops() / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--frames", type=int, default=16, help="frames per timed pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per backbone (the best one counts)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = backbones()
    generator = torch.Generator().manual_seed(0)
    frames = {size: torch.randn(args.frames, 3, size, size, generator=generator)
              for size in {model.image_size for model in models.values()}}
    for model in models.values():
        model(frames[model.image_size][:2])  # warm-up: allocator, oneDNN kernels
    seconds = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            started = time.perf_counter()
            model(frames[model.image_size])
            seconds[name].append(time.perf_counter() - started)
    lite0 = next(name for name in models if name.startswith("efficientnet_lite0"))
    per_frame = {name: min(times) / args.frames for name, times in seconds.items()}
    print(f"{args.threads} threads, {args.frames} frames per pass, best of {args.repeats}\n")
    print("| backbone | GMAC / frame | frames/s | time per frame vs efficientnet_lite0 |")
    print("|---|---|---|---|")
    for name, model in models.items():
        print(f"| {name} | {macs_per_frame(model) / 1e9:.2f} | {1 / per_frame[name]:.1f} | "
              f"{per_frame[name] / per_frame[lite0]:.2f}x |")


if __name__ == "__main__":
    main()
