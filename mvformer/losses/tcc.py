"""Temporal Cycle-Consistency (TCC, Dwibedi et al., CVPR 2019): deterministic cycle-back over every ordered pair
of sequences in a batch, in the form of the published PyTorch code (CARL_MVF/algos/tcc.py).

Published facts kept because they change the value: similarities are divided by the embedding size as well as
the temperature; "cosine" is the plain dot product (no normalisation); label smoothing also shifts the regression
target (true time = (1 - s) * t_i + s * mean of the other frames' times); "regression_huber" is SmoothL1 with
beta 1 (the published HUBER_DELTA 0.1 is read but unused, hence `huber_delta` = 1 here). Published CYCLE_LENGTH
(2), STOCHASTIC_MATCHING (false) and FRACTION (1.0) are read by no code path, so only the deterministic 2-cycle
exists. Two deliberate differences, both inert on an unpadded batch: padded frames are never matched nor used
as cycle starts (the published loss ignores masks), and the classification form is the TCC paper's
cross-entropy of log_softmax(logits) (the published port hands raw logits to KLDivLoss; no published config
uses this form). The published TCC trains unnormalised embeddings (L2_NORMALIZE false): on unit vectors the l2
logits span at most 4 / E / temperature (0.31 at E = 128), which leaves the cycle-back nearly uniform.
"""


import torch
import torch.nn.functional as F

from mvformer.config import TCCConfig
from mvformer.errors import MVFormerError

def scaled_similarity(queries: torch.Tensor, keys: torch.Tensor, similarity_type: str,
                      temperature: float) -> torch.Tensor:
    """queries (P, T, E), keys (P, S, E) -> (P, T, S) similarities / E / temperature, as published."""
    dots = queries @ keys.transpose(1, 2)  # (P, T, S)
    if similarity_type == "l2":
        dots = 2 * dots - queries.square().sum(-1, keepdim=True) - keys.square().sum(-1)[:, None, :]
    return dots / queries.shape[-1] / temperature


def _masked_logits(logits: torch.Tensor, column_masks: torch.Tensor) -> torch.Tensor:
    """Give padded columns the lowest finite logit: softmax weight 0 without NaN, even for a fully padded row."""
    return logits.masked_fill(~column_masks[:, None, :], torch.finfo(logits.dtype).min)


def cycle_back_logits(embs: torch.Tensor, masks: torch.Tensor,
                      config: TCCConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Cycle every frame of sequence i through sequence j and back, for all ordered pairs i != j.

    embs (N, T, E), masks (N, T) bool -> logits (P, T, T) over the frames of i (padded columns at the lowest
    float), and each pair's start sequence index (P,); P = N (N - 1) pairs, start-major order.
    """
    count = embs.shape[0]
    first, second = torch.nonzero(~torch.eye(count, dtype=torch.bool, device=embs.device), as_tuple=True)
    starts, others = embs[first], embs[second]  # (P, T, E) each
    forward = _masked_logits(scaled_similarity(starts, others, config.similarity_type, config.temperature),
                             masks[second])  # (P, T, T)
    soft_neighbours = torch.softmax(forward, dim=-1) @ others  # (P, T, E)
    backward = scaled_similarity(soft_neighbours, starts, config.similarity_type, config.temperature)
    return _masked_logits(backward, masks[first]), first


def cycle_back_labels(masks: torch.Tensor, label_smoothing: float, dtype: torch.dtype) -> torch.Tensor:
    """masks (P, T) bool of the start sequences -> (P, T, T) targets: 1 - s at the start frame, s spread evenly
    over the other real frames (the published smoothing, s / (T - 1) each on an unpadded sequence)."""
    frames = masks.shape[-1]
    eye = torch.eye(frames, dtype=torch.bool, device=masks.device)
    others = masks.sum(-1).clamp_min(2).sub(1).to(dtype)[:, None, None]  # (P, 1, 1) real frames but one
    spread = (masks[:, None, :] & ~eye).to(dtype) * (label_smoothing / others)  # (P, T, T)
    return spread + eye.to(dtype) * (1 - label_smoothing)


def tcc_loss(embs: torch.Tensor, steps: torch.Tensor, seq_lens: torch.Tensor, masks: torch.Tensor,
             config: TCCConfig = TCCConfig()) -> torch.Tensor:
    """TCC over every ordered pair of the batch's sequences, averaged over the real start frames of all pairs.

    embs (..., T, E); steps (..., T) frame positions in the source video; seq_lens (...) source video lengths;
    masks (..., T) 1 for real frames. Leading dimensions are flattened into N sequences, as the published code
    does with views (so (B, 2, T, E) aligns both views of a video and all views of the other videos); N >= 2.
    """
    embs = embs.flatten(0, -3)  # (N, T, E)
    masks = masks.flatten(0, -2).bool()  # (N, T)
    if embs.shape[0] < 2:
        raise MVFormerError(f"TCC needs at least two sequences per batch to align, got {embs.shape[0]}")
    logits, first = cycle_back_logits(embs, masks, config)  # (P, T, T)
    starts = masks[first]  # (P, T): only real frames start a cycle; the R such rows are kept
    labels = cycle_back_labels(starts, config.label_smoothing, logits.dtype)[starts]  # (R, T)
    logits = logits[starts]  # (R, T)

    if config.loss_type == "classification":
        return -(labels * torch.log_softmax(logits, dim=-1)).sum(-1).mean()

    times = steps.flatten(0, -2)[first].to(logits.dtype)  # (P, T)
    if config.normalize_indices:
        times = times / seq_lens.reshape(-1)[first].to(logits.dtype)[:, None]
    times = times[:, None, :].expand(-1, starts.shape[1], -1)[starts]  # (R, T), the start sequence's
    beta = torch.softmax(logits, dim=-1)  # (R, T)
    true_time = (labels * times).sum(-1)  # (R,)
    pred_time = (beta * times).sum(-1)  # (R,)
    if config.loss_type == "regression_mse":
        return torch.square(true_time - pred_time).mean()
    if config.loss_type == "regression_huber":
        return F.smooth_l1_loss(pred_time, true_time, beta=config.huber_delta)
    # regression_mse_var; the published code asserts variance > 0, floored here at the smallest normal float
    variance = (beta * torch.square(times - pred_time[:, None])).sum(-1)  # (R,)
    log_variance = torch.log(variance.clamp_min(torch.finfo(variance.dtype).tiny))
    return torch.mean(torch.exp(-log_variance) * torch.square(true_time - pred_time)
                      + config.variance_lambda * log_variance)
