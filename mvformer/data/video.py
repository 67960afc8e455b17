"""Decode and encode videos with PyAV: video files (any container FFmpeg reads) and folders of frame images.

Every decoding problem (missing, corrupt, truncated file) surfaces as a one-line MVFormerError, never as a
PyAV traceback, because these paths come straight from the user's dataset. File names are taken literally: FFmpeg
is given absolute paths (no "proto:" prefix is read as a protocol) and images are opened with the image2 pattern
matching off (a name holding "%d", "[1]" or "*" is that one file, never a sequence or a glob).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from mvformer.errors import MVFormerError
from mvformer.files import atomic_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif")  # containers looked for in folders
_TRAILING_NUMBER = re.compile(r"(\d+)$")
FrameIndices = Sequence[int] | np.ndarray


def as_frame_indices(indices: FrameIndices, source: str | Path, num_frames: int | None = None) -> np.ndarray:
    """Check that `indices` are sorted (repeats allowed) and in [0, num_frames); return them as int64 (N,)."""
    array = np.asarray(indices)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise MVFormerError(f"{source}: frame indices must be a 1-D sequence of integers, got {array.dtype} "
                            f"{array.shape}")
    if array[0] < 0 or np.any(np.diff(array) < 0):
        raise MVFormerError(f"{source}: frame indices must be non-negative and sorted")
    if num_frames is not None and array[-1] >= num_frames:
        raise _index_out_of_range(source, int(array[-1]), num_frames)
    return array.astype(np.int64)


def _index_out_of_range(source: str | Path, index: int, num_frames: int) -> MVFormerError:
    """The error for asking a video of `num_frames` frames for frame `index`."""
    return MVFormerError(f"{source}: frame index {index} out of range (video has {num_frames} frames)")


def frame_image_paths(folder: Path) -> list[Path]:
    """The frame images of a frame folder in frame order (by the number ending each name), gap-free."""
    numbered: dict[int, Path] = {}
    try:
        entries = list(folder.iterdir())
    except OSError as error:
        raise MVFormerError(f"{folder}: cannot list frame folder ({error.strerror or error})") from None
    for path in entries:
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        match = _TRAILING_NUMBER.search(path.stem)
        if match is None:
            raise MVFormerError(f"{folder}: frame image {path.name} has no frame number at the end of its name")
        number = int(match.group(1))
        if number in numbered:
            raise MVFormerError(f"{folder}: frame number {number} appears twice ({numbered[number].name}, {path.name})")
        numbered[number] = path
    if not numbered:
        raise MVFormerError(f"{folder}: cannot decode video (frame folder holds no {'/'.join(IMAGE_SUFFIXES)} images)")
    numbers = sorted(numbered)
    missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
    if missing:
        raise MVFormerError(f"{folder}: frame folder has a gap in its numbering (frame {missing[0]} is missing)")
    return [numbered[number] for number in numbers]


def _reason(error: Exception) -> str:
    """FFmpeg's short description of a failure, without the errno and path PyAV adds."""
    return getattr(error, "strerror", None) or str(error)


def _to_rgb(frame: av.VideoFrame, size: int | None) -> np.ndarray:
    """One decoded frame as uint8 RGB (H, W, 3), squashed to size x size when `size` is given."""
    if size is None:
        return frame.to_ndarray(format="rgb24")
    return frame.to_ndarray(width=size, height=size, format="rgb24", interpolation="AREA")


@contextmanager
def _video_stream(path: Path) -> Iterator[tuple[av.container.InputContainer, av.VideoStream]]:
    """The open container and first video stream of `path`; FFmpeg failures inside become MVFormerError."""
    if not path.is_file():
        raise MVFormerError(f"{path}: cannot decode video (no such file)")
    is_image = path.suffix.lower() in IMAGE_SUFFIXES
    literal = {"format": "image2", "options": {"pattern_type": "none"}} if is_image else {}
    try:
        with av.open(str(path.absolute()), **literal) as container:
            if not container.streams.video:
                raise MVFormerError(f"{path}: cannot decode video (no video stream)")
            yield container, container.streams.video[0]
    except av.FFmpegError as error:
        raise MVFormerError(f"{path}: cannot decode video ({_reason(error)})") from None


