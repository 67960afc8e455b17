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

import numpy as np

from mvformer import viz
from mvformer.apps.align import align_to_reference
from mvformer.apps.attention import attention_maps, write_attention
from mvformer.apps.retrieve import retrieve, write_retrieval
from mvformer.apps.videos import (DECODE_CHUNK, DEFAULT_FPS, TRANSFERRED_MARKER, check_videos, embed, list_videos,
                                  phase_labels)
from mvformer.checkpoint import Trained, load_model
from mvformer.config import Config
from mvformer.data.formats import open_dataset
from mvformer.data.video import frame_chunks
from mvformer.errors import MVFormerError
from mvformer.evaluation.alignment import cost_matrix
from mvformer.evaluation.embed import EvaluationSet, check_scorable
from mvformer.evaluation.embeddings_io import COLUMN_PREFIXES, file_skip_lines
from mvformer.evaluation.spread import embedding_spread, unreliable_metrics, warning_line
from mvformer.evaluation.time_only import TIME_ONLY_LABEL, no_gain_line, time_only_files, time_only_metrics
from mvformer.files import check_output_place, output_folder
from mvformer.model.pooling import SpatialTokenPooling
from mvformer.progress import progress_bar
from mvformer.runs import EVAL_METRICS_NAME, EVAL_NAME, METRICS_NAME, read_evaluation, read_log

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
    seek frame-exactly (viz.AnimationWriter: yuv420p, no B-frames, the index first), a keyframe every
    KEYFRAME_INTERVAL frames, frame i shown from time i / rate. Decodes in chunks; returns the frame count."""
    with viz.AnimationWriter(target, browser_rate(fps), crf=20, keyframe_interval=KEYFRAME_INTERVAL) as writer:
        for chunk in frame_chunks(source, DECODE_CHUNK):
            writer.write(viz.resize_frames(chunk, height, viz.display_width(*chunk.shape[1:3], height)))
    return writer.count


def default_videos(config: Config, count: int) -> tuple[list[Path], list[viz.PhaseLabels | None]]:
    """The first `count` validation videos of the run's dataset and their phases where labelled."""
    try:
        dataset = open_dataset(config.data.root, "val", config.data.format, config.data.subset)
    except MVFormerError as error:
        raise MVFormerError(f"pass --videos: the run's validation videos cannot be opened ({error})") from None
    names = dataset.phase_names
    transferred = (Path(config.data.root) / TRANSFERRED_MARKER).is_file()  # the output of `mvformer label`
    records = dataset.records[:count]
    return [record.path for record in records], [
        viz.PhaseLabels(record.labels, names, transferred) if record.labels is not None and names else None
        for record in records]


def data_name(config: Config, videos: Sequence[Path] | None) -> str:
    """What the report is about, for its title: the folder of the videos given (a generic-layout dataset by its
    root), else the run's dataset (and its subset)."""
    if not videos:
        subset = f" ({config.data.subset})" if config.data.subset else ""
        return f"{Path(config.data.root).resolve().name}{subset}"
    folders = [path.parent.parent if path.parent.name == "videos" else path.parent for path in videos]
    return ", ".join(dict.fromkeys(folder.resolve().name for folder in folders))


def phases_data(phases: viz.PhaseLabels | None) -> dict | None:
    """A video's phases for the page: per-frame labels, the names and CSS colours by index, whether transferred."""
    if phases is None:
        return None
    return {"labels": phases.labels.tolist(), "names": phases.names, "transferred": phases.transferred,
            "colours": [_css_colour(c) for c in viz.phase_colours(np.arange(len(phases.names)))],
            "unlabelled": _css_colour(viz.UNLABELLED_COLOUR)}


