"""The phase-classification probes (PROTOCOL.md): the published multinomial logistic regression, and FineGym's linear
layer trained with SGD on frame embeddings.

Unlike the logistic-regression probe, the SGD probe is trained in mini-batches of whole videos, as in the benchmark,
and its last-epoch weights are used (no model selection on validation data).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from mvformer.errors import MVFormerError

# The published probe: LogisticRegression(solver="lbfgs", multi_class="multinomial", max_iter=100000), C = 1.
LOGISTIC_C = 1.0
LOGISTIC_MAX_ITER = 100000


def fit_logistic_probe(features: np.ndarray, classes: np.ndarray) -> LogisticRegression:
    """The published multinomial (softmax) logistic regression of `classes` (frames,) on `features` (frames, D).

    scikit-learn >= 1.7 fits two classes as one sigmoid, whatever the options. A 2-class softmax with logits
    (w0.x + b0, w1.x + b1) and penalty ||W||^2 / 2 has its optimum at w0 = -w1, where the penalty is |w1 - w0|^2 / 4:
    the objective C * sum(log-loss) + |d|^2 / 4 in d = w1 - w0 is half the sigmoid's with 2C. So two classes are
    fitted as a sigmoid with C doubled: the same decision function, hence the same predictions. Two or more classes
    needed (sklearn's own error otherwise). Pass float64 features to fit as published: the scikit-learn the published
    code pins (0.24.2) widens any input of lbfgs to float64, where recent versions (1.9) fit float32 in float32.
    """
    num_classes = np.unique(classes).size
    strength = 2 * LOGISTIC_C if num_classes == 2 else LOGISTIC_C
    return LogisticRegression(C=strength, max_iter=LOGISTIC_MAX_ITER, solver="lbfgs").fit(features, classes)


def train_sgd_linear_probe(
    train_videos: list[tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    epochs: int = 100,
    lr: float = 50.0,
    batch_videos: int = 10,
    momentum: float = 0.9,
    weight_decay: float = 1e-6,
    seed: int = 0,
) -> nn.Linear:
    """Fit nn.Linear(D, num_classes) with cross-entropy on the labelled frames of batches of `batch_videos` videos.

    train_videos: (embeddings (frames, D), labels (frames,)) per video; frames labelled < 0 are ignored and videos
    without labelled frames are skipped. The video order is reshuffled every epoch and the learning rate follows a
    cosine from `lr` towards 0, stepped per epoch; a fixed seed makes the result repeatable.
    """
    videos = []
    for frames, labels in train_videos:
        labelled = labels >= 0
        if labelled.any():
            videos.append((torch.as_tensor(frames[labelled], dtype=torch.float32),  # (labelled frames, D)
                           torch.as_tensor(labels[labelled], dtype=torch.int64)))  # (labelled frames,)
    if not videos:
        raise MVFormerError("train: no labelled frames (every label is < 0)")
    generator = torch.Generator().manual_seed(seed)
    dim = videos[0][0].shape[1]
    probe = nn.Linear(dim, num_classes)
    bound = 1 / math.sqrt(dim)  # nn.Linear's own initial range, drawn from the seeded generator
    with torch.no_grad():
        probe.weight.uniform_(-bound, bound, generator=generator)
        probe.bias.uniform_(-bound, bound, generator=generator)
    optimizer = torch.optim.SGD(probe.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    loss_function = nn.CrossEntropyLoss()
    for _ in range(epochs):
        order = torch.randperm(len(videos), generator=generator).tolist()
        for first in range(0, len(order), batch_videos):
            batch = [videos[index] for index in order[first : first + batch_videos]]
            features = torch.cat([frames for frames, _ in batch])  # (batch frames, D)
            labels = torch.cat([labels for _, labels in batch])  # (batch frames,)
            optimizer.zero_grad()
            loss_function(probe(features), labels).backward()
            optimizer.step()
        schedule.step()
    return probe


@torch.no_grad()
def predict_classes(probe: nn.Linear, features: np.ndarray) -> np.ndarray:
    """The probe's most likely class per frame of `features` (frames, D) -> (frames,) int64."""
    logits = probe(torch.as_tensor(features, dtype=torch.float32))  # (frames, num_classes)
    return logits.argmax(dim=1).numpy()
