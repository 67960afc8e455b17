"""Use a trained model on your own videos: embed, align, retrieve, attention, progress.

One function per command, each a plain library call (the CLI only parses arguments and calls it).

Frames: by default every frame is squashed to the model's square input size in the decoder, as training and
the benchmark do (`frames="squash"`); `frames="crop"` takes the centre square of the native frame instead.
Memory: videos are decoded, prepared and passed through the frozen backbone DECODE_CHUNK frames at a time, so
raw frames, normalised frames and patch tokens are bounded by one chunk; only the small entity tokens
(L, N, D) of the whole video are kept, and the temporal encoder then attends over all of them at once (the
model's definition: whole video through the model, its time encoding interpolated over the training length).
Distances between frames are squared Euclidean on L2-normalised embeddings, i.e. 2 - 2 x cosine similarity.
Every output is written to a temporary file that replaces the target once complete; an existing output is
refused unless `overwrite`.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LinearRegression

from mvformer import viz
from mvformer.data.augment import augment_views, normalize
from mvformer.data.datasets import VideoDataset
from mvformer.data.video import IMAGE_SUFFIXES, frame_chunks, frame_image_paths, read_video
from mvformer.errors import MVFormerError
from mvformer.evaluation.embed import prepare_frames
from mvformer.evaluation.metrics import progression_targets
from mvformer.model import MVFormer
from mvformer.pooling import SpatialTokenPooling
from mvformer.pretrained import is_export
from mvformer.progress import progress_bar
from mvformer.train import model_from_checkpoint, resolve_device

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif")
FRAME_MODES = ("squash", "crop")
ALIGN_METHODS = ("dtw", "nn")
DECODE_CHUNK = 256  # frames decoded, prepared and pushed through the backbone at once
MIN_FRAMES = 2  # the model embeds frames in time: a single frame has no sequence to speak of
DEFAULT_FPS = 25.0  # animations of frame folders, which record no frame rate


@dataclass(frozen=True)
class VideoEmbedding:
    """Per-frame embeddings of one video."""

    source: Path
    embeddings: np.ndarray  # float32 (L, E), L2-normalised
    fps: float | None  # None for frame folders


@dataclass(frozen=True)
class Alignment:
    """One video aligned to the reference: the path through the cost matrix and the frame shown per reference frame."""

    source: Path
    costs: np.ndarray  # float64 (La, Lb): distance of every reference frame to every frame of this video
    path: np.ndarray  # int64 (K, 2): (reference frame, frame) pairs, in order
    shown: np.ndarray  # int64 (La,): the frame of this video shown beside each reference frame


@dataclass(frozen=True)
class Match:
    """One retrieved frame."""

    source: Path
    frame: int
    distance: float


@dataclass(frozen=True)
class ProgressCurves:
    """Predicted phase progression of one video against a labelled reference set."""

    predictions: np.ndarray  # float64 (L, C - 1): column c is (t - end of phase c) / L
    boundaries: list[str]  # one name per column
    reference_r2: float  # fit quality on the reference frames (mean R^2 over columns)


# ---------------------------------------------------------------------------------------------------------------
# Files


def check_outputs(paths: Sequence[Path], overwrite: bool) -> None:
    """Refuse (before any work is done) to replace an existing output unless `overwrite`."""
    for path in paths:
        if path.exists() and not overwrite:
            raise MVFormerError(f"{path}: already exists; pass --overwrite to replace it")
        if path.is_dir():
            raise MVFormerError(f"{path}: is a folder, not a file")


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` (same suffix) that replaces `path` when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    with replacing(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _sibling(path: Path, suffix: str) -> Path:
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


# ---------------------------------------------------------------------------------------------------------------
# Model and embeddings


def load_model(checkpoint: str | Path, device: str = "auto") -> tuple[MVFormer, torch.device]:
    """A trained model (run folder, checkpoint.pt or `mvformer export` folder) in eval mode on `device`."""
    torch_device = resolve_device(device)
    model = MVFormer.from_pretrained(checkpoint) if is_export(Path(checkpoint)) else model_from_checkpoint(checkpoint)
    return model.to(torch_device).eval(), torch_device


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
    tokens = []
    for chunk in _progress_frames(path, size):
        patches, cls = model.features(prepare_frames(chunk, model, device)[None])  # (1, c, P, C), (1, c, C_cls)
        tokens.append(model.head.pooled_tokens(patches, cls))  # (1, c, N, D)
    _check_length(path, sum(t.shape[1] for t in tokens))
    embs = F.normalize(model.head.encode_tokens(torch.cat(tokens, dim=1)), dim=-1)[0]  # (L, E)
    return VideoEmbedding(path, embs.float().cpu().numpy(), video_fps(path))


def _output_name(path: Path) -> str:
    return path.name if path.is_dir() else path.stem


def embed_videos(checkpoint: str | Path, videos: Sequence[str | Path], out_dir: str | Path, overwrite: bool = False,
                 device: str = "auto", frames: str = "squash") -> list[Path]:
    """Embed video files, frame folders, or every video of the folders given; for each, write OUT/NAME.npy
    (float32 frames x E) and OUT/NAME.json (source, fps, frame count, model config). Returns the .npy paths."""
    out_dir = Path(out_dir)
    paths = list_videos(videos)
    names: dict[str, Path] = {}
    for path in paths:
        name = _output_name(path)
        if name in names:
            raise MVFormerError(f"{path}: another input ({names[name]}) is also named {name!r}; their embeddings "
                                f"would overwrite each other, so embed them into different folders")
        names[name] = path
    check_outputs([out_dir / f"{name}{suffix}" for name in names for suffix in (".npy", ".json")], overwrite)
    model, torch_device = load_model(checkpoint, device)
    written = []
    for name, path in progress_bar(names.items(), desc="embedding", unit="video"):
        result = embed_video_file(model, path, torch_device, frames)
        with replacing(out_dir / f"{name}.npy") as temporary:
            np.save(temporary, result.embeddings)
        info = {"source": str(path.resolve()), "checkpoint": str(Path(checkpoint).resolve()), "fps": result.fps,
                "num_frames": len(result.embeddings), "embedding_size": result.embeddings.shape[1],
                "frame_mode": frames, "image_size": model.config.data.image_size,
                "distance": "squared Euclidean on L2-normalised embeddings", "config": model.config.to_dict()}
        with replacing(out_dir / f"{name}.json") as temporary:
            temporary.write_text(json.dumps(info, indent=2) + "\n")
        written.append(out_dir / f"{name}.npy")
    return written


# ---------------------------------------------------------------------------------------------------------------
# Alignment


def cost_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances of L2-normalised embeddings a (La, E) and b (Lb, E): (La, Lb), float64."""
    return np.clip(2.0 - 2.0 * (a.astype(np.float64) @ b.astype(np.float64).T), 0.0, None)