def run_metrics(run_dir: Path, config: Config) -> dict:
    """{"model": metrics or None, "time_only": metrics or None, "source": where the model's came from, "note":
    why a row is missing or None, and which tasks the labels do not allow}. The model's row is RUN/eval/
    metrics.json's mean (time-only scored on the labels and lengths of the same DATASET.npz files, for the same
    tasks), else the last evaluation in RUN/metrics.jsonl (time-only scored on the run's dataset, eval.tasks)."""
    result = read_evaluation(run_dir)
    if result is not None:
        files = [run_dir / EVAL_NAME / f"{name}.npz" for name in result["datasets"]]
        tasks = list(result["mean"])
        time_only = time_only_files(files, config.model.hidden_size, config.data.clip_len, config.eval.stride,
                                    config.eval.fractions, config.eval.ks, tasks, config.eval.classifier)
        skipped = [line for path in files for line in file_skip_lines(path, tasks, config.eval.fractions)]
        count = len(result["datasets"])
        return {"model": result["mean"], "time_only": time_only["mean"], "note": " ".join(skipped) or None,
                "source": f"{run_dir / EVAL_NAME / EVAL_METRICS_NAME}, mean over {count} dataset"
                          f"{'s' * (count != 1)}"}
    evaluations = read_log(run_dir).evaluations
    if not evaluations:
        return {"model": None, "time_only": None, "source": None,
                "note": f"no evaluation found in {run_dir}: run `mvformer evaluate {run_dir}` for the metrics"}
    time_only, note = None, None
    try:
        dataset = EvaluationSet(Path(config.data.root).name, *(
            open_dataset(config.data.root, split, config.data.format, config.data.subset)
            for split in ("train", "val")))
        check_scorable(dataset, config.eval)
    except MVFormerError as error:
        note = f"time-only row not computed: {error}"
    else:
        time_only = time_only_metrics([r.labels for r in dataset.train.records],
                                      [r.labels for r in dataset.val.records], dataset.train.num_classes,
                                      config.model.hidden_size, config.data.clip_len, config.eval.fractions,
                                      config.eval.ks, config.eval.stride, config.eval.tasks, config.eval.classifier)
        note = " ".join(dataset.notes) or None
    return {"model": evaluations[-1].eval, "time_only": time_only, "note": note,
            "source": f"{run_dir / METRICS_NAME}, evaluation after epoch {evaluations[-1].epoch}"}


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
    head = "".join(f"<th>{html.escape(title).replace('@', '@<wbr>')}</th>" for title, _, _ in columns)  # narrow windows
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
    return (f'<div class="table-wrap"><table class="metrics"><thead><tr><th>model</th>{head}</tr></thead><tbody>'
            f'{"".join(body)}</tbody></table></div><p class="note">{paragraph}</p>')


def training_curve(run_dir: Path, name: str, target: Path) -> bool:
    """RUN/metrics.jsonl's loss per epoch as a PNG; False when the run logged none."""
    points = [(record.epoch, record.loss) for record in read_log(run_dir).epochs]
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


def _css_colour(colour: np.ndarray) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in colour)


def _phase_strip(index: int, phases: viz.PhaseLabels | None) -> str:
    """Under a video: its phases as coloured stretches along its length with a marker at the frame shown, and the
    shown frame's phase (both moved by report.js); a note where the video has no labels."""
    if phases is None:
        return '<p class="phase-none">no phase labels</p>'
    starts = np.flatnonzero(np.diff(phases.labels, prepend=-2))  # first frame of each stretch of one phase
    stops = np.append(starts[1:], len(phases.labels))
    runs = "".join(f'<span style="flex-grow: {stop - start}; background: {_css_colour(colour)}" '
                   f'title="{html.escape(phases.name(start))}: frames {start} to {stop - 1}"></span>'
                   for start, stop, colour in zip(starts, stops, viz.phase_colours(phases.labels[starts])))
    kind = " (transferred)" if phases.transferred else ""
    return (f'<div class="phase-strip" id="phases-{index}">{runs}<span class="marker" id="marker-{index}"></span>'
            f'</div><p class="phase"><span class="swatch" id="swatch-{index}"></span><span id="phase-{index}">'
            f'</span>{kind}</p>')


