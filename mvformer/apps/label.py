"""`mvformer label`: label one or two videos by hand, have every other video labelled.

Every frame of every video takes the phase of the frames it aligns to in the labelled reference videos
(mvformer.evaluation.transfer: a path per reference, a vote per frame over the K references of least alignment
cost). The output folder is itself a dataset in the generic layout, so it can be trained on, evaluated, or lent
as a reference in turn:

OUT/videos/NAME.ext        the video (a hard link where the file system allows, else a copy)
OUT/labels/NAME.csv        `frame,label`, label a class name from classes.txt (an integer without one)
OUT/classes.txt            the reference's, when it has one
OUT/splits/all.txt         every labelled video
OUT/confidence/NAME.csv    `frame,label,confidence`: the phase's share of the votes (0 where no reference voted)
OUT/transfer.json          method, references of each video and their costs, scores when asked for

Scores (`score=True`) need hand labels beside the videos (ROOT/labels/NAME.csv next to ROOT/videos/NAME.ext, the
generic layout) and print frame accuracy and per-phase boundary errors beside the same numbers for transfer by
relative time alone through the same references. OUT is written through `files.output_folder` (staged, moved into
place at the end; never an input; --overwrite replaces only an earlier label output), so a failure leaves nothing
half-written. Library: `label` (a model, a reference split and videos' embeddings in, `Labelled` videos out),
`score_labels` and `write_labelled`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvformer.apps.videos import TRANSFERRED_MARKER, VideoEmbedding, embed, list_videos, output_name
from mvformer.checkpoint import Trained, load_model, source_files
from mvformer.data.datasets import VideoDataset, _read_classes, _read_video_labels, check_video_name, write_split
from mvformer.errors import MVFormerError
from mvformer.evaluation.alignment import check_method
from mvformer.evaluation.spread import embedding_spread, warning_line
from mvformer.evaluation.time_only import TIME_ONLY_MARGIN
from mvformer.evaluation.transfer import (
    check_references,
    relative_time_labels,
    score_transfer,
    transfer_labels,
)
from mvformer.files import check_output_place, output_folder, write_csv, write_text
from mvformer.progress import note, progress_bar

SUMMARY_NAME = TRANSFERRED_MARKER  # its presence marks the labels beside it as transferred
SPLIT_NAME = "all"


@dataclass(frozen=True)
class Labelled:
    """One video labelled by transfer."""

    name: str
    source: Path | None  # None for frames given as an array
    labels: np.ndarray  # int64 (L,), -1 where no reference voted
    confidence: np.ndarray  # float64 (L,): the label's share of the votes
    references: np.ndarray  # int64 (K,): the reference videos that voted, least alignment cost first
    costs: np.ndarray  # float64 (K,): their mean cost along the path
    truth: np.ndarray | None  # its hand labels, int64 (L,), when it has them
    baseline: np.ndarray  # int64 (L,): the labels of transfer by relative time alone through the same references


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def place_video(source: Path, target: Path) -> None:
    """A video file or frame folder at `target`: hard links where possible, else copies."""
    if source.is_dir():
        shutil.copytree(source, target, copy_function=_link_or_copy)
    else:
        _link_or_copy(str(source), str(target))


def _hand_labels(video: Path, classes: list[str] | None, num_classes: int, reference: Path) -> np.ndarray | None:
    """The labels of ROOT/labels/NAME.csv when `video` is ROOT/videos/NAME(.ext), read with ROOT's classes.txt,
    which must then list the reference's classes; None when there is no such file."""
    root, name = video.parent.parent, output_name(video)
    if video.parent.name != "videos" or not (root / "labels" / f"{name}.csv").is_file():
        return None
    own = _read_classes(root)
    if own != classes:
        raise MVFormerError(f"{root / 'classes.txt'}: lists classes {own} but the reference's "
                            f"{reference / 'classes.txt'} lists {classes}; scoring needs the same classes in the "
                            f"same order")
    labels = _read_video_labels(root, name, None if own is None else {c: i for i, c in enumerate(own)})
    if labels.max(initial=-1) >= num_classes:
        raise MVFormerError(f"{root}: labels/{name}.csv holds label {labels.max()}, but the reference has "
                            f"{num_classes} classes")
    return labels


def _named_videos(videos: Sequence[str | Path]) -> dict[str, Path]:
    """Output name -> video, refusing two videos of one name."""
    named: dict[str, Path] = {}
    for path in list_videos(videos):
        name = output_name(path)
        check_video_name(name, path)
        if name in named:
            raise MVFormerError(f"{path}: another video ({named[name]}) is also named {name!r}; their labels would "
                                f"overwrite each other")
        named[name] = path
    return named


def _label_cell(label: int, classes: list[str] | None) -> str:
    return str(label) if classes is None or label < 0 else classes[label]