def nearest_neighbour_path(costs: np.ndarray) -> np.ndarray:
    """Each reference frame i matched to its nearest frame: (La, 2) pairs (i, argmin_j costs[i, j])."""
    return np.stack([np.arange(len(costs)), costs.argmin(axis=1)], axis=1)


def dtw_path(costs: np.ndarray) -> np.ndarray:
    """The monotone path from (0, 0) to (La - 1, Lb - 1), steps (1, 0), (0, 1), (1, 1), of least total cost:
    (K, 2) pairs. The accumulated cost is filled one anti-diagonal at a time (a vector operation each)."""
    rows, cols = costs.shape
    total = np.full((rows + 1, cols + 1), np.inf)  # total[i, j]: best cost of a path ending at cell (i-1, j-1)
    total[0, 0] = 0.0
    for diagonal in range(2, rows + cols + 1):  # cells with i + j = diagonal (1-based)
        i = np.arange(max(1, diagonal - cols), min(rows, diagonal - 1) + 1)
        j = diagonal - i
        best = np.minimum(np.minimum(total[i - 1, j - 1], total[i - 1, j]), total[i, j - 1])
        total[i, j] = costs[i - 1, j - 1] + best
    path = [(rows, cols)]
    while path[-1] != (1, 1):  # walk back through the cheapest predecessor, the diagonal first on ties
        i, j = path[-1]
        path.append(min(((i - 1, j - 1), (i - 1, j), (i, j - 1)), key=lambda cell: total[cell]))
    return np.array(path[::-1], dtype=np.int64) - 1


def shown_frames(costs: np.ndarray, path: np.ndarray) -> np.ndarray:
    """For every reference frame, the frame of the other video shown beside it: among the path's pairs of that
    reference frame, the one of least distance. (La,) int64."""
    order = np.lexsort((costs[path[:, 0], path[:, 1]], path[:, 0]))  # by reference frame, then distance
    _, first = np.unique(path[order, 0], return_index=True)
    return path[order[first], 1]


