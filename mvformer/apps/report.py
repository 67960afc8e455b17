"""`mvformer report`: one folder whose index.html a browser opens from the file system, with no server and
nothing fetched: the run's metrics beside the time-only row, its training curve, an alignment viewer, the retrieval
sheet of a chosen frame and, for LSTP models, the attention overlays.

OUT/index.html, report.css, report.js   the page (templates in mvformer/apps/report_assets/)
OUT/report.json                         everything the page shows, as data
OUT/videos/NN.mp4                       the videos, H.264 (yuv420p, no B-frames, index up front) at a common height
OUT/training_curves.png, retrieval.png, attention/   the pictures

The viewer: the first video is the reference. Each other video is aligned with it by dynamic time warping on their
embeddings, and for every reference frame the page holds the frame shown beside it (of the frames the path pairs
with it, the nearest: `apps.align.shown_frames`). Playing or scrubbing the reference seeks every other video to that
frame; the page's data also lists, per reference frame, its nearest frames among the other videos.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from fractions import Fraction
from importlib import resources
from pathlib import Path
from string import Template

import av
import numpy as np

from mvformer import viz
from mvformer.apps.align import shown_frames
from mvformer.apps.attention import attention_video
from mvformer.apps.label import check_output_folder, staged_folder
from mvformer.apps.videos import (
    DECODE_CHUNK,
    DEFAULT_FPS,
    VideoEmbedding,
    display_frames,
    embed_video_file,
    list_videos,
    output_name,
)
from mvformer.checkpoint import METRICS_NAME, load_model, read_metrics
from mvformer.config import Config
from mvformer.data.formats import open_dataset
from mvformer.data.video import frame_chunks
from mvformer.errors import MVFormerError
from mvformer.evaluation.alignment import align, cost_matrix
from mvformer.evaluation.embeddings_io import COLUMN_PREFIXES
from mvformer.evaluation.spread import embedding_spread, unreliable_metrics, warning_line
from mvformer.evaluation.time_only import TIME_ONLY_LABEL, no_gain_line, time_only_files, time_only_metrics
from mvformer.model.pooling import SpatialTokenPooling
from mvformer.progress import progress_bar

MARKER = "report.json"
ASSETS = ("report.css", "report.js")
KEYFRAME_INTERVAL = 12  # frames between keyframes: seeking decodes at most this many frames
NEAREST = 6  # nearest frames listed per reference frame


def _asset(name: str) -> str:
    return resources.files("mvformer.apps").joinpath("report_assets", name).read_text(encoding="utf-8")


def browser_rate(fps: float | None) -> Fraction:
    """The constant frame rate a report video is written at (and the page computes frames with)."""
    return Fraction(fps or DEFAULT_FPS).limit_denominator(1001)


def encode_for_browser(source: Path, target: Path, height: int, fps: float | None) -> int:
    """Every frame of a video at `height` pixels (aspect kept, even sizes) as an H.264 mp4 that browsers play and
    seek frame-exactly: yuv420p, no B-frames, a keyframe every KEYFRAME_INTERVAL frames, the index before the
    data (+faststart), frame i shown from time i / rate. Decodes in chunks; returns the frame count."""
    rate = browser_rate(fps)
    count = 0
    with av.open(str(target), mode="w", options={"movflags": "+faststart"}) as container:
        stream = None
        for chunk in frame_chunks(source, DECODE_CHUNK):
            if stream is None:
                width = viz.display_width(*chunk.shape[1:3], height)
                stream = container.add_stream("libx264", rate=rate)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                stream.options = {"crf": "20", "preset": "veryfast",
                                  "x264-params": f"keyint={KEYFRAME_INTERVAL}:bframes=0"}
            for rgb in viz.resize_frames(chunk, height, stream.width):
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
            count += len(chunk)
        container.mux(stream.encode(None))
    return count


def default_videos(config: Config, count: int) -> list[Path]:
    """The first `count` validation videos of the run's dataset."""
    try:
        dataset = open_dataset(config.data.root, "val", config.data.format, config.data.subset)
    except MVFormerError as error:
        raise MVFormerError(f"pass --videos: the run's validation videos cannot be opened ({error})") from None
    return [record.path for record in dataset.records[:count]]