def split_videos(root: str | Path, split: str) -> list[Path]:
    """The videos of split `split` of the generic-layout dataset `root`, as targets to label."""
    return [record.path for record in VideoDataset(root, split).records]


def _check_reference(reference: VideoDataset) -> None:
    """The reference split can lend labels: every video has them, one line naming the file otherwise."""
    if not reference.labelled or reference.num_classes is None:
        raise MVFormerError(f"{reference.root}: the reference videos have no frame labels (labels/NAME.csv)")
    check_references([record.labels for record in reference.records],
                     [f"{reference.root}: labels/{record.name}.csv" for record in reference.records])


def _check_options(method: str, references: int | None) -> None:
    check_method(method)
    if references is not None and references < 1:
        raise MVFormerError(f"--references {references}: at least one reference must vote")


def label(trained: Trained, reference: VideoDataset, videos: Sequence[VideoEmbedding], method: str = "dtw",
          references: int | None = None, frames: str = "squash",
          reference_embs: Sequence[np.ndarray] | None = None) -> list[Labelled]:
    """Label every frame of each video from the labelled videos of `reference` (a split of a generic-layout
    dataset), along their alignments (`evaluation.transfer`; the K `references` of least alignment cost vote, all
    by default). A video that is also a reference lends no labels to itself. Each result holds the video's hand
    labels when it lies in a dataset with labels beside it, and the relative-time baseline through the same
    references. The reference videos are embedded with `trained` unless their embeddings are given."""
    _check_options(method, references)
    _check_reference(reference)
    reference_labels = [record.labels for record in reference.records]
    if reference_embs is None:
        reference_embs = [embed(trained, record.path, frames).embeddings
                          for record in progress_bar(reference.records, desc="reference videos", unit="video")]
    reference_paths = [record.path.resolve() for record in reference.records]
    labelled = []
    for video in progress_bar(videos, desc="labelling", unit="video"):
        source = video.source.resolve() if video.source is not None else None
        truth = _hand_labels(video.source, reference.classes, reference.num_classes, reference.root) \
            if video.source is not None else None
        if truth is not None and len(truth) != len(video):
            raise MVFormerError(f"{video.source}: its labels file has {len(truth)} rows but the video has "
                                f"{len(video)} frames")
        others = [i for i, path in enumerate(reference_paths) if path != source]  # never lend to itself
        if not others:
            raise MVFormerError(f"{video.source}: is the only reference video, so no other video can lend it labels")
        result = transfer_labels(video.embeddings, [reference_embs[i] for i in others],
                                 [reference_labels[i] for i in others], reference.num_classes, method, references)
        voters = np.asarray(others)[result.references]
        baseline = relative_time_labels(len(video), reference_labels, reference.num_classes, voters).labels
        labelled.append(Labelled(video.name, video.source, result.labels, result.confidence, voters,
                                 result.costs[result.references], truth, baseline))
    return labelled


def score_labels(labelled: Sequence[Labelled], reference: VideoDataset) -> dict:
    """Frame accuracy and per-phase boundary errors of the transfer and of the relative-time baseline, over the
    videos that have hand labels (one line if none has)."""
    scored = [item for item in labelled if item.truth is not None]
    if not scored:
        raise MVFormerError("--score: none of the videos has hand labels (ROOT/labels/NAME.csv beside "
                            "ROOT/videos/NAME.mp4)")
    truths = [item.truth for item in scored]
    return {"videos": len(scored), "labelled_frames": int(sum((t >= 0).sum() for t in truths)),
            "transfer": score_transfer([item.labels for item in scored], truths, reference.num_classes,
                                       reference.classes),
            "relative_time": score_transfer([item.baseline for item in scored], truths, reference.num_classes,
                                            reference.classes)}


def write_labelled(out: str | Path, labelled: Sequence[Labelled], reference: VideoDataset, method: str = "dtw",
                   references: int | None = None, spread: dict | None = None, scores: dict | None = None,
                   overwrite: bool = False, inputs: Sequence[Path] = ()) -> Path:
    """OUT as a dataset in the generic layout (module docstring), through `files.output_folder`."""
    unsourced = next((item.name for item in labelled if item.source is None), None)
    if unsourced is not None:
        raise MVFormerError(f"{unsourced}: was embedded from an array of frames; a labelled dataset holds video files")
    for item in labelled:
        check_video_name(item.name, item.source)
    inputs = [*inputs, reference.root, *(item.source for item in labelled)]
    with output_folder(out, SUMMARY_NAME, overwrite, inputs) as staging:
        _write(staging, labelled, reference, method, references, spread or {}, scores)
    return Path(out)


