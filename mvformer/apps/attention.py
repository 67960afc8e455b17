"""`mvformer attention`: where each entity token of the spatial token pooling looks, frame by frame.

Frames are shown as the model saw them, with their aspect ratio kept: the whole frame when it was squashed into the
model's square input (the patch grid is stretched back over it), its centre square when cropped. Attention is drawn
on one scale for the whole video (a patch's weight times the number of patches: 1 = spread evenly), shown beside
it as a labelled colour bar. The maps come from one pass of the model, the pictures from a second decoding pass,
so memory is bounded whatever the video's length. Library: `attention_maps` (a model and a video in,
`AttentionMaps` out) and `write_attention`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
    display_chunks,
    frame_caption,
    load_app_model,
    output_name,
    phase_labels,
    video_fps,
)
from mvformer.checkpoint import Trained, source_files
from mvformer.data.transforms import augment_views, normalize
from mvformer.errors import MVFormerError
from mvformer.files import atomic_paths, check_output_folder, check_outputs
from mvformer.model.pooling import SpatialTokenPooling
from mvformer.progress import progress_bar

MAX_STRIP_FRAMES = 64  # columns of the strip picture
COMPOSE_BATCH = 32  # animation frames composed at once (their overlays are N + 1 frames each)


def attention_outputs(out_dir: Path, animation: str) -> tuple[Path, Path, Path]:
    """attention.npy, attention_strip.png and attention.mp4|.gif in out_dir."""
    if f".{animation}" not in viz.ANIMATION_SUFFIXES:
        raise MVFormerError(f"animation format {animation!r}: choose mp4 or gif")
    return out_dir / "attention.npy", out_dir / "attention_strip.png", out_dir / f"attention.{animation}"


@dataclass(frozen=True)
class AttentionMaps:
    """Where each entity token of one video looks."""

    video: Path
    maps: np.ndarray  # float32 (L, N, gh, gw): the pooling attention of every frame, each map summing to one
    squashed: bool  # the frames were squashed into the square input (else their centre square was taken)


@torch.no_grad()
def attention_maps(trained: Trained, video: str | Path, frames: str = "squash") -> AttentionMaps:
    """The pooling attention of every frame of a video file or frame folder over the patch grid. Only LSTP models
    have spatial attention."""
    model, video = trained.model, Path(video)
    if not isinstance(model.head.pooling, SpatialTokenPooling):
        raise MVFormerError(f"{trained.source}: model.pooling is {model.model_cfg.pooling!r}, which has no spatial "
                            f"attention to show; only 'lstp' models have one")
    check_videos([video])
    pooling, (grid_h, grid_w) = model.head.pooling, model.backbone.grid
    size = _decode_size(model, frames)
    maps = []
    for chunk in _progress_frames(video, size):
        seen = augment_views(torch.from_numpy(chunk)[None], None, model.image_size, None)[0]  # (c, 3, S, S) in [0, 1]
        patches, _ = model.backbone(normalize(seen, model.backbone.mean, model.backbone.std).to(trained.device))
        maps.append(pooling.attention(patches).float().cpu().numpy().reshape(len(chunk), -1, grid_h, grid_w))
    _check_length(video, sum(map(len, maps)))
    return AttentionMaps(video, np.concatenate(maps), squashed=size is not None)


def _check_options(every: int, num_frames: int, video: Path, strip_frames: int, display_size: int) -> float:
    """Refuse options the pictures cannot take; returns the animation's frame rate."""
    if not 1 <= strip_frames <= MAX_STRIP_FRAMES:
        raise MVFormerError(f"strip frames = {strip_frames}: must be from 1 to {MAX_STRIP_FRAMES}")
    check_display_height(display_size)
    if not 1 <= every < num_frames:
        raise MVFormerError(f"every = {every}: must be from 1 to {num_frames - 1}, since {video} has {num_frames} "
                            f"frames and the animation shows at least two")
    rate = (video_fps(video) or DEFAULT_FPS) / every
    viz.check_frame_rate(rate, f"every = {every}: the animation's frame rate")
    return rate


