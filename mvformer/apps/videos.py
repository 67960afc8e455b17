"""What the own-video commands share: finding videos, their frame rates, decoding them in bounded chunks, and
embedding a whole video file through the model.

Frames: by default every frame is squashed to the model's square input size in the decoder, as training and the
benchmark do (`frames="squash"`); `frames="crop"` takes the centre square of the native frame instead. Memory:
videos are decoded, prepared and passed through the frozen backbone DECODE_CHUNK frames at a time; only the small
entity tokens of the whole video are kept, and the temporal encoder then attends over all of them at once.
Distances between frames are squared Euclidean on L2-normalised embeddings, i.e. 2 - 2 x cosine similarity.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch

from mvformer import viz
from mvformer.checkpoint import Trained, load_model
from mvformer.config import AppFrames
from mvformer.data.datasets import _read_classes, _read_video_labels
from mvformer.data.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES, count_frames, frame_chunks, frame_image_paths
from mvformer.errors import MVFormerError
from mvformer.model.mvformer import MVFormer
from mvformer.progress import progress_bar

TRANSFERRED_MARKER = "transfer.json"  # what `mvformer label` writes beside the labels it transferred

FRAME_MODES: tuple[str, ...] = typing.get_args(AppFrames)


DECODE_CHUNK = 256  # frames decoded, prepared and pushed through the backbone at once


MIN_FRAMES = 2  # the model embeds frames in time: a single frame has no sequence to speak of


DEFAULT_FPS = 25.0  # animations of frame folders, which record no frame rate


DISPLAY_HEIGHTS = (16, 4096)  # pixel height of a video in a picture or an animation: from a thumbnail to 4K


@dataclass(frozen=True)
class VideoEmbedding:
    """Per-frame embeddings of one video."""

    name: str  # what outputs about the video are called (`output_name`; given for an array of frames)
    source: Path | None  # the video file or frame folder; None for frames given as an array
    embeddings: np.ndarray  # float32 (L, E), L2-normalised
    fps: float | None  # None for frame folders and arrays

    def __len__(self) -> int:
        return len(self.embeddings)


def sibling_path(path: Path, suffix: str) -> Path:
    """FILE.ext -> FILE_suffix (the side outputs of a command that writes FILE.ext)."""
    return path.with_name(f"{path.stem}_{suffix}")


def _is_frame_folder(folder: Path) -> bool:
    """A folder of frame images: it holds images and no video files (a folder of videos with a picture beside
    them is still a folder of videos)."""
    suffixes = {p.suffix.lower() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}
    return bool(suffixes & set(IMAGE_SUFFIXES)) and not suffixes & set(VIDEO_SUFFIXES)


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


def check_videos(paths: Sequence[Path]) -> list[int]:
    """Before any model work: every path is a video file or frame folder that decodes (its container or images
    are read, not its pixels) and has at least MIN_FRAMES frames. Returns the frame counts."""
    counts = []
    for path in paths:
        if not path.exists():
            raise MVFormerError(f"{path}: no such video file or frame folder")
        if path.is_dir() and not _is_frame_folder(path):
            raise MVFormerError(f"{path}: is a folder but not a frame folder (it holds no "
                                f"{'/'.join(IMAGE_SUFFIXES)} images, or holds videos too)")
        counts.append(count_frames(path))
        _check_length(path, counts[-1])
    return counts


def check_display_height(height: int) -> None:
    """A video's pixel height in a picture or animation must lie in DISPLAY_HEIGHTS."""
    low, high = DISPLAY_HEIGHTS
    if not low <= height <= high:
        raise MVFormerError(f"height {height!r}: must be a whole number of pixels from {low} to {high}")


def load_app_model(checkpoint: str | Path, device: str) -> Trained:
    """`load_model` for the own-video commands, whose device comes from --device (named so in the error).
    Weights holding NaN or Inf are refused by the loader."""
    if device == "cuda" and not torch.cuda.is_available():
        raise MVFormerError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return load_model(checkpoint, device)


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


