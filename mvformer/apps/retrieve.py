"""`mvformer retrieve`: the K frames nearest to one frame across a folder of videos, as a contact sheet.
Library: `retrieve` (embeddings in, `Match`es out) and `write_retrieval`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvformer import viz
from mvformer.apps.videos import (
    VideoEmbedding,
    check_display_height,
    check_videos,
    display_frames,
    embed,
    list_videos,
    load_app_model,
    phase_labels,
    phase_text,
)
from mvformer.checkpoint import source_files
from mvformer.errors import MVFormerError
from mvformer.evaluation.alignment import cost_matrix
from mvformer.files import atomic_paths, check_outputs, save_csv

MAX_K = 100  # frames on one contact sheet


@dataclass(frozen=True)
class Match:
    """One retrieved frame."""

    video: VideoEmbedding
    frame: int
    distance: float  # squared Euclidean distance to the query frame


def parse_frame_reference(spec: str) -> tuple[Path, int]:
    """'VIDEO:FRAME' (FRAME a 0-based index; VIDEO may itself hold colons) -> (VIDEO, FRAME)."""
    video, _, frame = spec.rpartition(":")
    if not video or not (frame.isascii() and frame.isdigit()):
        raise MVFormerError(f"{spec}: expected VIDEO:FRAME with a 0-based frame number, e.g. clip.mp4:12")
    return Path(video), int(frame)


def _check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise MVFormerError(f"k = {k}: must be from 1 to {MAX_K} (frames on the contact sheet)")


def retrieve(query: VideoEmbedding, frame: int, gallery: Sequence[VideoEmbedding], k: int = 8,
             include_query_video: bool = False) -> list[Match]:
    """The k gallery frames nearest to frame `frame` of the query video, over every frame of every gallery video
    but the query's own (its neighbouring frames would fill the list, the query frame itself first) unless
    `include_query_video`; nearest first. The query's video is told apart by its source file (or, for arrays, by
    being the same object)."""
    _check_k(k)
    if not 0 <= frame < len(query):
        raise MVFormerError(f"{query.name}: frame {frame} out of range (video has {len(query)} frames)")
    candidates = [video for video in gallery if include_query_video or not _same_video(video, query)]
    if not candidates:
        raise MVFormerError(f"{query.name}: the gallery holds no video but the query's (include the query's video "
                            f"to search it: --include-query-video)")
    lengths = [len(video) for video in candidates]
    if k > sum(lengths):
        raise MVFormerError(f"k = {k}: the gallery holds only {sum(lengths)} frames")
    pooled = np.concatenate([video.embeddings for video in candidates])  # (M, E)
    owner = np.repeat(np.arange(len(candidates)), lengths)  # (M,) video of each pooled frame
    local = np.concatenate([np.arange(length) for length in lengths])  # (M,) frame within its video
    distances = cost_matrix(query.embeddings[frame:frame + 1], pooled)[0]  # (M,)
    best = np.argsort(distances, kind="stable")[:k]
    return [Match(candidates[owner[i]], int(local[i]), float(distances[i])) for i in best]


def _same_video(video: VideoEmbedding, query: VideoEmbedding) -> bool:
    if video.source is None or query.source is None:
        return video is query
    return video.source.resolve() == query.source.resolve()


def retrieval_outputs(out: Path) -> list[Path]:
    """OUT (.png) and OUT.csv."""
    if out.suffix.lower() != ".png":
        raise MVFormerError(f"{out}: the contact sheet must be a .png file")
    return [out, out.with_suffix(".csv")]


def write_retrieval(out: str | Path, query: VideoEmbedding, frame: int, matches: Sequence[Match],
                    height: int = 128, overwrite: bool = False, inputs: Sequence[Path] = ()) -> list[Path]:
    """OUT (a .png contact sheet: the query frame, then each match's video, frame number, distance and, where
    labelled, phase) and OUT.csv (rank, video, frame, distance). Frames are read from the videos' files."""
    outputs = retrieval_outputs(Path(out))
    check_display_height(height)
    videos = {id(video): video for video in [query, *(match.video for match in matches)]}.values()
    unsourced = next((video.name for video in videos if video.source is None), None)
    if unsourced is not None:
        raise MVFormerError(f"{unsourced}: was embedded from an array of frames; the contact sheet is drawn from "
                            f"video files")
    check_outputs(outputs, overwrite, [*inputs, *(video.source for video in videos)])
    phases = {video.source: phase_labels(video.source, len(video)) for video in videos}
    thumbnails = [None] * len(matches)
    for source in {m.video.source for m in matches}:
        ranks = [r for r, m in enumerate(matches) if m.video.source == source]
        images = display_frames(source, np.array([matches[r].frame for r in ranks]), height)
        for rank, image in zip(ranks, images):
            thumbnails[rank] = image
    titles = [f"#{rank + 1} {m.video.name}:{m.frame}\nd = {m.distance:.4f}"
              f"{phase_text(phases[m.video.source], m.frame)}" for rank, m in enumerate(matches)]
    with atomic_paths(outputs) as (sheet_path, csv_path):
        viz.plot_contact_sheet(display_frames(query.source, np.array([frame]), height)[0],
                               f"query {query.name}:{frame}{phase_text(phases[query.source], frame)}", thumbnails,
                               titles, sheet_path)
        save_csv(csv_path, ("rank", "video", "frame", "distance"),
                 [(rank + 1, str(m.video.source), m.frame, f"{m.distance:.6f}") for rank, m in enumerate(matches)])
    return outputs


def retrieve_command(checkpoint: str | Path, query: str | Path, frame: int, gallery: Sequence[str | Path],
                     out: str | Path, k: int = 8, include_query_video: bool = False, overwrite: bool = False,
                     device: str = "auto", frames: str = "squash", height: int = 128) -> list[Match]:
    """`mvformer retrieve`: every check first (outputs, k, frame, videos, labels), the model loaded once, the query
    and the gallery embedded (the query's video once), `retrieve`, then `write_retrieval`."""
    out, query = Path(out), Path(query)
    outputs = retrieval_outputs(out)
    _check_k(k)
    check_display_height(height)
    listed = list_videos(gallery)
    check_outputs(outputs, overwrite, [*source_files(checkpoint), query, *map(Path, gallery), *listed])
    sources = [p for p in listed if include_query_video or p.resolve() != query.resolve()]
    if not sources:
        raise MVFormerError(f"{', '.join(map(str, gallery))}: the gallery holds no video but the query's (pass "
                            f"--include-query-video to search it)")
    (query_frames,), counts = check_videos([query]), check_videos(sources)
    for path, count in zip([query, *sources], [query_frames, *counts]):
        phase_labels(path, count)  # a labels file of the wrong length is refused before the model runs
    if not 0 <= frame < query_frames:
        raise MVFormerError(f"{query}: frame {frame} out of range (video has {query_frames} frames)")
    if k > sum(counts):
        raise MVFormerError(f"k = {k}: the gallery holds only {sum(counts)} frames")
    trained = load_app_model(checkpoint, device)
    anchor = embed(trained, query, frames)
    embedded = [anchor if path.resolve() == query.resolve() else embed(trained, path, frames) for path in sources]
    matches = retrieve(anchor, frame, embedded, k, include_query_video)
    write_retrieval(out, anchor, frame, matches, height, overwrite, source_files(checkpoint))
    return matches
