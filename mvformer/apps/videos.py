"""What the own-video commands share: finding videos, their frame rates, decoding them in bounded chunks, and
embedding a whole video file through the model.

Frames: by default every frame is squashed to the model's square input size in the decoder, as training and the
benchmark do (`frames="squash"`); `frames="crop"` takes the centre square of the native frame instead. Memory:
videos are decoded, prepared and passed through the frozen backbone DECODE_CHUNK frames at a time; only the small
entity tokens of the whole video are kept, and the temporal encoder then attends over all of them at once.
Distances between frames are squared Euclidean on L2-normalised embeddings, i.e. 2 - 2 x cosine similarity.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch

from mvformer import viz
from mvformer.data.video import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    frame_chunks,
    frame_image_paths,
)
from mvformer.errors import MVFormerError
from mvformer.model.mvformer import MVFormer
from mvformer.progress import progress_bar

FRAME_MODES = ("squash", "crop")


DECODE_CHUNK = 256  # frames decoded, prepared and pushed through the backbone at once


MIN_FRAMES = 2  # the model embeds frames in time: a single frame has no sequence to speak of


DEFAULT_FPS = 25.0  # animations of frame folders, which record no frame rate


@dataclass(frozen=True)
class VideoEmbedding:
    """Per-frame embeddings of one video."""

    source: Path
    embeddings: np.ndarray  # float32 (L, E), L2-normalised
    fps: float | None  # None for frame folders


def sibling_path(path: Path, suffix: str) -> Path:
    """FILE.ext -> FILE_suffix (the side outputs of a command that writes FILE.ext)."""
    return path.with_name(f"{path.stem}_{suffix}")


def _is_frame_folder(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() for p in folder.iterdir())


def list_videos(inputs: Sequence[str | Path]) -> list[Path]:
    """Video files and frame folders named by `inputs`: each a video file, a frame folder, or a folder of them
    (a dataset root in the generic layout counts by its videos/ folder); folders are listed in name order."""
    videos = []
    for item in map(Path, inputs):
        if item.is_file():
            videos.append(item)
            continue
        if not item.is_dir():
            raise MVFormerError(f"{item}: no such video file or folder")
        if _is_frame_folder(item):
            videos.append(item)
            continue
        folder = item / "videos" if (item / "videos").is_dir() else item
        found = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".") and (
            (p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES) or (p.is_dir() and _is_frame_folder(p)))]
        if not found:
            raise MVFormerError(f"{item}: holds no videos ({'/'.join(VIDEO_SUFFIXES)} files or frame folders)")
        videos += found
    return videos


def video_fps(path: Path) -> float | None:
    """Average frame rate of a video file's first video stream (PyAV's average_rate); None for frame folders."""
    if path.is_dir():
        return None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MVFormerError(f"{path}: cannot decode video (no video stream)")
            rate = container.streams.video[0].average_rate
    except av.FFmpegError as error:
        raise MVFormerError(f"{path}: cannot decode video ({getattr(error, 'strerror', None) or error})") from None
    return float(rate) if rate else None


def _frame_count_hint(path: Path) -> int | None:
    """Frames of a frame folder, or the container's own count of a file (None when it does not say)."""
    if path.is_dir():
        return len(frame_image_paths(path))
    try:
        with av.open(str(path)) as container:
            return container.streams.video[0].frames or None
    except (av.FFmpegError, IndexError):  # decoding reports the problem properly
        return None


def _progress_frames(path: Path, size: int | None) -> Iterator[np.ndarray]:
    """frame_chunks with a progress bar over frames."""
    bar = progress_bar(total=_frame_count_hint(path), desc=path.name, unit="frame", leave=False)
    for chunk in frame_chunks(path, DECODE_CHUNK, size):
        bar.update(len(chunk))
        yield chunk
    bar.close()


def display_frames(path: Path, indices: np.ndarray, height: int) -> np.ndarray:
    """Frames `indices` (any order, repeats allowed) of a video at `height` pixels, aspect kept: uint8 (K, height,
    W, 3). Decodes the video once and keeps only the wanted frames, already shrunk."""
    wanted, where = np.unique(indices, return_inverse=True)
    kept, start = [], 0
    for chunk in frame_chunks(path, DECODE_CHUNK):
        width = viz.display_width(*chunk.shape[1:3], height)
        local = wanted[(wanted >= start) & (wanted < start + len(chunk))] - start
        if len(local):
            kept.append(viz.resize_frames(chunk[local], height, width))
        start += len(chunk)
    if not kept or wanted[-1] >= start:
        raise MVFormerError(f"{path}: frame {int(wanted[-1])} out of range (video has {start} frames)")
    return np.concatenate(kept)[where]


def _decode_size(model: MVFormer, frames: str) -> int | None:
    if frames not in FRAME_MODES:
        raise MVFormerError(f"frames {frames!r}: choose one of {', '.join(FRAME_MODES)}")
    return model.config.data.image_size if frames == "squash" else None


def _check_length(path: Path, num_frames: int) -> None:
    if num_frames < MIN_FRAMES:
        raise MVFormerError(f"{path}: has {num_frames} frame{'s' * (num_frames != 1)}; the model needs at least "
                            f"{MIN_FRAMES} to embed a video")


@torch.no_grad()
def embed_video_file(model: MVFormer, path: str | Path, device: torch.device, frames: str = "squash") -> VideoEmbedding:
    """Every frame of one video through the model: (L, E) L2-normalised embeddings, chunk by chunk (see the
    module docstring for what memory is bounded by)."""
    path = Path(path)
    size = _decode_size(model, frames)
    chunks = (tuple(part[0] for part in model.features(model.prepare(chunk)[None]))
              for chunk in _progress_frames(path, size))  # (c, P, C), (c, C_cls) each
    tokens = model.pool_chunks(chunks)  # (1, L, N, D)
    _check_length(path, tokens.shape[1])
    return VideoEmbedding(path, model.encode_pooled(tokens).cpu().numpy(), video_fps(path))


def output_name(path: Path) -> str:
    return path.name if path.is_dir() else path.stem