def _decoded_frames(path: Path, seek_pts: int | None = None) -> Iterator[av.VideoFrame]:
    """Decode the first video stream of `path` frame by frame, from the keyframe at `seek_pts` if given."""
    with _video_stream(path) as (container, stream):
        if seek_pts is not None:
            container.seek(seek_pts, backward=True, any_frame=False, stream=stream)
        yield from container.decode(stream)


def _read_image(path: Path, size: int | None) -> np.ndarray:
    """One frame image as uint8 RGB (H, W, 3)."""
    for frame in _decoded_frames(path):
        return _to_rgb(frame, size)
    raise MVFormerError(f"{path}: cannot decode video (image holds no frame)")


def _read_frame_folder(folder: Path, size: int | None, indices: np.ndarray | None) -> np.ndarray:
    paths = frame_image_paths(folder)
    if indices is not None:
        as_frame_indices(indices, folder, len(paths))
    wanted = range(len(paths)) if indices is None else indices
    images = {index: _read_image(paths[index], size) for index in sorted(set(wanted))}  # each (H, W, 3)
    shapes = {image.shape for image in images.values()}
    if len(shapes) > 1:
        raise MVFormerError(f"{folder}: frame images differ in size ({sorted(shapes)}); pass a size to resize them")
    if not images:
        height, width = (size, size) if size else _read_image(paths[0], None).shape[:2]
        return np.zeros((0, height, width, 3), dtype=np.uint8)
    return np.stack([images[index] for index in wanted])  # (T, H, W, 3)


@dataclass(frozen=True)
class VideoIndex:
    """Where a video file's frames are, from its packets (no decoding): its length and its keyframes."""

    num_frames: int
    keyframe_pts: np.ndarray  # (K,) int64 presentation timestamps of the keyframes, ascending
    keyframe_frames: np.ndarray  # (K,) int64 frame index of each keyframe (presentation order)


def index_video(path: str | Path) -> VideoIndex:
    """Count the frames of a video file and locate its keyframes by reading packets only (milliseconds).

    Keyframes are left out (no seeking) when the container gives packets without timestamps.
    """
    path = Path(path)
    with _video_stream(path) as (container, stream):
        packets = [(packet.pts, packet.is_keyframe) for packet in container.demux(stream) if packet.size > 0]
    if not packets:
        raise MVFormerError(f"{path}: cannot decode video (no frames)")
    no_seeking = np.zeros(0, dtype=np.int64)
    if any(pts is None for pts, _ in packets):
        return VideoIndex(len(packets), no_seeking, no_seeking)
    pts = np.array([pts for pts, _ in packets], dtype=np.int64)
    is_keyframe = np.array([keyframe for _, keyframe in packets])
    order = np.argsort(pts, kind="stable")  # decode order -> presentation order
    if np.any(np.diff(pts[order]) == 0):
        return VideoIndex(len(packets), no_seeking, no_seeking)
    keyframe_frames = np.flatnonzero(is_keyframe[order])
    return VideoIndex(len(packets), pts[order][keyframe_frames], keyframe_frames.astype(np.int64))


def _decoded_frames_from(path: Path, index: VideoIndex | None, first: int) -> Iterator[tuple[int, av.VideoFrame]]:
    """(frame index, frame) from the last keyframe at or before frame `first` on (from frame 0 without index)."""
    keyframe = -1 if index is None else int(np.searchsorted(index.keyframe_frames, first, side="right")) - 1
    if keyframe <= 0:
        yield from enumerate(_decoded_frames(path))
        return
    start_pts, frame_index = int(index.keyframe_pts[keyframe]), int(index.keyframe_frames[keyframe])
    for frame in _decoded_frames(path, seek_pts=start_pts):
        if frame.pts is not None and frame.pts < start_pts:  # open-GOP leftovers before the keyframe
            continue
        yield frame_index, frame
        frame_index += 1


