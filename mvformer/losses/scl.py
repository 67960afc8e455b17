"""Sequence contrastive loss (SCL, Chen et al., CVPR 2022), numerically identical to the published form."""

import torch
import torch.nn.functional as F

PADDED_PAIR_WEIGHT = 1e-6  # denominator weight of any pair touching a padded frame (published value)
LOG_EPSILON = 1e-6  # added to the softmax probabilities inside the log (published value)
MASKED_DISTANCE = 1e6  # time distance given to pairs touching a padded frame, so their target is 0


def _nan_to_zero(values: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isnan(values), torch.zeros_like(values), values)


def sequence_contrastive_loss(
    embs: torch.Tensor,
    steps: torch.Tensor,
    seq_lens: torch.Tensor,
    masks: torch.Tensor,
    temperature: float = 0.1,
    variance: float = 10.0,
) -> torch.Tensor:
    """SCL between the views of each video ("single_noself" negatives, Gaussian targets).

    embs (B, V, T, D) L2-normalised; steps (B, V, T) frame indices in the source video; seq_lens (B, V)
    source video lengths; masks (B, V, T) 1 for real frames, 0 for padding. Each frame i is a query
    over the frames j of the *other* views of its own video; its target is a Gaussian in
    |t_i * L_j / L_i - t_j| (variance `variance`) normalised to sum 1, and the loss is
    KL(target || softmax(cos / temperature)), summed over valid frames and divided by their number.
    The published quirks are kept on purpose (they change the value): probabilities get +1e-6 inside
    the log, and every pair touching a padded frame keeps weight 1e-6 in the softmax denominator,
    even across videos or within a view.
    """
    batch, views, frames, dim = embs.shape
    flat_embs = embs.reshape(-1, dim)  # (M, D), M = B * V * T
    flat_steps = steps.reshape(-1)  # (M,)
    flat_lens = seq_lens.reshape(batch, views, 1).expand(batch, views, frames).reshape(-1).float()  # (M,)
    flat_masks = masks.reshape(-1)  # (M,)
    pair_masks = flat_masks[:, None] * flat_masks[None, :]  # (M, M)

    logits = flat_embs @ flat_embs.T / temperature  # (M, M)
    distance = torch.abs(flat_steps[:, None] / flat_lens[:, None] * flat_lens[None, :] - flat_steps[None, :])
    distance = distance.masked_fill(pair_masks == 0, MASKED_DISTANCE)  # (M, M)

    video_id = torch.arange(batch, device=embs.device).repeat_interleave(views * frames)  # (M,)
    view_id = torch.arange(views, device=embs.device).repeat_interleave(frames).repeat(batch)  # (M,)
    other_view = (video_id[:, None] == video_id[None, :]) & (view_id[:, None] != view_id[None, :])  # (M, M)

    weight = other_view.to(logits.dtype).masked_fill(pair_masks == 0, PADDED_PAIR_WEIGHT)  # (M, M)
    gaussian = torch.exp(-torch.square(distance) / (2 * variance)).to(logits.dtype) * other_view
    target = _nan_to_zero(gaussian / gaussian.sum(dim=1, keepdim=True))  # (M, M), rows sum to 1 or 0

    exp_logits = torch.exp(logits)
    denominator = torch.sum(weight * exp_logits, dim=1, keepdim=True)  # (M, 1)
    log_probs = torch.log(_nan_to_zero(exp_logits / denominator) + LOG_EPSILON)
    loss = F.kl_div(log_probs, target, reduction="none")  # (M, M)
    return torch.sum(loss * pair_masks) / torch.sum(masks)