def _video_figure(index: int, name: str, reference: bool, phases: viz.PhaseLabels | None) -> str:
    role = "reference" if reference else "follower"
    return (f'<figure class="video {role}"><video id="video-{index}" src="videos/{index:02d}.mp4" muted playsinline '
            f'preload="auto"></video><figcaption><span class="name">{html.escape(name)}'
            f'{" (reference)" if reference else ""}</span><span class="frame" id="frame-{index}"></span>'
            f'</figcaption>{_phase_strip(index, phases)}</figure>')


def _phase_legend(phases: list[viz.PhaseLabels | None]) -> str:
    """The phases' colours, named by the first labelled video; a hint where no video is labelled."""
    shown = [p for p in phases if p is not None]
    if not shown:
        return '<p class="hint">No video here has phase labels (ROOT/labels/NAME.csv beside ROOT/videos/).</p>'
    present = np.unique(np.concatenate([p.labels for p in shown]))
    items = "".join(f'<span class="swatch" style="background: {_css_colour(colour)}"></span>'
                    f'{html.escape(shown[0].names[label] if label >= 0 else "unlabelled")} '
                    for label, colour in zip(present.tolist(), viz.phase_colours(present)))
    return f'<p class="legend">Phases: {items}</p>'


def _page(trained: Trained, warnings: list, metrics: dict, names: list[str], last_frame: int, frame: int,
          has_curve: bool, has_attention: bool, spread, data: dict, title: str,
          phases: list[viz.PhaseLabels | None]) -> str:
    """index.html: the page template filled in (text and markup only; the data rides along as JSON)."""
    config, model_cfg = trained.config, trained.model.model_cfg
    return Template(_asset("index.html")).substitute(
        title=html.escape(f"{title}: mvformer report"),
        subtitle=html.escape(f"Model {config.name!r} from {trained.source} · backbone "
                             f"{trained.model.backbone_cfg.name}, pooling {model_cfg.pooling}, time encoding "
                             f"{model_cfg.time_encoding}"),
        warning="".join(f'<p class="warning">{html.escape(line)}</p>' for line in warnings if line),
        metrics=metrics_table(metrics),
        last_frame=last_frame,
        videos="\n    ".join(_video_figure(i, name, i == 0, own) for i, (name, own) in enumerate(zip(names, phases))),
        legend=_phase_legend(phases),
        retrieval=(f'<p class="hint">Reference frame {frame} of {html.escape(names[0])} and its nearest frames in '
                   f'the other videos (squared distance of normalised embeddings).</p>'
                   f'<img class="figure" src="retrieval.png" alt="retrieval sheet">'),
        curves=('<img class="figure" src="training_curves.png" alt="training curves">' if has_curve else
                f'<p class="note">No training log{_log_place(trained.run_dir)}.</p>'),
        attention=('<p class="hint">Where each entity token of the pooling looks in the reference video.</p>'
                   '<img class="figure" src="attention/attention_strip.png" alt="attention strip">'
                   '<video class="figure" id="attention-video" src="attention/attention.mp4" controls loop muted '
                   'playsinline preload="auto"></video>' if has_attention else
                   f'<p class="note">The model pools with {html.escape(model_cfg.pooling)!s}, which has '
                   f'no spatial attention to show.</p>'),
        footer=html.escape(f"Embeddings: {spread.frames} frames, relative spread {spread.relative_spread:.3f}, "
                           f"effective rank {spread.effective_rank:.2f} of {len(spread.dimension_std)} "
                           f"dimensions. Written by mvformer report."),
        data=json.dumps(data).replace("</", "<\\/"))


def _log_place(run_dir: Path | None) -> str:
    return f" ({html.escape(str(run_dir / METRICS_NAME))})" if run_dir is not None else " (the model is an export)"


