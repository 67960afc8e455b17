"""`mvformer align`: videos aligned to a reference (DTW or nearest neighbour), as a grid animation and a cost
matrix picture."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvformer import viz
from mvformer.apps.videos import (
    DEFAULT_FPS,
    check_display_height,
    check_videos,
    display_frames,
    embed_video_file,
    load_app_model,
    model_inputs,
    output_name,
    sibling_path,
    video_fps,
)
from mvformer.errors import MVFormerError
from mvformer.evaluation.alignment import align, check_method
from mvformer.files import atomic_paths, check_outputs, save_csv


@dataclass(frozen=True)
class Alignment:
    """One video aligned to the reference: the path through the cost matrix and the frame shown per reference frame."""

    source: Path
    costs: np.ndarray  # float64 (La, Lb): distance of every reference frame to every frame of this video
    path: np.ndarray  # int64 (K, 2): (reference frame, frame) pairs, in order
    shown: np.ndarray  # int64 (La,): the frame of this video shown beside each reference frame


def shown_frames(costs: np.ndarray, path: np.ndarray) -> np.ndarray:
    """For every reference frame, the frame of the other video shown beside it: among the path's pairs of that
    reference frame, the one of least distance. (La,) int64."""
    order = np.lexsort((costs[path[:, 0], path[:, 1]], path[:, 0]))  # by reference frame, then distance
    _, first = np.unique(path[order, 0], return_index=True)
    return path[order[first], 1]


def align_outputs(out: Path) -> tuple[Path, Path, Path]:
    """OUT (.mp4 or .gif), OUT_path.csv and OUT_cost.png."""
    if out.suffix.lower() not in viz.ANIMATION_SUFFIXES:
        raise MVFormerError(f"{out}: the output must end in .mp4 or .gif")
    return out, sibling_path(out, "path.csv"), sibling_path(out, "cost.png")


def align_videos(checkpoint: str | Path, reference: str | Path, videos: Sequence[str | Path], out: str | Path,
                 method: str = "dtw", overwrite: bool = False, device: str = "auto", frames: str = "squash",
                 height: int = 192, fps: float | None = None) -> list[Alignment]:
    """Align each video to the reference and write OUT (.mp4 or .gif: the reference and each aligned video side
    by side, a grid for several, each with a progress bar), OUT_path.csv (the paths) and OUT_cost.png (the cost
    matrices with their paths). The animation runs on the reference's timeline at its frame rate (or `fps`);
    videos of other frame rates and sizes are fine, since alignment is by content."""
    outputs = align_outputs(Path(out))
    check_method(method)
    check_display_height(height)
    if not videos:
        raise MVFormerError(f"{reference}: no video to align to it")
    reference, others = Path(reference), [Path(v) for v in videos]
    check_outputs(outputs, overwrite, [*model_inputs(checkpoint), reference, *others])
    check_videos([reference, *others])
    rate = fps if fps is not None else video_fps(reference) or DEFAULT_FPS
    viz.check_frame_rate(rate, "fps" if fps is not None else f"{reference}: its frame rate")
    model, torch_device = load_app_model(checkpoint, device)
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
    rows = [(output_name(a.source), i, j, f"{a.costs[i, j]:.6f}") for a in alignments for i, j in a.path]
    with atomic_paths(outputs) as (animation_path, csv_path, png_path):
        viz.save_animation(viz.tile_videos(panels), animation_path, rate)
        save_csv(csv_path, ("video", "reference_frame", "frame", "distance"), rows)
        viz.plot_cost_matrices([a.costs for a in alignments], [a.path for a in alignments],
                               [output_name(a.source) for a in alignments], png_path)
    return alignments