def run_metrics(run_dir: Path, config: Config) -> dict:
    """{"model": metrics or None, "time_only": metrics or None, "source": where the model's came from, "note":
    why a row is missing or None}. The model's row is RUN/eval/metrics.json's mean (time-only scored on the labels
    and lengths of the same DATASET.npz files), else the last evaluation in RUN/metrics.jsonl (time-only scored on
    the run's dataset)."""
    eval_json = run_dir / "eval" / "metrics.json"
    if eval_json.is_file():
        result = json.loads(eval_json.read_text())
        time_only = time_only_files([run_dir / "eval" / f"{name}.npz" for name in result["datasets"]],
                                    config.model.hidden_size, config.data.clip_len, config.eval.stride,
                                    config.eval.fractions, config.eval.ks, classifier=config.eval.classifier)
        count = len(result["datasets"])
        return {"model": result["mean"], "time_only": time_only["mean"], "note": None,
                "source": f"{eval_json}, mean over {count} dataset{'s' * (count != 1)}"}
    evaluations = [r for r in read_metrics(run_dir) if isinstance(r.get("eval"), dict)] \
        if (run_dir / METRICS_NAME).is_file() else []
    if not evaluations:
        return {"model": None, "time_only": None, "source": None,
                "note": f"no evaluation found in {run_dir}: run `mvformer evaluate {run_dir}` for the metrics"}
    time_only, note = None, None
    try:
        train_set, val_set = (open_dataset(config.data.root, split, config.data.format, config.data.subset)
                              for split in ("train", "val"))
    except MVFormerError as error:
        note = f"time-only row not computed: {error}"
    else:
        if train_set.labelled and val_set.labelled:
            time_only = time_only_metrics([r.labels for r in train_set.records], [r.labels for r in val_set.records],
                                          train_set.num_classes, config.model.hidden_size, config.data.clip_len,
                                          config.eval.fractions, config.eval.ks, config.eval.stride,
                                          classifier=config.eval.classifier)
        else:
            note = f"time-only row not computed: {config.data.root} has no frame labels now"
    return {"model": evaluations[-1]["eval"], "time_only": time_only, "note": note,
            "source": f"{run_dir / METRICS_NAME}, evaluation after epoch {evaluations[-1].get('epoch')}"}


def _columns(metrics: dict) -> list[tuple[str, str, str | None]]:
    """(title, task, key) of each table column: one per fraction, one for tau, one per K."""
    return [(COLUMN_PREFIXES[task] if key is None else f"{COLUMN_PREFIXES[task]}@{key}", task, key)
            for task, value in metrics.items() for key in (value if isinstance(value, dict) else [None])]


def metrics_table(metrics: dict) -> str:
    """The metrics as an HTML table: the model's row, the time-only row; meaningless cells marked."""
    rows = [(label, metrics[key], css) for label, key, css in
            (("this model", "model", "model"), (TIME_ONLY_LABEL, "time_only", "time-only")) if metrics[key]]
    if not rows:
        return f'<p class="note">{html.escape(metrics["note"] or "no metrics")}</p>'
    columns = _columns(rows[0][1])
    head = "".join(f"<th>{html.escape(title)}</th>" for title, _, _ in columns)
    body = []
    for label, values, css in rows:
        unreliable = unreliable_metrics(values)
        cells = []
        for _, task, key in columns:
            value = values[task] if key is None else values[task][key]
            mark = task if key is None else f"{task}@{key}"
            text = "n/a" if value is None else f"{value:.4f}"
            attributes = f' class="meaningless" title="{html.escape(unreliable[mark])}"' if mark in unreliable else ""
            cells.append(f"<td{attributes}>{text}</td>")
        body.append(f'<tr class="{css}"><th>{html.escape(label)}</th>{"".join(cells)}</tr>')
    marked = any(unreliable_metrics(values) for _, values, _ in rows)
    notes = [f"Model row: {metrics['source']}." if metrics["source"] else "",
             "Struck-out values cannot be read as scores (hover for why): an R^2 far below 0, an undefined metric."
             if marked else "",
             ("The time-only row embeds each frame by its relative time alone (the model's own sinusoidal code, "
              "untrained, no pixels): a score counts only by how far it rises above that row."),
             metrics["note"] or ""]
    paragraph = " ".join(html.escape(note) for note in notes if note)
    return (f'<table class="metrics"><thead><tr><th>model</th>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
            f'</table><p class="note">{paragraph}</p>')


