"""Temporal sampling of the training views of a video (CARL's sequence-contrastive protocol).

Each view covers a randomly stretched time window: positions drawn past the real end of the
video are clamped to the last frame and masked out, so the two views of one video see
different, partly overlapping subsets of frames at different effective frame rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mvformer.errors import MVFormerError


@dataclass(frozen=True)
class ClipViews:
    """Frame choice for the views of one video; row v describes view v."""

    indices: np.ndarray  # (num_views, clip_len) int64: frames to decode, all in [0, seq_len)
    steps: np.ndarray  # (num_views, clip_len) int64: frame positions used by the loss
    masks: np.ndarray  # (num_views, clip_len) float32: 1 = real frame, 0 = padding
    seq_len: int  # number of frames L of the video


def sample_views(
    num_frames: int,
    clip_len: int,
    generator: np.random.Generator,
    num_views: int = 2,
    max_stretch: float = 1.5,
) -> ClipViews:
    """Draw `num_views` independent temporally augmented views of a `num_frames`-long video.

    Per view: stretch r ~ U(1, max_stretch); min(L, T) distinct sorted positions are drawn
    uniformly from [0, ceil(r * L)); positions >= L become masked copies of the last frame;
    views shorter than T are padded with masked copies of the last frame.
    """
    if num_frames < 1:
        raise MVFormerError(f"cannot sample views of a video with {num_frames} frames")
    if clip_len < 1 or num_views < 1:
        raise MVFormerError(f"clip_len ({clip_len}) and num_views ({num_views}) must be >= 1")
    if max_stretch < 1:
        raise MVFormerError(f"max_stretch must be >= 1, got {max_stretch}")

    last_frame = num_frames - 1
    num_drawn = min(num_frames, clip_len)
    raw_positions = np.full((num_views, clip_len), num_frames, dtype=np.int64)  # padding reads as "past the end"
    for view in range(num_views):
        stretch = generator.uniform(1.0, max_stretch)
        window = max(num_frames, math.ceil(stretch * num_frames))
        raw_positions[view, :num_drawn] = np.sort(generator.choice(window, size=num_drawn, replace=False))

    masks = (raw_positions <= last_frame).astype(np.float32)
    indices = np.minimum(raw_positions, last_frame)
    return ClipViews(indices=indices, steps=indices.copy(), masks=masks, seq_len=num_frames)
