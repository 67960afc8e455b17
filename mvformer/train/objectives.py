"""The training objectives as the loop uses them: what each one compares (`TrainStep`), its loss and the weight
of a rank's share (`objective_loss`), the frames it trains on (`objective_sampler`) and the supervised baseline's
classifier (`objective_head`). The losses themselves are pure functions in mvformer.losses."""

import torch
from torch import nn

from mvformer.config import Config
from mvformer.data.datasets import VideoDataset
from mvformer.data.objective_sampling import check_tcn_length, sample_tcn_pairs, sample_uniform_views
from mvformer.errors import MVFormerError
from mvformer.losses.classification import FrameClassifier, frame_classification_loss
from mvformer.losses.scl import sequence_contrastive_loss
from mvformer.losses.tcc import tcc_loss
from mvformer.losses.tcn import tcn_loss
from mvformer.model.mvformer import MVFormer
from mvformer.train.clips import Batch, Sampler
from mvformer.train.distributed import Ranks


class TrainStep(nn.Module):
    """The differentiable part of one step, as one module so that DDP can wrap it: batch -> what the objective
    compares. SCL: projected, L2-normalised embeddings; TCN: L2-normalised embeddings; TCC: the head's raw
    embeddings; classification: frame logits of a linear layer on them (published L2_NORMALIZE / PROJECTION)."""

    def __init__(self, model: MVFormer, objective: str, classifier: FrameClassifier | None = None):
        super().__init__()
        self.model = model
        self.objective = objective
        self.classifier = classifier

    def forward(self, batch: Batch) -> torch.Tensor:
        """The batch's frames (or cached tokens) -> (B, V, T, E), or frame logits (B, V, T, C)."""
        masks = batch.masks.flatten(0, 1)  # (B * V, T)
        options = {"project": self.objective == "scl", "normalize": self.objective in ("scl", "tcn")}
        if batch.patches is not None:  # float16 tokens read from the feature cache
            embs = self.model.embed_features(batch.patches.flatten(0, 1).float(), batch.cls.flatten(0, 1).float(),
                                             masks, **options)
        else:
            embs = self.model(batch.frames.flatten(0, 1), masks, **options)
        embs = embs.view(*batch.masks.shape, -1)  # (B, V, T, E)
        return self.classifier(embs) if self.classifier is not None else embs


def objective_loss(config: Config, outputs: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The configured objective's loss on this rank's share, and the weight of that share in the global batch
    (valid frames for SCL and TCC, videos holding a real anchor-positive pair for TCN, labelled frames for the
    supervised objective), so that DDP's gradient average is the global batch's gradient."""
    masks = batch.masks.bool()
    objective = config.train.objective
    if objective == "scl":
        loss = sequence_contrastive_loss(outputs, batch.steps, batch.seq_lens, masks, config.loss.temperature,
                                         config.loss.variance)
        return loss, masks.sum()
    if objective == "tcc":
        return tcc_loss(outputs, batch.steps, batch.seq_lens, masks, config.tcc), masks.sum()
    if objective == "tcn":
        pairs = (masks[..., 0::2] & masks[..., 1::2]).flatten(1).any(dim=1)  # (B,): a video with a real pair
        return tcn_loss(outputs, masks, config.tcn), pairs.sum()
    return frame_classification_loss(outputs, batch.labels, masks), (masks & (batch.labels >= 0)).sum()


def objective_sampler(config: Config) -> Sampler | None:
    """The frames each objective trains on (published): SCL two time-augmented views (None: the default);
    TCC and the supervised baseline one view of clip_len sorted distinct frames; TCN clip_len / 2 anchor-positive
    pairs, each positive 1..positive_window frames before its anchor."""
    objective, clip_len = config.train.objective, config.data.clip_len
    if objective in ("tcc", "classification"):
        return lambda length, rng: sample_uniform_views(length, clip_len, rng)
    if objective == "tcn":
        return lambda length, rng: sample_tcn_pairs(length, clip_len, rng, config.tcn.positive_window)
    return None


def objective_head(config: Config, train_set: VideoDataset, ranks: Ranks) -> FrameClassifier | None:
    """The supervised objective's classifier over the training set's phases; checks what each objective needs."""
    objective = config.train.objective
    if objective == "tcc" and config.train.batch_size // ranks.world_size < 2:
        raise MVFormerError(f"train.objective tcc aligns the videos of a batch: train.batch_size "
                            f"({config.train.batch_size}) must give every process at least 2 videos")
    if objective == "tcn":
        check_tcn_length(config.data.clip_len)
    if objective != "classification":
        return None
    if not train_set.labelled or train_set.num_classes is None:
        raise MVFormerError(f"{train_set.root}: train.objective classification needs frame labels in the train split")
    return FrameClassifier(config.model.embedding_size, train_set.num_classes, config.classification.dropout)