def label_command(checkpoint: str | Path, reference: str | Path, videos: Sequence[str | Path], out: str | Path,
                  method: str = "dtw", references: int | None = None, split: str = "train", score: bool = False,
                  overwrite: bool = False, device: str = "auto", frames: str = "squash",
                  log=print) -> list[Labelled]:
    """`mvformer label`: every check first (options, names, outputs, the reference's labels, hand labels when
    scoring), the model loaded once, `label`, `score_labels` with `score` (printed through `log`), then
    `write_labelled`."""
    out, reference = Path(out), Path(reference)
    _check_options(method, references)
    targets = _named_videos(videos)
    inputs = [reference, *targets.values(), *source_files(checkpoint)]
    check_output_place(out, SUMMARY_NAME, overwrite, inputs)
    dataset = VideoDataset(reference, split)
    _check_reference(dataset)
    if score and all(_hand_labels(path, dataset.classes, dataset.num_classes, reference) is None
                     for path in targets.values()):
        raise MVFormerError("--score: none of the videos has hand labels (ROOT/labels/NAME.csv beside "
                            "ROOT/videos/NAME.mp4)")
    trained = load_model(checkpoint, device)
    reference_embs = [embed(trained, record.path, frames).embeddings
                      for record in progress_bar(dataset.records, desc="reference videos", unit="video")]
    embedded = [embed(trained, path, frames) for path in targets.values()]
    labelled = label(trained, dataset, embedded, method, references, frames, reference_embs)
    spread = embedding_spread([*reference_embs, *(video.embeddings for video in embedded)])
    warning = warning_line(spread)
    if warning:
        note(f"{warning}; labels carried along their alignment cannot follow the content")
    scores = score_labels(labelled, dataset) if score else None
    write_labelled(out, labelled, dataset, method, references, spread.to_dict(), scores, overwrite,
                   source_files(checkpoint))
    if scores is not None:
        log(format_scores(scores))
    return labelled


def _boundary_cell(entry: dict) -> str:
    if entry["boundaries"] == 0:
        return "-"
    error = "n/a" if entry["mean_error"] is None else f"{entry['mean_error']:.1f}"
    return f"{error} ({entry['missed']}/{entry['boundaries']} missed)" if entry["missed"] else error


def format_scores(scores: dict) -> str:
    """The score table: one row for the transfer, one for relative time alone."""
    phases = list(scores["transfer"]["boundary_error"])
    header = ["", "frame accuracy", *(f"entering {phase} (frames)" for phase in phases)]
    rows = [header]
    for title, key in (("alignment transfer", "transfer"), ("relative time alone", "relative_time")):
        result = scores[key]
        accuracy = "n/a" if result["frame_accuracy"] is None else f"{result['frame_accuracy']:.4f}"
        rows.append([title, accuracy, *(_boundary_cell(result["boundary_error"][p]) for p in phases)])
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    accuracies = [scores[key]["frame_accuracy"] for key in ("transfer", "relative_time")]
    if None not in accuracies and accuracies[0] - accuracies[1] < TIME_ONLY_MARGIN:
        lines.append(f"warning: alignment gains {accuracies[0] - accuracies[1]:+.4f} frame accuracy over relative time "
                     f"alone: the embeddings pair frames by position more than by content")
    return (f"{scores['videos']} videos, {scores['labelled_frames']} hand-labelled frames; boundary error: mean "
            f"distance to the nearest transferred boundary into that phase\n" + "\n".join(lines))


def _write(staging: Path, labelled: list[Labelled], dataset: VideoDataset, method: str, references: int | None,
           spread: dict, scores: dict | None) -> None:
    """Write the dataset and the summary into the (empty) staging folder of the output."""
    classes = dataset.classes
    names = [record.name for record in dataset.records]
    (staging / "videos").mkdir()
    for item in labelled:
        suffix = "" if item.source.is_dir() else item.source.suffix
        place_video(item.source, staging / "videos" / f"{item.name}{suffix}")
        frames = np.arange(len(item.labels))
        cells = [_label_cell(label, classes) for label in item.labels.tolist()]
        write_csv(staging / "labels" / f"{item.name}.csv", ("frame", "label"), list(zip(frames, cells)))
        write_csv(staging / "confidence" / f"{item.name}.csv", ("frame", "label", "confidence"),
                  [(f, c, f"{p:.4f}") for f, c, p in zip(frames, cells, item.confidence)])
    if classes is not None:
        write_text(staging / "classes.txt", "".join(f"{name}\n" for name in classes))
    write_split(staging, SPLIT_NAME, [item.name for item in labelled])
    summary = {"reference": str(dataset.root.resolve()), "split": dataset.split, "method": method,
               "references": references, "spread": spread, "scores": scores,
               "videos": {item.name: {"source": str(item.source.resolve()),
                                      "references": {names[i]: round(float(cost), 6)
                                                     for i, cost in zip(item.references, item.costs)},
                                      "mean_confidence": float(item.confidence.mean())}
                          for item in labelled}}
    write_text(staging / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
