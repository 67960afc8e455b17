"""`mvformer attention`: where each entity token of the spatial token pooling looks, frame by frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mvformer import viz
from mvformer.apps.videos import (
    DEFAULT_FPS,
    _check_length,
    _decode_size,
    _progress_frames,
    video_fps,
)
from mvformer.checkpoint import load_model
from mvformer.data.transforms import augment_views, normalize
from mvformer.errors import MVFormerError
from mvformer.files import atomic_path, check_outputs
from mvformer.model.pooling import SpatialTokenPooling


def attention_outputs(out_dir: Path, animation: str) -> tuple[Path, Path, Path]:
    """attention.npy, attention_strip.png and attention.gif|.mp4 in out_dir."""
    if f".{animation}" not in viz.ANIMATION_SUFFIXES:
        raise MVFormerError(f"animation format {animation!r}: choose gif or mp4")
    return out_dir / "attention.npy", out_dir / "attention_strip.png", out_dir / f"attention.{animation}"


@torch.no_grad()
def attention_video(checkpoint: str | Path, video: str | Path, out_dir: str | Path, overwrite: bool = False,
                    device: str = "auto", frames: str = "squash", every: int = 1, animation: str = "gif",
                    strip_frames: int = 8, display_size: int = 192) -> np.ndarray:
    """Where each entity token looks: the pooling attention of every frame over the patch grid. Writes
    OUT/attention.npy (float32 (L, N, gh, gw), each map sums to one), OUT/attention_strip.png (`strip_frames`
    frames, one row per token) and OUT/attention.gif|.mp4 (the frame and each token's overlay side by side, every
    `every`-th frame). Returns the maps. Only LSTP models have spatial attention."""
    out_dir, video = Path(out_dir), Path(video)
    if every < 1 or strip_frames < 1:
        raise MVFormerError(f"every = {every}, strip frames = {strip_frames}: both must be at least 1")
    outputs = attention_outputs(out_dir, animation)
    check_outputs(outputs, overwrite)
    model, torch_device = load_model(checkpoint, device)
    pooling = model.head.pooling
    if not isinstance(pooling, SpatialTokenPooling):
        raise MVFormerError(f"{checkpoint}: model.pooling is {model.config.model.pooling!r}, which has no spatial "
                            f"attention to show; only 'lstp' models have one")
    image_size, (grid_h, grid_w) = model.config.data.image_size, model.backbone.grid
    shown_size = image_size * max(1, round(display_size / image_size))
    maps, images, overlays, frame_numbers, start = [], [], [], [], 0
    for chunk in _progress_frames(video, _decode_size(model, frames)):
        seen = augment_views(torch.from_numpy(chunk)[None], None, image_size, None)[0]  # (c, 3, S, S) in [0, 1]
        patches, _ = model.backbone(normalize(seen, model.backbone.mean, model.backbone.std).to(torch_device))
        chunk_maps = pooling.attention(patches).float().cpu().numpy()  # (c, N, P)
        maps.append(chunk_maps.reshape(len(chunk), -1, grid_h, grid_w))
        kept = np.flatnonzero((start + np.arange(len(chunk))) % every == 0)
        pixels = (seen[kept] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (k, S, S, 3)
        pixels = viz.resize_frames(pixels, shown_size, shown_size)
        images.append(pixels)
        overlays.append(viz.overlay_attention(pixels, maps[-1][kept]))  # (k, N, S', S', 3)
        frame_numbers += (start + kept).tolist()
        start += len(chunk)
    _check_length(video, start)
    all_maps = np.concatenate(maps)  # (L, N, gh, gw)
    images, overlays = np.concatenate(images), np.concatenate(overlays)  # (K, S', S', 3), (K, N, S', S', 3)

    npy_path, strip_path, animation_path = outputs
    with atomic_path(npy_path) as temporary:
        np.save(temporary, all_maps)
    picked = np.unique(np.linspace(0, len(images) - 1, min(strip_frames, len(images))).round().astype(int))
    with atomic_path(strip_path) as temporary:
        viz.plot_attention_strip(images[picked], overlays[picked], [frame_numbers[i] for i in picked], temporary)
    rows = np.concatenate([images[:, None], overlays], axis=1)  # (K, N + 1, S', S', 3)
    count, panels = rows.shape[:2]
    strip = rows.transpose(0, 2, 1, 3, 4).reshape(count, shown_size, panels * shown_size, 3)  # panels left to right
    with atomic_path(animation_path) as temporary:
        viz.save_animation(np.ascontiguousarray(strip), temporary, (video_fps(video) or DEFAULT_FPS) / every)
    return all_maps