def build_report(trained: Trained, out: str | Path, videos: Sequence[str | Path] | None = None,
                 overwrite: bool = False, frames: str = "squash", frame: int | None = None, height: int = 192,
                 max_videos: int = 4) -> Path:
    """Write the report folder OUT (module docstring) for a trained model; returns its index.html. videos: the
    viewer's videos, the first the reference (default: the first `max_videos` validation videos of the run's
    dataset); frame: the reference frame of the retrieval sheet (default: the middle one)."""
    out = Path(out)
    paths, phases = default_videos(trained.config, max_videos) if not videos else (list_videos(videos), None)
    inputs = [*paths, *trained.inputs]
    check_output_place(out, MARKER, overwrite, inputs)
    if len(paths) < 2:
        raise MVFormerError(f"{', '.join(map(str, paths))}: the alignment viewer needs at least two videos")
    if phases is None:
        phases = [phase_labels(path, count) for path, count in zip(paths, check_videos(paths))]
    embedded = [embed(trained, path, frames) for path in progress_bar(paths, desc="embedding", unit="video")]
    reference = embedded[0]
    frame = len(reference) // 2 if frame is None else frame
    if not 0 <= frame < len(reference):
        raise MVFormerError(f"{paths[0]}: frame {frame} out of range (video has {len(reference)} frames)")
    mapping = [None] + [a.shown.tolist() for a in align_to_reference(reference, embedded[1:])]
    spread = embedding_spread([e.embeddings for e in embedded])
    metrics = run_metrics(trained.run_dir, trained.config) if trained.run_dir is not None else \
        {"model": None, "time_only": None, "source": None, "note": "the model is an export: no run to read "
                                                                    "metrics from"}
    names = [e.name for e in embedded]
    height = viz.even(height)

    with output_folder(out, MARKER, overwrite, inputs) as staging:
        (staging / "videos").mkdir()
        listed = []
        for index, item in enumerate(progress_bar(embedded, desc="encoding", unit="video")):
            count = encode_for_browser(item.source, staging / "videos" / f"{index:02d}.mp4", height, item.fps)
            listed.append({"name": names[index], "file": f"videos/{index:02d}.mp4", "frames": count,
                           "fps": float(browser_rate(item.fps)), "source": str(item.source.resolve()),
                           "phases": phases_data(phases[index])})
        write_retrieval(staging / "retrieval.png", reference, frame, retrieve(reference, frame, embedded[1:], k=9))
        has_curve = trained.run_dir is not None and training_curve(trained.run_dir, trained.config.name,
                                                                   staging / "training_curves.png")
        has_attention = isinstance(trained.model.head.pooling, SpatialTokenPooling)
        if has_attention:
            write_attention(staging / "attention", attention_maps(trained, paths[0], frames), animation="mp4",
                            display_size=height)
        data = {"videos": listed, "mapping": mapping,
                "nearest": nearest_frames([e.embeddings for e in embedded], NEAREST)}
        warnings = [warning_line(spread)]
        if metrics["model"] and metrics["time_only"]:
            warnings.append(no_gain_line(metrics["model"], metrics["time_only"]))
        page = _page(trained, warnings, metrics, names, len(reference) - 1, frame, has_curve, has_attention, spread,
                     data, data_name(trained.config, paths if videos else None), phases)
        (staging / "index.html").write_text(page, encoding="utf-8")
        for name in ASSETS:
            (staging / name).write_text(_asset(name), encoding="utf-8")
        (staging / MARKER).write_text(json.dumps({"run": str(trained.source), "metrics": metrics,
                                                  "spread": spread.to_dict(), "retrieval_frame": frame, **data},
                                                 indent=1) + "\n")
    return out / "index.html"


def report_command(checkpoint: str | Path, out: str | Path, videos: Sequence[str | Path] | None = None,
                   overwrite: bool = False, device: str = "auto", frames: str = "squash", frame: int | None = None,
                   height: int = 192, max_videos: int = 4) -> Path:
    """`mvformer report`: the model loaded once, then `build_report`."""
    return build_report(load_model(checkpoint, device), out, videos, overwrite, frames, frame, height, max_videos)
