"""Time-Contrastive Network loss (Sermanet et al., 2018) in the single-view n-pairs form of the published code
(CARL_MVF/algos/tcn.py): within one video, anchor k must pick its own positive (a frame at most
`positive_window` frames earlier, drawn by the sampler) among the positives of all the video's anchors.

The published loss has no margin and no triplets: the negatives are the other anchors' positives, and the only
other term is an L2 penalty on the embeddings. One deliberate difference, inert on an unpadded clip: an
anchor/positive pair with a padded frame (a positive before frame 0, an anchor past the video's end) is neither
an anchor nor a negative (the published loss ignores masks and so uses clamped duplicate frames).
"""


import torch

from mvformer.config import TCNConfig
from mvformer.data.objective_sampling import check_tcn_length
from mvformer.errors import MVFormerError


def tcn_loss(embs: torch.Tensor, masks: torch.Tensor, config: TCNConfig = TCNConfig()) -> torch.Tensor:
    """N-pairs TCN loss per video, averaged over the videos that hold at least one real pair.

    embs (..., 2K, E) with frames interleaved anchor, positive, anchor, positive, ... as the published sampler
    lays them out (mvformer.data.objective_sampling.sample_tcn_pairs); masks (..., 2K) 1 for real frames.
    Per video: cross-entropy of the anchor-by-positive dot products with the diagonal as target, averaged over
    real pairs, plus 0.25 * reg_lambda * (mean squared norm of the anchors + that of the positives).
    """
    embs = embs.reshape(-1, *embs.shape[-2:])  # (N, 2K, E)
    masks = masks.reshape(-1, masks.shape[-1]).bool()  # (N, 2K)
    check_tcn_length(embs.shape[1], "the clip's length")
    anchors, positives = embs[:, 0::2], embs[:, 1::2]  # (N, K, E) each
    pairs = masks[:, 0::2] & masks[:, 1::2]  # (N, K)
    weights = pairs.to(embs.dtype)
    counts = weights.sum(-1)  # (N,)

    logits = (anchors @ positives.transpose(1, 2)).masked_fill(~pairs[:, None, :], torch.finfo(embs.dtype).min)
    cross_entropy = -torch.log_softmax(logits, dim=-1).diagonal(dim1=1, dim2=2)  # (N, K)
    squared_norms = anchors.square().sum(-1) + positives.square().sum(-1)  # (N, K)
    per_video = ((cross_entropy + 0.25 * config.reg_lambda * squared_norms) * weights).sum(-1) / counts.clamp_min(1)
    used = counts > 0
    if not used.any():
        raise MVFormerError("TCN batch holds no real anchor/positive pair (every clip is padding)")
    return per_video[used].mean()