def write_attention(out_dir: str | Path, attention: AttentionMaps, overwrite: bool = False, every: int = 1,
                    animation: str = "mp4", strip_frames: int = 8, display_size: int = 192,
                    inputs: Sequence[Path] = ()) -> tuple[Path, Path, Path]:
    """OUT/attention.npy (float32 (L, N, gh, gw), each map sums to one), OUT/attention_strip.png (`strip_frames`
    frames, one row per token, and the colour scale) and OUT/attention.mp4 (or .gif on request; every `every`-th
    frame and each token's attention over it side by side, `display_size` pixels high, captioned with the frame
    number, the frame's phase where the video is labelled and each token's peak, beside the colour scale)."""
    out_dir, video, maps = Path(out_dir), attention.video, attention.maps
    outputs = attention_outputs(out_dir, animation)
    check_output_folder(out_dir, [*inputs, video])
    check_outputs(outputs, overwrite, [*inputs, video])
    rate = _check_options(every, len(maps), video, strip_frames, display_size)
    phases = phase_labels(video, len(maps))
    patches = maps.shape[2] * maps.shape[3]
    scale = float(maps.max()) * patches  # the video's most attended patch tops the colour scale
    shown = np.arange(0, len(maps), every)  # (K,) frames of the animation
    picked = shown[np.unique(np.linspace(0, len(shown) - 1, min(strip_frames, len(shown))).round().astype(int))]
    height = viz.even(display_size)
    name, last = output_name(video), len(maps) - 1
    scale_bar = viz.colourbar_image(height + 2 * viz.caption_line_height(height), scale,
                                    viz.attention_scale_label(patches))
    strip_images, strip_overlays = [], []
    progress = progress_bar(total=len(shown), desc="animation", unit="frame", leave=False)
    with atomic_paths(outputs) as (npy_path, strip_path, animation_path):
        np.save(npy_path, maps)
        with viz.AnimationWriter(animation_path, rate) as writer:
            for numbers, pictures in display_chunks(video, shown, height, square=not attention.squashed):
                for first in range(0, len(numbers), COMPOSE_BATCH):
                    batch, images = numbers[first:first + COMPOSE_BATCH], pictures[first:first + COMPOSE_BATCH]
                    overlays = viz.overlay_attention(images, maps[batch], scale)  # (k, N, H, W, 3)
                    writer.write(compose_frames(images, overlays, maps[batch], scale_bar,
                                                [frame_caption(name, f, last, phases) for f in batch.tolist()]))
                    keep = np.isin(batch, picked)
                    strip_images.append(images[keep])
                    strip_overlays.append(overlays[keep])
                    progress.update(len(batch))
        progress.close()
        titles = [f"frame {f}" + (f"\n{phases.name(f)}" if phases is not None else "") for f in picked.tolist()]
        viz.plot_attention_strip(np.concatenate(strip_images), np.concatenate(strip_overlays), titles, scale, patches,
                                 strip_path)
    return outputs


def attention_command(checkpoint: str | Path, video: str | Path, out_dir: str | Path, overwrite: bool = False,
                      device: str = "auto", frames: str = "squash", every: int = 1, animation: str = "mp4",
                      strip_frames: int = 8, display_size: int = 192) -> AttentionMaps:
    """`mvformer attention`: every check first (outputs, options, the video and its labels), the model loaded
    once, `attention_maps`, then `write_attention`."""
    out_dir, video = Path(out_dir), Path(video)
    outputs = attention_outputs(out_dir, animation)
    inputs = [*source_files(checkpoint), video]
    check_output_folder(out_dir, inputs)
    check_outputs(outputs, overwrite, inputs)
    (num_frames,) = check_videos([video])
    _check_options(every, num_frames, video, strip_frames, display_size)
    phase_labels(video, num_frames)  # a labels file of the wrong length is refused before the model runs
    attention = attention_maps(load_app_model(checkpoint, device), video, frames)
    write_attention(out_dir, attention, overwrite, every, animation, strip_frames, display_size,
                    source_files(checkpoint))
    return attention


def compose_frames(images: np.ndarray, overlays: np.ndarray, maps: np.ndarray, scale_bar: np.ndarray,
                   captions: list[tuple[viz.Line, ...]]) -> np.ndarray:
    """Animation frames: each frame with its two-line caption, then each token's overlay captioned with its peak on
    the scale, then the colour bar. images uint8 (k, H, W, 3), overlays (k, N, H, W, 3), maps (k, N, gh, gw),
    scale_bar uint8 (H + caption, w, 3) -> uint8 (k, H + caption, (N + 1) * W + w, 3)."""
    patches = maps.shape[2] * maps.shape[3]
    peaks = maps.max(axis=(2, 3)) * patches  # (k, N)
    panels = [viz.add_captions(images, captions)]
    for token in range(overlays.shape[1]):
        panels.append(viz.add_captions(overlays[:, token], [(((f"token {token}", viz.TEXT_COLOUR),),
                                                             ((f"peak {peak:.1f}", viz.TEXT_COLOUR),))
                                                            for peak in peaks[:, token].tolist()]))
    panels.append(np.broadcast_to(scale_bar, (len(images), *scale_bar.shape)))
    return np.concatenate(panels, axis=2)
