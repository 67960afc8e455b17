"""Temporal sampling of the training views of a video (CARL's sequence-contrastive protocol).

Each view covers a randomly stretched time window: positions drawn past the real end of the
video are clamped to the last frame and masked out, so the two views of one video see
different, partly overlapping subsets of frames at different effective frame rates.

Two rules, both the published `time_augment` sampling (datasets/*.py, `sample_frames`):
`whole_video` (Penn Action, Pouring, Kinetics: the window is ceil(r * L) long, so it always starts
at frame 0) and `window` (FineGym: a window of ceil(r * min(L, T)) frames at a random offset, the
other views' offsets kept near the first view's first frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mvformer.errors import MVFormerError

SAMPLING_RULES = ("whole_video", "window")


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
    rule: str = "whole_video",
    consistent_offset: float = 0.2,
) -> ClipViews:
    """Draw `num_views` temporally augmented views of a `num_frames`-long video.

    `whole_video`, per view: stretch r ~ U(1, max_stretch); min(L, T) distinct sorted positions
    drawn uniformly from [0, ceil(r * L)). `window`: see `_window_positions`; `consistent_offset`
    (in [0, 1]) only matters there. Either way positions >= L become masked copies of the last
    frame, and views shorter than T are padded with masked copies of the last frame.
    """
    if num_frames < 1:
        raise MVFormerError(f"cannot sample views of a video with {num_frames} frames")
    if clip_len < 1 or num_views < 1:
        raise MVFormerError(f"clip_len ({clip_len}) and num_views ({num_views}) must be >= 1")
    if max_stretch < 1:
        raise MVFormerError(f"max_stretch must be >= 1, got {max_stretch}")
    if rule not in SAMPLING_RULES:
        raise MVFormerError(f"unknown sampling rule {rule!r}; choose one of {', '.join(SAMPLING_RULES)}")
    if not 0.0 <= consistent_offset <= 1.0:
        raise MVFormerError(f"consistent_offset must be in [0, 1], got {consistent_offset}")

    last_frame = num_frames - 1
    num_drawn = min(num_frames, clip_len)
    raw_positions = np.full((num_views, clip_len), num_frames, dtype=np.int64)  # padding reads as "past the end"
    if rule == "window":
        raw_positions[:, :num_drawn] = _window_positions(
            num_frames, num_drawn, num_views, max_stretch, consistent_offset, generator
        )
    else:
        for view in range(num_views):
            stretch = generator.uniform(1.0, max_stretch)
            window = max(num_frames, math.ceil(stretch * num_frames))
            raw_positions[view, :num_drawn] = np.sort(generator.choice(window, size=num_drawn, replace=False))

    masks = (raw_positions <= last_frame).astype(np.float32)
    indices = np.minimum(raw_positions, last_frame)
    return ClipViews(indices=indices, steps=indices.copy(), masks=masks, seq_len=num_frames)


def _window_positions(
    num_frames: int,
    num_drawn: int,
    num_views: int,
    max_stretch: float,
    consistent_offset: float,
    generator: np.random.Generator,
) -> np.ndarray:
    """FineGym's window rule: (num_views, num_drawn) sorted distinct raw positions (may reach past the end).

    Per view: block = ceil(r * n), r ~ U(1, max_stretch), n = min(L, T); n distinct positions of
    [offset, offset + block). View 0's offset is uniform in [0, max(L - block, 1)). Every other view's
    offset is uniform in [max(0, min(L - block, p - s)), max(1, min(L - block + 1, p + s + 1))), with
    p view 0's first frame (clamped to the video) and s = int((1 - consistent_offset) * n); with
    consistent_offset 0 it is drawn as view 0's. Draws, in order: r (V,), the keys whose smallest n
    of the first `block` pick each view's frames (V, max block), the offset fractions (V,).
    """
    stretches = generator.uniform(1.0, max_stretch, size=num_views)  # (V,)
    blocks = np.ceil(stretches * num_drawn).astype(np.int64)  # (V,)
    keys = generator.random((num_views, int(blocks.max())))  # (V, max block)
    keys[np.arange(keys.shape[1]) >= blocks[:, None]] = np.inf  # outside a view's block: never among the n smallest
    chosen = np.sort(np.argsort(keys, axis=1, kind="stable")[:, :num_drawn], axis=1)  # (V, n) within the block
    fractions = generator.random(num_views)  # (V,)

    room = num_frames - blocks  # (V,) L - block, negative when the block runs past the end
    offsets = np.floor(fractions * np.maximum(room, 1)).astype(np.int64)  # randint(0, max(L - block, 1)) per view
    if consistent_offset != 0 and num_views > 1:
        first_frame = min(offsets[0] + chosen[0, 0], num_frames - 1)
        shift = int((1 - consistent_offset) * num_drawn)
        low = np.maximum(0, np.minimum(room[1:], first_frame - shift))  # (V - 1,)
        high = np.maximum(1, np.minimum(room[1:] + 1, first_frame + shift + 1))
        offsets[1:] = low + np.floor(fractions[1:] * (high - low)).astype(np.int64)  # randint(low, high)
    return offsets[:, None] + chosen
