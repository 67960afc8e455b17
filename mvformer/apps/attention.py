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
    check_display_height,
    check_videos,
    load_app_model,
    model_inputs,
    video_fps,
)
from mvformer.data.transforms import augment_views, normalize
from mvformer.errors import MVFormerError
from mvformer.files import atomic_paths, check_output_folder, check_outputs
from mvformer.model.pooling import SpatialTokenPooling

MAX_STRIP_FRAMES = 64  # columns of the strip picture


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
    if not 1 <= strip_frames <= MAX_STRIP_FRAMES:
        raise MVFormerError(f"strip frames = {strip_frames}: must be from 1 to {MAX_STRIP_FRAMES}")
    check_display_height(display_size)
    outputs = attention_outputs(out_dir, animation)
    inputs = [*model_inputs(checkpoint), video]
    check_output_folder(out_dir, inputs)
    check_outputs(outputs, overwrite, inputs)
    (num_frames,) = check_videos([video])
    if not 1 <= every < num_frames:
        raise MVFormerError(f"every = {every}: must be from 1 to {num_frames - 1}, since {video} has {num_frames} "
                            f"frames and the animation shows at least two")
    rate = (video_fps(video) or DEFAULT_FPS) / every
    viz.check_frame_rate(rate, f"every = {every}: the animation's frame rate")
    model, torch_device = load_app_model(checkpoint, device)
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

    picked = np.unique(np.linspace(0, len(images) - 1, min(strip_frames, len(images))).round().astype(int))
    rows = np.concatenate([images[:, None], overlays], axis=1)  # (K, N + 1, S', S', 3)
    count, panels = rows.shape[:2]
    strip = rows.transpose(0, 2, 1, 3, 4).reshape(count, shown_size, panels * shown_size, 3)  # panels left to right
    with atomic_paths(outputs) as (npy_path, strip_path, animation_path):
        np.save(npy_path, all_maps)
        viz.plot_attention_strip(images[picked], overlays[picked], [frame_numbers[i] for i in picked], strip_path)
        viz.save_animation(np.ascontiguousarray(strip), animation_path, rate)
    return all_maps
