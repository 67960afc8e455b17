"""`mvformer retrieve`: the K frames nearest to one frame across a folder of videos, as a contact sheet."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvformer import viz
from mvformer.apps.videos import (
    check_display_height,
    check_videos,
    display_frames,
    embed_video_file,
    list_videos,
    load_app_model,
    model_inputs,
    output_name,
)
from mvformer.errors import MVFormerError
from mvformer.evaluation.alignment import cost_matrix
from mvformer.files import atomic_paths, check_outputs, save_csv

MAX_K = 100  # frames on one contact sheet


@dataclass(frozen=True)
class Match:
    """One retrieved frame."""

    source: Path
    frame: int
    distance: float


def parse_frame_reference(spec: str) -> tuple[Path, int]:
    """'VIDEO:FRAME' (FRAME a 0-based index; VIDEO may itself hold colons) -> (VIDEO, FRAME)."""
    video, _, frame = spec.rpartition(":")
    if not video or not (frame.isascii() and frame.isdigit()):
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
    if not 1 <= k <= MAX_K:
        raise MVFormerError(f"k = {k}: must be from 1 to {MAX_K} (frames on the contact sheet)")
    check_display_height(height)
    outputs = [out, out.with_suffix(".csv")]
    listed = list_videos(gallery)
    check_outputs(outputs, overwrite, [*model_inputs(checkpoint), query, *map(Path, gallery), *listed])
    sources = [p for p in listed if not (skip_query_video and p.resolve() == query.resolve())]
    if not sources:
        raise MVFormerError(f"{', '.join(map(str, gallery))}: the gallery holds no video but the query's")
    (query_frames,), counts = check_videos([query]), check_videos(sources)
    if not 0 <= frame < query_frames:
        raise MVFormerError(f"{query}: frame {frame} out of range (video has {query_frames} frames)")
    if k > sum(counts):
        raise MVFormerError(f"k = {k}: the gallery holds only {sum(counts)} frames")
    model, torch_device = load_app_model(checkpoint, device)
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
    titles = [f"#{rank + 1} {output_name(m.source)}:{m.frame}\nd = {m.distance:.4f}" for rank, m in enumerate(matches)]
    with atomic_paths(outputs) as (sheet_path, csv_path):
        viz.plot_contact_sheet(display_frames(query, np.array([frame]), height)[0],
                               f"query {output_name(query)}:{frame}", thumbnails, titles, sheet_path)
        save_csv(csv_path, ("rank", "video", "frame", "distance"),
                 [(rank + 1, str(m.source), m.frame, f"{m.distance:.6f}") for rank, m in enumerate(matches)])
    return matches
