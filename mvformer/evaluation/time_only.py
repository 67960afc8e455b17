"""The time-only row: frame embeddings made from relative time alone, scored like a model's.

Frame t of a video of L frames is embedded as the model's own sinusoidal time code at that position
(mvformer.model.temporal.sinusoidal_time_encoding: positions spread evenly over the training clip length, i.e.
relative time t / (L - 1)), L2-normalised as model embeddings are. Nothing is trained and no pixel is seen, so every
score this row reaches is reachable by knowing where in the video a frame lies; a model's row means something only
by how far it rises above this one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch.nn.functional as F

from mvformer.config import DataConfig
from mvformer.evaluation.embeddings_io import dataset_names, load_embeddings
from mvformer.evaluation.metrics import TASKS, evaluate_embeddings, mean_of_metrics
from mvformer.model.mvformer import MVFormer
from mvformer.model.temporal import sinusoidal_time_encoding

TIME_ONLY_LABEL = "time only (sinusoidal code of t/L, untrained)"
# Without a model (evaluate-embeddings): the default training clip length, which the code spreads positions over.
DEFAULT_TRAIN_LEN = DataConfig().clip_len
# A model whose every metric stays within this of the time-only row has learned little beyond time.
TIME_ONLY_MARGIN = 0.02


def time_only_embeddings(lengths: Sequence[int], dim: int, train_len: int = DEFAULT_TRAIN_LEN) -> list[np.ndarray]:
    """One float32 (L, dim) array per video length: the L2-normalised sinusoidal code of relative time."""
    return [F.normalize(sinusoidal_time_encoding(int(length), dim, train_len), dim=1).numpy() for length in lengths]


def model_time_only_embeddings(model: MVFormer, lengths: Sequence[int]) -> list[np.ndarray]:
    """Time-only embeddings in a model's own code: its hidden size and training clip length."""
    return time_only_embeddings(lengths, model.model_cfg.hidden_size, model.train_len)


def time_only_metrics(train_labels: Sequence[np.ndarray], val_labels: Sequence[np.ndarray], num_classes: int,
                      dim: int, train_len: int = DEFAULT_TRAIN_LEN, fractions: Sequence[float] = (0.1, 0.5, 1.0),
                      ks: Sequence[int] = (5, 10, 15), stride: int = 1, tasks: Sequence[str] = TASKS,
                      classifier: str = "logistic") -> dict:
    """`evaluate_embeddings` of time-only embeddings of videos with these per-frame labels (one array per video;
    their lengths are the videos' lengths): the same metrics, on the same frames, as the model's row."""
    return evaluate_embeddings(time_only_embeddings([len(v) for v in train_labels], dim, train_len), train_labels,
                               time_only_embeddings([len(v) for v in val_labels], dim, train_len), val_labels,
                               num_classes=num_classes, fractions=fractions, ks=ks, stride=stride, tasks=tasks,
                               classifier=classifier)


def time_only_files(paths: Sequence[str | Path], dim: int | None = None, train_len: int = DEFAULT_TRAIN_LEN,
                    stride: int = 1, fractions: Sequence[float] = (0.1, 0.5, 1.0), ks: Sequence[int] = (5, 10, 15),
                    tasks: Sequence[str] | None = None, classifier: str = "logistic",
                    num_classes: int | None = None) -> dict:
    """The time-only row of `score_files`: the same .npz files' videos (their lengths and labels), embedded by
    relative time alone with `dim` channels (None: each file's embedding size) over `train_len`; the same
    {"datasets": {name: metrics}, "mean": metrics} structure, num_classes defaulting per file as there."""
    datasets = {}
    for name, path in zip(dataset_names(paths), map(Path, paths)):
        train_embs, train_labels, _, val_labels = load_embeddings(path)
        classes = num_classes or int(max(labels.max() for labels in train_labels + val_labels)) + 1
        datasets[name] = time_only_metrics(train_labels, val_labels, classes, dim or train_embs[0].shape[1],
                                           train_len, fractions, ks, stride, tasks or TASKS, classifier)
    return {"datasets": datasets, "mean": mean_of_metrics(list(datasets.values()))}


def largest_gain(model: dict, time_only: dict) -> float | None:
    """The largest amount by which a model's metric exceeds the time-only row's, over the metrics both define."""
    gains = []
    for task, value in model.items():
        pairs = value.items() if isinstance(value, dict) else [(None, value)]
        for key, score in pairs:
            baseline = time_only.get(task) if key is None else (time_only.get(task) or {}).get(key)
            if score is not None and baseline is not None:
                gains.append(score - baseline)
    return max(gains) if gains else None


def no_gain_line(model: dict, time_only: dict, margin: float = TIME_ONLY_MARGIN) -> str | None:
    """One line when no metric of the model rises more than `margin` above the time-only row; None otherwise."""
    gain = largest_gain(model, time_only)
    if gain is None or gain >= margin:
        return None
    return (f"warning: no metric rises more than {margin:g} above the time-only row (largest gain {gain:+.4f}): "
            f"the model has learned little beyond where in the video a frame lies")