def _read_video_file(path: Path, size: int | None, indices: np.ndarray | None, index: VideoIndex | None) -> np.ndarray:
    wanted = None if indices is None else set(indices.tolist())
    first = 0 if not wanted else int(indices[0])
    last = None if indices is None else int(indices[-1]) if len(indices) else 0  # decode no further
    images: dict[int, np.ndarray] = {}  # frame index -> (H, W, 3)
    num_decoded = 0
    for frame_index, frame in _decoded_frames_from(path, index, first):
        num_decoded = frame_index + 1
        if wanted is None or frame_index in wanted or not wanted:  # no frame wanted: keep frame 0 for its size
            images[frame_index] = _to_rgb(frame, size)
        if frame_index == last:
            break
    if num_decoded == 0:
        raise MVFormerError(f"{path}: cannot decode video (no frames)")
    if indices is None:
        return np.stack([images[i] for i in range(num_decoded)])  # (T, H, W, 3)
    as_frame_indices(indices, path, num_decoded)
    if not len(indices):
        return np.zeros((0, *images[min(images)].shape), dtype=np.uint8)
    return np.stack([images[i] for i in indices])  # (len(indices), H, W, 3)


def read_video(path: str | Path, size: int | None = None, indices: FrameIndices | None = None,
               index: VideoIndex | None = None) -> np.ndarray:
    """Decode a video file or frame folder to uint8 RGB (T, H, W, 3).

    size: squash every frame to size x size (aspect ratio not kept), done in the decoder.
    indices: sorted frame indices to keep (repeats allowed); only these are converted to RGB, and decoding
        stops after the last one.
    index: the file's `index_video`; with it, decoding starts at the keyframe before the first index.
    """
    path = Path(path)
    frame_indices = None if indices is None else as_frame_indices(indices, path)
    if size is not None and size < 1:
        raise MVFormerError(f"{path}: frame size must be a positive number of pixels, got {size}")
    if path.is_dir():
        return _read_frame_folder(path, size, frame_indices)
    return _read_video_file(path, size, frame_indices, index)


def frame_chunks(path: str | Path, chunk_size: int, size: int | None = None) -> Iterator[np.ndarray]:
    """A whole video decoded once, in order, as uint8 blocks (<= chunk_size, H, W, 3): bounded memory."""
    path = Path(path)
    if path.is_dir():
        total = len(frame_image_paths(path))
        for start in range(0, total, chunk_size):
            yield read_video(path, size, np.arange(start, min(start + chunk_size, total)))
        return
    block = []
    for frame in _decoded_frames(path):
        block.append(_to_rgb(frame, size))
        if len(block) == chunk_size:
            yield np.stack(block)
            block = []
    if block:
        yield np.stack(block)


def count_frames(path: str | Path) -> int:
    """Number of frames of a video file (from its packets) or frame folder (from its images)."""
    path = Path(path)
    if path.is_dir():
        return len(frame_image_paths(path))
    return index_video(path).num_frames


def write_video(path: str | Path, frames: np.ndarray, fps: float = 25, keyframe_interval: int = 250) -> None:
    """Encode uint8 RGB frames (T, H, W, 3) with H.264 (yuv420p, crf 8) so that colours survive.

    keyframe_interval: at most this many frames between keyframes (short intervals make seeking cheap).
    The same frames always give the same bytes. Writes a temporary file beside `path`, then renames it, so that a
    crash never leaves a half-written video.
    """
    path = Path(path)
    if not (isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3):
        raise MVFormerError(f"{path}: cannot write video (frames must be a uint8 array (T, H, W, 3))")
    num_frames, height, width, _ = frames.shape
    if num_frames == 0 or height % 2 or width % 2:
        raise MVFormerError(f"{path}: cannot write video (need at least one frame, even height and width; "
                            f"got {frames.shape})")
    try:
        with atomic_path(path) as temporary, av.open(str(temporary), mode="w") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            # x264's macroblock tree makes the bitstream of small videos vary from run to run: turn it off.
            stream.options = {"crf": "8", "x264-params": f"mbtree=0:keyint={keyframe_interval}"}
            for rgb in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
            container.mux(stream.encode(None))
    except av.FFmpegError as error:
        raise MVFormerError(f"{path}: cannot write video ({_reason(error)})") from None