def _check_method(method: str) -> None:
    if method not in ALIGN_METHODS:
        raise MVFormerError(f"alignment method {method!r}: choose one of {', '.join(ALIGN_METHODS)}")


def align(reference: np.ndarray, other: np.ndarray, method: str = "dtw") -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (La, E), (Lb, E) -> costs (La, Lb) and the alignment path (K, 2) by `method` (dtw | nn)."""
    _check_method(method)
    costs = cost_matrix(reference, other)
    return costs, dtw_path(costs) if method == "dtw" else nearest_neighbour_path(costs)


def align_outputs(out: Path) -> tuple[Path, Path, Path]:
    """OUT (.mp4 or .gif), OUT_path.csv and OUT_cost.png."""
    if out.suffix.lower() not in viz.ANIMATION_SUFFIXES:
        raise MVFormerError(f"{out}: the output must end in .mp4 or .gif")
    return out, _sibling(out, "path.csv"), _sibling(out, "cost.png")


def align_videos(checkpoint: str | Path, reference: str | Path, videos: Sequence[str | Path], out: str | Path,
                 method: str = "dtw", overwrite: bool = False, device: str = "auto", frames: str = "squash",
                 height: int = 192, fps: float | None = None) -> list[Alignment]:
    """Align each video to the reference and write OUT (.mp4 or .gif: the reference and each aligned video side
    by side, a grid for several, each with a progress bar), OUT_path.csv (the paths) and OUT_cost.png (the cost
    matrices with their paths). The animation runs on the reference's timeline at its frame rate (or `fps`);
    videos of other frame rates and sizes are fine, since alignment is by content."""
    out, csv_path, png_path = align_outputs(Path(out))
    _check_method(method)
    if not videos:
        raise MVFormerError(f"{reference}: no video to align to it")
    check_outputs([out, csv_path, png_path], overwrite)
    reference, others = Path(reference), [Path(v) for v in videos]
    model, torch_device = load_model(checkpoint, device)
    anchor = embed_video_file(model, reference, torch_device, frames)
    alignments = []
    for path in others:
        costs, steps = align(anchor.embeddings, embed_video_file(model, path, torch_device, frames).embeddings, method)
        alignments.append(Alignment(path, costs, steps, shown_frames(costs, steps)))

    length = len(anchor.embeddings)
    height = viz.even(height)
    panels = [display_frames(reference, np.arange(length), height)]  # each (La, height, w, 3)
    panels += [display_frames(a.source, a.shown, height) for a in alignments]
    fractions = [np.arange(length) / (length - 1)] + [a.shown / (a.costs.shape[1] - 1) for a in alignments]
    width = max(panel.shape[2] for panel in panels)
    panels = [viz.draw_progress_bars(viz.letterbox(panel, width), fraction, viz.COLOURS[index % len(viz.COLOURS)])
              for index, (panel, fraction) in enumerate(zip(panels, fractions))]
    with replacing(out) as temporary:
        viz.save_animation(viz.tile_videos(panels), temporary, fps or anchor.fps or DEFAULT_FPS)
    rows = [(_output_name(a.source), i, j, f"{a.costs[i, j]:.6f}") for a in alignments for i, j in a.path]
    _write_csv(csv_path, ("video", "reference_frame", "frame", "distance"), rows)
    with replacing(png_path) as temporary:
        viz.plot_cost_matrices([a.costs for a in alignments], [a.path for a in alignments],
                               [_output_name(a.source) for a in alignments], temporary)
    return alignments


# ---------------------------------------------------------------------------------------------------------------
# Retrieval


def parse_frame_reference(spec: str) -> tuple[Path, int]:
    """'VIDEO:FRAME' (FRAME a 0-based index; VIDEO may itself hold colons) -> (VIDEO, FRAME)."""
    video, _, frame = spec.rpartition(":")
    if not video or not frame.strip().isdigit():
        raise MVFormerError(f"{spec}: expected VIDEO:FRAME with a 0-based frame number, e.g. clip.mp4:12")
    return Path(video), int(frame)


def retrieve_frames(checkpoint: str | Path, query: str | Path, frame: int, gallery: Sequence[str | Path],
                    out: str | Path, k: int = 8, skip_query_video: bool = False, overwrite: bool = False,
                    device: str = "auto", frames: str = "squash", height: int = 128) -> list[Match]:
    """The k gallery frames nearest to frame `frame` of the query video, over every frame of every gallery video;
    writes OUT (a .png contact sheet with distances) and OUT.csv (rank, video, frame, distance). With
    `skip_query_video` the query's own video is left out of the gallery."""
    out, query = Path(out), Path(query)
    if out.suffix.lower() != ".png":
        raise MVFormerError(f"{out}: the contact sheet must be a .png file")
    if k < 1:
        raise MVFormerError(f"k = {k}: must be at least 1")
    csv_path = out.with_suffix(".csv")
    check_outputs([out, csv_path], overwrite)
    sources = [p for p in list_videos(gallery) if not (skip_query_video and p.resolve() == query.resolve())]
    if not sources:
        raise MVFormerError(f"{', '.join(map(str, gallery))}: the gallery holds no video but the query's")
    model, torch_device = load_model(checkpoint, device)
    anchor = embed_video_file(model, query, torch_device, frames).embeddings
    if not 0 <= frame < len(anchor):
        raise MVFormerError(f"{query}: frame {frame} out of range (video has {len(anchor)} frames)")
    gallery_embs = [anchor if p.resolve() == query.resolve() else
                    embed_video_file(model, p, torch_device, frames).embeddings for p in sources]
    pooled = np.concatenate(gallery_embs)  # (M, E)
    owner = np.repeat(np.arange(len(sources)), [len(e) for e in gallery_embs])  # (M,) video of each pooled frame
    local = np.concatenate([np.arange(len(e)) for e in gallery_embs])  # (M,) frame within its video
    distances = cost_matrix(anchor[frame:frame + 1], pooled)[0]  # (M,)
    best = np.argsort(distances, kind="stable")[:k]
    matches = [Match(sources[owner[i]], int(local[i]), float(distances[i])) for i in best]

    thumbnails = [None] * len(matches)
    for source in {m.source for m in matches}:
        ranks = [r for r, m in enumerate(matches) if m.source == source]
        images = display_frames(source, np.array([matches[r].frame for r in ranks]), height)
        for rank, image in zip(ranks, images):
            thumbnails[rank] = image
    titles = [f"#{rank + 1} {_output_name(m.source)}:{m.frame}\nd = {m.distance:.4f}" for rank, m in enumerate(matches)]
    with replacing(out) as temporary:
        viz.plot_contact_sheet(display_frames(query, np.array([frame]), height)[0],
                               f"query {_output_name(query)}:{frame}", thumbnails, titles, temporary)
    _write_csv(csv_path, ("rank", "video", "frame", "distance"),
               [(rank + 1, str(m.source), m.frame, f"{m.distance:.6f}") for rank, m in enumerate(matches)])
    return matches


