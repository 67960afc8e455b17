"""FineGym's phase-classification probe: a linear layer trained with SGD on frame embeddings (PROTOCOL.md).

Unlike the logistic-regression probe, it is trained in mini-batches of whole videos, as in the benchmark, and
its last-epoch weights are used (no model selection on validation data).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from mvformer.errors import MVFormerError


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