def training_curve(run_dir: Path, name: str, target: Path) -> bool:
    """RUN/metrics.jsonl's loss per epoch as a PNG; False when the run logged none."""
    if not (run_dir / METRICS_NAME).is_file():
        return False
    points = [(r["epoch"], r["loss"]) for r in read_metrics(run_dir) if "loss" in r and "epoch" in r]
    if points:
        viz.plot_training_curves({name: points}, target)
    return bool(points)


def nearest_frames(embeddings: list[np.ndarray], count: int) -> list[list[list]]:
    """For every reference frame, its `count` nearest frames among the other videos: [video, frame, distance]."""
    pooled = np.concatenate(embeddings[1:])  # (M, E)
    owner = np.repeat(np.arange(1, len(embeddings)), [len(e) for e in embeddings[1:]])  # (M,)
    local = np.concatenate([np.arange(len(e)) for e in embeddings[1:]])  # (M,)
    distances = cost_matrix(embeddings[0], pooled)  # (La, M)
    best = np.argsort(distances, axis=1, kind="stable")[:, :count]  # (La, count)
    return [[[int(owner[j]), int(local[j]), round(float(distances[i, j]), 4)] for j in row]
            for i, row in enumerate(best)]


def retrieval_sheet(embedded: list[VideoEmbedding], frame: int, target: Path, count: int = 9,
                    height: int = 128) -> None:
    """The contact sheet of reference frame `frame` and its `count` nearest frames in the other videos."""
    matches = nearest_frames([embedded[0].embeddings[frame:frame + 1]] + [e.embeddings for e in embedded[1:]],
                             count)[0]
    thumbnails = [None] * len(matches)
    for index in {video for video, _, _ in matches}:
        ranks = [rank for rank, (video, _, _) in enumerate(matches) if video == index]
        images = display_frames(embedded[index].source, np.array([matches[r][1] for r in ranks]), height)
        for rank, image in zip(ranks, images):
            thumbnails[rank] = image
    titles = [f"#{rank + 1} {output_name(embedded[video].source)}:{match}\nd = {distance:.4f}"
              for rank, (video, match, distance) in enumerate(matches)]
    query = display_frames(embedded[0].source, np.array([frame]), height)[0]
    viz.plot_contact_sheet(query, f"query {output_name(embedded[0].source)}:{frame}", thumbnails, titles, target)


def _video_figure(index: int, name: str, reference: bool) -> str:
    role = "reference" if reference else "follower"
    return (f'<figure class="video {role}"><video id="video-{index}" src="videos/{index:02d}.mp4" muted playsinline '
            f'preload="auto"></video><figcaption><span class="name">{html.escape(name)}'
            f'{" (reference)" if reference else ""}</span><span class="frame" id="frame-{index}"></span>'
            f'</figcaption></figure>')


def _page(model, source: Path, run_dir: Path, warnings: list, metrics: dict, names: list[str], last_frame: int,
          frame: int, has_curve: bool, has_attention: bool, spread, data: dict) -> str:
    """index.html: the page template filled in (text and markup only; the data rides along as JSON)."""
    return Template(_asset("index.html")).substitute(
        title=html.escape(f"mvformer report: {model.config.name}"),
        subtitle=html.escape(f"{source.resolve()} · backbone {model.config.backbone.name}, pooling "
                             f"{model.config.model.pooling}, time encoding {model.config.model.time_encoding}"),
        warning="".join(f'<p class="warning">{html.escape(line)}</p>' for line in warnings if line),
        metrics=metrics_table(metrics),
        last_frame=last_frame,
        videos="\n    ".join(_video_figure(i, name, i == 0) for i, name in enumerate(names)),
        retrieval=(f'<p class="hint">Reference frame {frame} of {html.escape(names[0])} and its nearest frames in '
                   f'the other videos (squared distance of normalised embeddings).</p>'
                   f'<img class="figure" src="retrieval.png" alt="retrieval sheet">'),
        curves=('<img class="figure" src="training_curves.png" alt="training curves">' if has_curve else
                f'<p class="note">No training log ({html.escape(str(run_dir / METRICS_NAME))}).</p>'),
        attention=('<p class="hint">Where each entity token of the pooling looks in the reference video.</p>'
                   '<img class="figure" src="attention/attention_strip.png" alt="attention strip">'
                   '<video class="figure" id="attention-video" src="attention/attention.mp4" controls loop muted '
                   'playsinline preload="auto"></video>' if has_attention else
                   f'<p class="note">The model pools with {html.escape(model.config.model.pooling)!s}, which has '
                   f'no spatial attention to show.</p>'),
        footer=html.escape(f"Embeddings: {spread.frames} frames, relative spread {spread.relative_spread:.3f}, "
                           f"effective rank {spread.effective_rank:.2f} of {len(spread.dimension_std)} "
                           f"dimensions. Written by mvformer report."),
        data=json.dumps(data).replace("</", "<\\/"))