# ---------------------------------------------------------------------------------------------------------------
# Attention


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
    with replacing(npy_path) as temporary:
        np.save(temporary, all_maps)
    picked = np.unique(np.linspace(0, len(images) - 1, min(strip_frames, len(images))).round().astype(int))
    with replacing(strip_path) as temporary:
        viz.plot_attention_strip(images[picked], overlays[picked], [frame_numbers[i] for i in picked], temporary)
    rows = np.concatenate([images[:, None], overlays], axis=1)  # (K, N + 1, S', S', 3)
    count, panels = rows.shape[:2]
    strip = rows.transpose(0, 2, 1, 3, 4).reshape(count, shown_size, panels * shown_size, 3)  # panels left to right
    with replacing(animation_path) as temporary:
        viz.save_animation(np.ascontiguousarray(strip), temporary, (video_fps(video) or DEFAULT_FPS) / every)
    return all_maps


# ---------------------------------------------------------------------------------------------------------------
# Progress


def fit_progress(reference_embs: Sequence[np.ndarray], reference_labels: Sequence[np.ndarray],
                 num_classes: int) -> tuple[LinearRegression, float]:
    """Least-squares regressor from embeddings to the protocol's phase-progression targets (one linear map per
    phase boundary, fitted jointly), on the labelled frames of the reference videos; and its mean R^2 there."""
    labelled = [labels >= 0 for labels in reference_labels]
    features = np.concatenate([embs[keep] for embs, keep in zip(reference_embs, labelled)])  # (frames, E)
    targets = np.concatenate([progression_targets(labels, num_classes)[keep]
                              for labels, keep in zip(reference_labels, labelled)])  # (frames, C - 1)
    regressor = LinearRegression().fit(features, targets)
    return regressor, float(regressor.score(features, targets))  # R^2 averaged over the boundaries


