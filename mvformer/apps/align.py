"""`mvformer align`: videos aligned to a reference (DTW or nearest neighbour), as a grid animation and a cost
matrix picture. Library: `align_to_reference` (embeddings in, `Alignment`s out) and `write_alignment`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvformer import viz
from mvformer.apps.videos import (
    DEFAULT_FPS,
    VideoEmbedding,
    check_display_height,
    check_videos,
    display_frames,
    embed,
    frame_caption,
    load_app_model,
    phase_labels,
    sibling_path,
    video_fps,
)
from mvformer.checkpoint import source_files
from mvformer.errors import MVFormerError
from mvformer.evaluation.alignment import align, check_method
from mvformer.files import atomic_paths, check_outputs, save_csv


@dataclass(frozen=True)
class Alignment:
    """One video aligned to the reference: the path through the cost matrix and the frame shown per reference frame."""

    video: VideoEmbedding  # the aligned video
    costs: np.ndarray  # float64 (La, Lb): distance of every reference frame to every frame of this video
    path: np.ndarray  # int64 (K, 2): (reference frame, frame) pairs, in order
    shown: np.ndarray  # int64 (La,): the frame of this video shown beside each reference frame


def shown_frames(costs: np.ndarray, path: np.ndarray) -> np.ndarray:
    """For every reference frame, the frame of the other video shown beside it: among the path's pairs of that
    reference frame, the one of least distance. (La,) int64."""
    order = np.lexsort((costs[path[:, 0], path[:, 1]], path[:, 0]))  # by reference frame, then distance
    _, first = np.unique(path[order, 0], return_index=True)
    return path[order[first], 1]


def align_to_reference(reference: VideoEmbedding, videos: Sequence[VideoEmbedding],
                       method: str = "dtw") -> list[Alignment]:
    """Each video aligned to the reference by dynamic time warping ("dtw", monotone) or each reference frame's
    nearest neighbour ("nn"), on their embeddings (so frame rates and sizes may differ)."""
    check_method(method)
    if not videos:
        raise MVFormerError(f"{reference.name}: no video to align to it")
    alignments = []
    for video in videos:
        costs, steps = align(reference.embeddings, video.embeddings, method)
        alignments.append(Alignment(video, costs, steps, shown_frames(costs, steps)))
    return alignments


def align_outputs(out: Path) -> tuple[Path, Path, Path]:
    """OUT (.mp4 or .gif), OUT_path.csv and OUT_cost.png."""
    if out.suffix.lower() not in viz.ANIMATION_SUFFIXES:
        raise MVFormerError(f"{out}: the output must end in .mp4 or .gif")
    return out, sibling_path(out, "path.csv"), sibling_path(out, "cost.png")


def _frame_rate(fps: float | None, reference_fps: float | None, reference: Path) -> float:
    """The animation's frame rate: `fps`, else the reference's own (DEFAULT_FPS for a frame folder), checked."""
    rate = fps if fps is not None else reference_fps or DEFAULT_FPS
    viz.check_frame_rate(rate, "fps" if fps is not None else f"{reference}: its frame rate")
    return rate


def write_alignment(out: str | Path, reference: VideoEmbedding, alignments: Sequence[Alignment],
                    method: str = "dtw", height: int = 192, fps: float | None = None, overwrite: bool = False,
                    inputs: Sequence[Path] = ()) -> tuple[Path, Path, Path]:
    """OUT (.mp4 or .gif: the reference and each aligned video side by side, a grid for several, each with a
    progress bar and a caption: its name, the frame shown and, where the video is labelled (`phase_labels`), that
    frame's phase), OUT_path.csv (the paths) and OUT_cost.png (the cost matrices with their paths and phases).
    The animation runs on the reference's timeline at its frame rate (or `fps`). The videos' frames are read from
    their files, so every embedding must come from one."""
    outputs = align_outputs(Path(out))
    check_display_height(height)
    videos = [reference, *(alignment.video for alignment in alignments)]
    unsourced = next((video.name for video in videos if video.source is None), None)
    if unsourced is not None:
        raise MVFormerError(f"{unsourced}: was embedded from an array of frames; the alignment pictures are drawn "
                            f"from video files")
    check_outputs(outputs, overwrite, [*inputs, *(video.source for video in videos)])
    rate = _frame_rate(fps, reference.fps, reference.source)
    reference_phases, *phases = [phase_labels(video.source, len(video)) for video in videos]
    length = len(reference)
    height = viz.even(height)
    shown = [np.arange(length)] + [a.shown for a in alignments]  # (La,) each: its frame at each reference frame
    pictures = [display_frames(video.source, frame, height) for video, frame in zip(videos, shown)]
    width = max(picture.shape[2] for picture in pictures)  # pictures: (La, height, w, 3) each
    names = [f"{reference.name} (reference)"] + [a.video.name for a in alignments]
    lasts = [length - 1] + [a.costs.shape[1] - 1 for a in alignments]
    panels = []
    for index, (picture, frame, last, name, own) in enumerate(zip(pictures, shown, lasts, names,
                                                                  [reference_phases, *phases])):
        barred = viz.draw_progress_bars(viz.letterbox(picture, width), frame / last,
                                        viz.COLOURS[index % len(viz.COLOURS)])
        panels.append(viz.add_captions(barred, [frame_caption(name, f, last, own) for f in frame.tolist()]))
    rows = [(a.video.name, i, j, f"{a.costs[i, j]:.6f}") for a in alignments for i, j in a.path]
    with atomic_paths(outputs) as (animation_path, csv_path, png_path):
        viz.save_animation(viz.tile_videos(panels), animation_path, rate)
        save_csv(csv_path, ("video", "reference_frame", "frame", "distance"), rows)
        viz.plot_cost_matrices([a.costs for a in alignments], [a.path for a in alignments], names[1:],
                               reference.name, png_path, "DTW path" if method == "dtw" else "nearest neighbours",
                               reference_phases, phases)
    return outputs


def align_command(checkpoint: str | Path, reference: str | Path, videos: Sequence[str | Path], out: str | Path,
                  method: str = "dtw", overwrite: bool = False, device: str = "auto", frames: str = "squash",
                  height: int = 192, fps: float | None = None) -> list[Alignment]:
    """`mvformer align`: every check first (outputs, videos, labels, frame rate), then the model loaded once, the
    videos embedded and aligned, and the pictures written (`write_alignment`)."""
    outputs = align_outputs(Path(out))
    check_method(method)
    check_display_height(height)
    if not videos:
        raise MVFormerError(f"{reference}: no video to align to it")
    reference, others = Path(reference), [Path(v) for v in videos]
    inputs = [*source_files(checkpoint), reference, *others]
    check_outputs(outputs, overwrite, inputs)
    counts = check_videos([reference, *others])
    for path, count in zip([reference, *others], counts):
        phase_labels(path, count)  # a labels file of the wrong length is refused before the model runs
    _frame_rate(fps, video_fps(reference), reference)
    trained = load_app_model(checkpoint, device)
    anchor = embed(trained, reference, frames)
    alignments = align_to_reference(anchor, [embed(trained, path, frames) for path in others], method)
    write_alignment(out, anchor, alignments, method, height, fps, overwrite, source_files(checkpoint))
    return alignments
