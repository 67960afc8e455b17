"""The time-only row: frame embeddings made from relative time alone, scored like a model's.

Frame t of a video of L frames is embedded as the model's own sinusoidal time code at that position
(mvformer.model.temporal.sinusoidal_time_encoding: positions spread evenly over the training clip length, i.e.
relative time t / (L - 1)), L2-normalised as model embeddings are. Nothing is trained and no pixel is seen, so every
score this row reaches is reachable by knowing where in the video a frame lies; a model's row means something only
by how far it rises above this one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch.nn.functional as F

from mvformer.config import DataConfig
from mvformer.evaluation.metrics import TASKS, evaluate_embeddings
from mvformer.model.mvformer import MVFormer
from mvformer.model.temporal import sinusoidal_time_encoding

TIME_ONLY_LABEL = "time only (t/L through the sinusoidal code, untrained)"
# Without a model (evaluate-embeddings): the default training clip length, which the code spreads positions over.
DEFAULT_TRAIN_LEN = DataConfig().clip_len


def time_only_embeddings(lengths: Sequence[int], dim: int, train_len: int = DEFAULT_TRAIN_LEN) -> list[np.ndarray]:
    """One float32 (L, dim) array per video length: the L2-normalised sinusoidal code of relative time."""
    return [F.normalize(sinusoidal_time_encoding(int(length), dim, train_len), dim=1).numpy() for length in lengths]


def model_time_only_embeddings(model: MVFormer, lengths: Sequence[int]) -> list[np.ndarray]:
    """Time-only embeddings in a model's own code: its hidden size and training clip length."""
    return time_only_embeddings(lengths, model.config.model.hidden_size, model.config.data.clip_len)


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
