"""Frame choice of the published TCC and TCN training clips (CARL_MVF/datasets/*.py, sample_frames with
SAMPLING_STRATEGY offset_uniform, the strategy of every published TCC and TCN config).

offset_uniform draws T distinct frames uniformly and sorts them (no offset despite the name); a video shorter
than T gives frames 0..T-1, those past its end masked copies of the last frame. TCN halves the clip into K
anchors so drawn and puts after each anchor a positive 1..positive_window frames earlier (a positive before
frame 0 is a masked copy of frame 0).
"""

from __future__ import annotations

import numpy as np

from mvformer.data.sampling import ClipViews
from mvformer.errors import MVFormerError


def _uniform_positions(num_frames: int, count: int, generator: np.random.Generator, num_views: int) -> np.ndarray:
    """(num_views, count) sorted distinct frame positions, or 0..count-1 when the video is shorter than count."""
    if num_frames < count:
        return np.broadcast_to(np.arange(count, dtype=np.int64), (num_views, count)).copy()
    keys = generator.random((num_views, num_frames))  # a random permutation per view, first `count` kept
    return np.sort(np.argsort(keys, axis=1)[:, :count], axis=1).astype(np.int64)


def _clip(raw_positions: np.ndarray, num_frames: int) -> ClipViews:
    """Raw positions (may lie outside the video) -> decoded indices clamped into it, masks of the real ones."""
    masks = ((raw_positions >= 0) & (raw_positions < num_frames)).astype(np.float32)
    indices = np.clip(raw_positions, 0, num_frames - 1)
    return ClipViews(indices=indices, steps=indices.copy(), masks=masks, seq_len=num_frames)


def _check(num_frames: int, clip_len: int, num_views: int) -> None:
    if num_frames < 1:
        raise MVFormerError(f"cannot sample a clip of a video with {num_frames} frames")
    if clip_len < 1 or num_views < 1:
        raise MVFormerError(f"clip_len ({clip_len}) and num_views ({num_views}) must be >= 1")


def sample_uniform_views(num_frames: int, clip_len: int, generator: np.random.Generator,
                         num_views: int = 1) -> ClipViews:
    """TCC clips: `num_views` independent offset_uniform draws of `clip_len` frames of a `num_frames` video."""
    _check(num_frames, clip_len, num_views)
    return _clip(_uniform_positions(num_frames, clip_len, generator, num_views), num_frames)


def check_tcn_length(length: int, what: str = "data.clip_len") -> None:
    """The one rule of TCN's layout: a clip interleaves anchors and positives, so its length is even."""
    if length % 2:
        raise MVFormerError(f"train.objective tcn draws anchor-positive pairs, interleaved: {what} ({length}) must be "
                            f"even")


def sample_tcn_pairs(num_frames: int, clip_len: int, generator: np.random.Generator, positive_window: int = 5,
                     num_views: int = 1) -> ClipViews:
    """TCN clips of `clip_len` (even) frames: clip_len / 2 offset_uniform anchors, each followed by its positive
    drawn uniformly from 1..positive_window frames before it (anchor, positive, anchor, positive, ...)."""
    _check(num_frames, clip_len, num_views)
    check_tcn_length(clip_len)
    if positive_window < 1:
        raise MVFormerError(f"tcn positive_window must be >= 1, got {positive_window}")
    anchors = _uniform_positions(num_frames, clip_len // 2, generator, num_views)  # (V, K)
    positives = anchors - generator.integers(1, positive_window + 1, size=anchors.shape)  # (V, K)
    return _clip(np.stack([anchors, positives], axis=-1).reshape(num_views, clip_len), num_frames)