def build_report(checkpoint: str | Path, out: str | Path, videos: Sequence[str | Path] | None = None,
                 overwrite: bool = False, device: str = "auto", frames: str = "squash", frame: int | None = None,
                 height: int = 192, max_videos: int = 4) -> Path:
    """Write the report folder OUT (module docstring) for a run folder, checkpoint or export; returns its
    index.html. videos: the viewer's videos, the first the reference (default: the first `max_videos` validation
    videos of the run's dataset); frame: the reference frame of the retrieval sheet (default: the middle one)."""
    out, source = Path(out), Path(checkpoint)
    check_output_folder(out, overwrite, MARKER)
    run_dir = source if source.is_dir() else source.parent
    model, torch_device = load_model(checkpoint, device)
    paths = list_videos(videos) if videos else default_videos(model.config, max_videos)
    if len(paths) < 2:
        raise MVFormerError(f"{', '.join(map(str, paths))}: the alignment viewer needs at least two videos")
    embedded = [embed_video_file(model, path, torch_device, frames)
                for path in progress_bar(paths, desc="embedding", unit="video")]
    reference = embedded[0].embeddings
    frame = len(reference) // 2 if frame is None else frame
    if not 0 <= frame < len(reference):
        raise MVFormerError(f"{paths[0]}: frame {frame} out of range (video has {len(reference)} frames)")
    mapping = [None] + [shown_frames(*align(reference, e.embeddings, "dtw")).tolist() for e in embedded[1:]]
    spread = embedding_spread([e.embeddings for e in embedded])
    metrics = run_metrics(run_dir, model.config)
    names = [output_name(path) for path in paths]
    height = viz.even(height)

    with staged_folder(out) as staging:
        (staging / "videos").mkdir()
        listed = []
        for index, item in enumerate(progress_bar(embedded, desc="encoding", unit="video")):
            count = encode_for_browser(item.source, staging / "videos" / f"{index:02d}.mp4", height, item.fps)
            listed.append({"name": names[index], "file": f"videos/{index:02d}.mp4", "frames": count,
                           "fps": float(browser_rate(item.fps)), "source": str(item.source.resolve())})
        retrieval_sheet(embedded, frame, staging / "retrieval.png")
        has_curve = training_curve(run_dir, model.config.name, staging / "training_curves.png")
        has_attention = isinstance(model.head.pooling, SpatialTokenPooling)
        if has_attention:
            attention_video(checkpoint, paths[0], staging / "attention", device=device, frames=frames,
                            animation="mp4", display_size=height)
        data = {"videos": listed, "mapping": mapping,
                "nearest": nearest_frames([e.embeddings for e in embedded], NEAREST)}
        warnings = [warning_line(spread)]
        if metrics["model"] and metrics["time_only"]:
            warnings.append(no_gain_line(metrics["model"], metrics["time_only"]))
        page = _page(model, source, run_dir, warnings, metrics, names, len(reference) - 1, frame, has_curve,
                     has_attention, spread, data)
        (staging / "index.html").write_text(page, encoding="utf-8")
        for name in ASSETS:
            (staging / name).write_text(_asset(name), encoding="utf-8")
        (staging / MARKER).write_text(json.dumps({"run": str(source.resolve()), "metrics": metrics,
                                                  "spread": spread.to_dict(), "retrieval_frame": frame, **data},
                                                 indent=1) + "\n")
    return out / "index.html"