def display_chunks(path: Path, wanted: np.ndarray, height: int, square: bool = False
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Frames `wanted` (increasing, no repeats) of a video at `height` pixels with their aspect ratio kept, or
    their centre square with `square`, decoded once chunk by chunk (bounded memory): (frame numbers (k,), uint8
    (k, height, W, 3)) per chunk that holds any. Frames beyond the video's end are never yielded."""
    start = 0
    for chunk in frame_chunks(path, DECODE_CHUNK):
        local = wanted[(wanted >= start) & (wanted < start + len(chunk))] - start
        if len(local):
            pictures = chunk[local]  # (k, H, W, 3)
            if square:
                side = min(pictures.shape[1:3])
                top, left = (pictures.shape[1] - side) // 2, (pictures.shape[2] - side) // 2
                pictures = pictures[:, top:top + side, left:left + side]
            yield local + start, viz.resize_frames(pictures, height, viz.display_width(*pictures.shape[1:3], height))
        start += len(chunk)


def display_frames(path: Path, indices: np.ndarray, height: int) -> np.ndarray:
    """Frames `indices` (any order, repeats allowed) of a video at `height` pixels, aspect kept: uint8 (K, height,
    W, 3). Decodes the video once and keeps only the wanted frames, already shrunk."""
    wanted, where = np.unique(indices, return_inverse=True)
    parts = list(display_chunks(path, wanted, height))
    found = sum(len(numbers) for numbers, _ in parts)
    if found < len(wanted):
        raise MVFormerError(f"{path}: frame {int(wanted[-1])} out of range (video has {count_frames(path)} "
                            f"frames)")
    return np.concatenate([pictures for _, pictures in parts])[where]


def _decode_size(model: MVFormer, frames: str) -> int | None:
    if frames not in FRAME_MODES:
        raise MVFormerError(f"frames {frames!r}: choose one of {', '.join(FRAME_MODES)}")
    # A model trained on native frames (data.frames native) is fed as it was evaluated: native size, central crop.
    return model.image_size if frames == "squash" and model.frame_mode == "squash" else None


def _check_length(path: Path, num_frames: int) -> None:
    if num_frames < MIN_FRAMES:
        raise MVFormerError(f"{path}: has {num_frames} frame{'s' * (num_frames != 1)}; the model needs at least "
                            f"{MIN_FRAMES} to embed a video")


def _array_chunks(frames: np.ndarray, size: int | None) -> Iterator[np.ndarray]:
    """An array of frames in DECODE_CHUNK pieces, squashed to `size` x `size` first when given (as the decoder
    squashes a file's frames; bilinear here, so pixels differ slightly from a decoded file's)."""
    for start in range(0, len(frames), DECODE_CHUNK):
        chunk = frames[start:start + DECODE_CHUNK]
        yield chunk if size is None else viz.resize_frames(chunk, size, size)


@torch.no_grad()
def embed(trained: Trained, video: str | Path | np.ndarray, frames: str = "squash",
          name: str | None = None) -> VideoEmbedding:
    """Every frame of one video through the model: a video file, a frame folder, or uint8 frames (L, H, W, 3);
    returns its (L, E) L2-normalised embeddings, computed chunk by chunk (see the module docstring for what memory
    is bounded by). `frames`: "squash" (as training saw them) or "crop" (the centre square)."""
    model, size = trained.model, _decode_size(trained.model, frames)
    if isinstance(video, np.ndarray):
        if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
            raise MVFormerError(f"frames of dtype {video.dtype} and shape {video.shape}: expected uint8 (L, H, W, "
                                f"3)")
        path, label, chunks, fps = None, name or "video", _array_chunks(video, size), None
        _check_length(label, len(video))
    else:
        path = Path(video)
        check_videos([path])
        label, chunks, fps = name or output_name(path), _progress_frames(path, size), video_fps(path)
    features = (tuple(part[0] for part in model.features(model.prepare(chunk)[None]))
                for chunk in chunks)  # (c, P, C), (c, C_cls) each
    tokens = model.pool_chunks(features)  # (1, L, N, D)
    embeddings = model.encode_pooled(tokens).cpu().numpy()  # (L, E)
    if not np.isfinite(embeddings).all():
        raise MVFormerError(f"{path or label}: the model gives NaN or Inf embeddings for this video (non-finite "
                            f"weights in its backbone?); nothing is written")
    return VideoEmbedding(label, path, embeddings, fps)


def output_name(path: Path) -> str:
    """The name outputs about a video take: a frame folder's name, a file's stem ('clips/..' is named by the
    folder it means, without following symbolic links)."""
    path = Path(os.path.abspath(path))
    return path.name if path.is_dir() else path.stem


def phase_labels(video: Path, num_frames: int) -> viz.PhaseLabels | None:
    """The phases of a video of a generic-layout dataset (ROOT/videos/NAME.ext or frame folder NAME, labels in
    ROOT/labels/NAME.csv, named by ROOT/classes.txt): hand labels, or labels `mvformer label` transferred (its
    output holds TRANSFERRED_MARKER); None for a video without them. The labels must have `num_frames` rows, one per
    frame of the video."""
    video = Path(os.path.abspath(video))
    root, name = video.parent.parent, output_name(video)
    if video.parent.name != "videos" or not (root / "labels" / f"{name}.csv").is_file():
        return None
    classes = _read_classes(root)
    labels = _read_video_labels(root, name, None if classes is None else {c: i for i, c in enumerate(classes)})
    if len(labels) != num_frames:
        raise MVFormerError(f"{root}: labels/{name}.csv has {len(labels)} rows but {video} has {num_frames} "
                            f"frames")
    names = classes or [str(phase) for phase in range(labels.max(initial=-1) + 1)]
    return viz.PhaseLabels(labels, names, transferred=(root / TRANSFERRED_MARKER).is_file())


def phase_text(phases: viz.PhaseLabels | None, frame: int) -> str:
    """A picture title's phase line for one frame, empty for a video without labels."""
    if phases is None:
        return ""
    return f"\n{phases.name(frame)}{' (transferred)' if phases.transferred else ''}"


def frame_caption(name: str, frame: int, last: int, phases: viz.PhaseLabels | None) -> tuple[viz.Line, ...]:
    """The two caption lines under a shown frame: the video's name; the frame number and, where labelled, its
    phase in the phase's colour."""
    second = ((f"frame {frame} / {last}", viz.TEXT_COLOUR),)
    if phases is not None:
        second += ((f"  {phases.name(frame)}{' (transferred)' if phases.transferred else ''}",
                    phases.colour(frame)),)
    return ((name, viz.TEXT_COLOUR),), second