def progress_against_reference(checkpoint: str | Path, reference: str | Path, video: str | Path, out: str | Path,
                               split: str = "train", overwrite: bool = False, device: str = "auto",
                               frames: str = "squash") -> ProgressCurves:
    """Fit the phase-progression regressor on a labelled reference set and predict the progress of `video`.

    reference: a dataset root in the generic layout (videos/, labels/, optional classes.txt, splits/SPLIT.txt);
    every video of `split` is used. Writes OUT (.png: one curve per phase boundary over time, crossing 0 where
    that phase ends) and OUT.csv (frame, seconds, one column per boundary).
    """
    out, video = Path(out), Path(video)
    if out.suffix.lower() != ".png":
        raise MVFormerError(f"{out}: the plot must be a .png file")
    csv_path = out.with_suffix(".csv")
    check_outputs([out, csv_path], overwrite)
    dataset = VideoDataset(reference, split)
    if dataset.num_classes is None or any(r.labels is None for r in dataset.records):
        raise MVFormerError(f"{reference}: the reference videos have no frame labels (labels/NAME.csv)")
    if dataset.num_classes < 2:
        raise MVFormerError(f"{reference}: progress needs at least two phases, the labels hold one")
    model, torch_device = load_model(checkpoint, device)
    reference_embs = [embed_video_file(model, r.path, torch_device, frames).embeddings
                      for r in progress_bar(dataset.records, desc="reference videos", unit="video")]
    regressor, r2 = fit_progress(reference_embs, [r.labels for r in dataset.records], dataset.num_classes)
    target = embed_video_file(model, video, torch_device, frames)
    predictions = regressor.predict(target.embeddings.astype(np.float64))  # (L, C - 1)
    names = dataset.classes or [str(c) for c in range(dataset.num_classes)]
    boundaries = [f"end of {name}" for name in names[:-1]]

    frame_numbers = np.arange(len(predictions))
    times = frame_numbers / target.fps if target.fps else frame_numbers
    with replacing(out) as temporary:
        viz.plot_progress(predictions, times, boundaries, temporary, "seconds" if target.fps else "frame",
                          f"{_output_name(video)} against {Path(reference).name} (reference R² {r2:.2f})")
    header = ("frame", "seconds", *(b.replace(" ", "_") for b in boundaries))
    seconds = [f"{t:.4f}" if target.fps else "" for t in times]
    _write_csv(csv_path, header, [(f, s, *(f"{v:.6f}" for v in row))
                                  for f, s, row in zip(frame_numbers, seconds, predictions)])
    return ProgressCurves(predictions, boundaries, r2)


# ---------------------------------------------------------------------------------------------------------------
# The demo's pictures


def write_demo_pictures(checkpoint: str | Path, data_root: str | Path, out_dir: str | Path,
                        device: str = "auto") -> list[Path]:
    """One picture of each command, from a trained run on a labelled dataset (the demo's): embeddings.png,
    align.gif + align_cost.png, retrieve.png, attention_strip.png + attention.gif, progress.png."""
    data_root, out_dir = Path(data_root), Path(out_dir)
    val = VideoDataset(data_root, "val")
    first, *others = [r.path for r in val.records[:3]]
    model, torch_device = load_model(checkpoint, device)
    embs = [embed_video_file(model, r.path, torch_device).embeddings for r in val.records[:4]]
    with replacing(out_dir / "embeddings.png") as temporary:
        viz.plot_embedding_trajectories(embs, [r.name for r in val.records[:4]], temporary)
    align_videos(checkpoint, first, others, out_dir / "align.gif", overwrite=True, device=device, height=128)
    retrieve_frames(checkpoint, first, len(embs[0]) // 2, [r.path for r in val.records], out_dir / "retrieve.png", k=9,
                    skip_query_video=True, overwrite=True, device=device)
    attention_video(checkpoint, first, out_dir, overwrite=True, device=device, every=2)
    progress_against_reference(checkpoint, data_root, first, out_dir / "progress.png", overwrite=True, device=device)
    return [out_dir / name for name in ("embeddings.png", "align.gif", "align_cost.png", "retrieve.png",
                                        "attention_strip.png", "attention.gif", "progress.png")]
