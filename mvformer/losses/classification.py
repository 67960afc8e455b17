"""Supervised per-frame classification, the published fully supervised baseline
(CARL_MVF/algos/classification.py with the Classifier head of models/resnet_c2d.py)."""

import torch
import torch.nn.functional as F
from torch import nn


class FrameClassifier(nn.Module):
    """The published head on the frame embeddings: dropout (FC_DROPOUT_RATE, 0.1) then one linear layer."""

    def __init__(self, embedding_size: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.layers = nn.Sequential(nn.Dropout(dropout), nn.Linear(embedding_size, num_classes))

    def forward(self, embs: torch.Tensor) -> torch.Tensor:
        """embs (..., E) -> logits (..., C)."""
        return self.layers(embs)


def frame_classification_loss(logits: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of per-frame logits (..., C) against labels (...), over real frames with a label >= 0.

    masks (...) 1 for real frames. As published: sum of the cross-entropies over those frames divided by their
    number; a batch with none gives 0 (the published code divides 0 by 0).
    """
    labels = labels.long()
    weights = masks.to(logits.dtype) * (labels >= 0)  # (...)
    cross_entropy = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.clamp_min(0).reshape(-1),
                                    reduction="none").view(labels.shape)
    return (cross_entropy * weights).sum() / weights.sum().clamp_min(1)
