"""SCL against a hand computation and against a plain loop form of the published algorithm."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mvformer.losses import sequence_contrastive_loss  # the name the README gives


def published_loop_form(embs, steps, seq_lens, masks, temperature=0.1, variance=10.0):
    """The published computation written out with explicit per-video loops (two views)."""
    batch, views, frames, dim = embs.shape
    flat = embs.reshape(-1, dim)
    flat_steps = steps.reshape(-1)
    lens = seq_lens[:, :, None].expand(batch, views, frames).reshape(-1).float()
    pair = masks.reshape(-1, 1) * masks.reshape(1, -1)
    logits = flat @ flat.T / temperature
    dist = torch.abs(flat_steps.view(-1, 1) / lens.view(-1, 1) * lens.view(1, -1) - flat_steps.view(1, -1))
    dist[pair == 0] = 1e6
    weight = torch.ones_like(logits)
    label = torch.zeros_like(logits)
    gauss = torch.exp(-dist**2 / (2 * variance)).to(logits.dtype)
    for b in range(batch):
        start, mid, end = b * views * frames, b * views * frames + frames, (b + 1) * views * frames
        weight[start:end, :start] = 0
        weight[start:end, end:] = 0
        weight[start:mid, start:mid] = 0
        weight[mid:end, mid:end] = 0
        for rows, cols in ((slice(start, mid), slice(mid, end)), (slice(mid, end), slice(start, mid))):
            block = gauss[rows, cols]
            normalised = block / block.sum(dim=1, keepdim=True)
            normalised[torch.isnan(normalised)] = 0
            label[rows, cols] = normalised
    weight[pair == 0] = 1e-6
    exp_logits = torch.exp(logits)
    probs = exp_logits / torch.sum(weight * exp_logits, dim=1, keepdim=True)
    loss = F.kl_div(torch.log(probs + 1e-6), label, reduction="none")
    return torch.sum(loss * pair) / torch.sum(masks)


def random_case(seed, batch=3, frames=7, dim=5, padded=True):
    gen = torch.Generator().manual_seed(seed)
    embs = F.normalize(torch.randn(batch, 2, frames, dim, generator=gen), dim=-1)
    seq_lens = torch.randint(frames, 4 * frames, (batch, 1), generator=gen).expand(batch, 2).clone()
    steps = torch.sort(torch.randint(0, int(seq_lens.max()), (batch, 2, frames), generator=gen), dim=-1).values
    steps = torch.minimum(steps, seq_lens[:, :, None] - 1)
    masks = torch.ones(batch, 2, frames)
    if padded:
        masks[:, :, -2:] = (torch.rand(batch, 2, 2, generator=gen) > 0.4).float()
    return embs, steps, seq_lens, masks


def test_matches_hand_computation_on_two_frames():
    # One video, two views of two frames each at steps 0 and 1 of a 2-frame video; no padding.
    angles = [0.0, 0.5, 0.2, 1.0]
    vectors = torch.tensor([[math.cos(a), math.sin(a)] for a in angles])
    embs = vectors.view(1, 2, 2, 2)
    steps = torch.tensor([[[0, 1], [0, 1]]])
    loss = sequence_contrastive_loss(embs, steps, torch.tensor([[2, 2]]), torch.ones(1, 2, 2), 0.1, 10.0)

    near, far = 1.0, math.exp(-1 / 20)  # Gaussian of time distance 0 and 1, variance 10
    total = 0.0
    for i in range(4):
        others = [2, 3] if i < 2 else [0, 1]
        cos = [math.cos(angles[i] - angles[j]) for j in others]
        denominator = sum(math.exp(c / 0.1) for c in cos)
        targets = [near, far] if i % 2 == 0 else [far, near]
        targets = [t / sum(targets) for t in targets]
        for target, c in zip(targets, cos):
            total += target * (math.log(target) - math.log(math.exp(c / 0.1) / denominator + 1e-6))
    assert loss.item() == pytest.approx(total / 4, rel=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_equals_published_loop_form_with_padding(seed):
    case = random_case(seed)
    expected = published_loop_form(*case)
    assert sequence_contrastive_loss(*case).item() == pytest.approx(expected.item(), rel=1e-6)


def test_equals_published_form_in_float64_with_other_hyperparameters():
    embs, steps, lens, masks = random_case(7, batch=2, frames=11)
    embs = embs.double()
    expected = published_loop_form(embs, steps, lens, masks.double(), temperature=0.07, variance=4.0)
    got = sequence_contrastive_loss(embs, steps, lens, masks.double(), temperature=0.07, variance=4.0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)


def test_padded_frames_still_weigh_in_the_denominator():
    # The published quirk: a pair touching a padded frame keeps weight 1e-6, even across videos.
    embs, steps, lens, masks = random_case(3, padded=False)
    embs, masks = embs.double(), masks.double()
    masked = masks.clone()
    masked[0, 0, -1] = 0
    embs_moved = embs.clone()
    embs_moved[0, 0, -1] = -embs_moved[0, 0, -1]
    a = sequence_contrastive_loss(embs, steps, lens, masked)
    b = sequence_contrastive_loss(embs_moved, steps, lens, masked)
    assert a.item() != b.item()
    assert abs(a.item() - b.item()) < 1e-4


def test_gradient_pulls_matching_frames_together():
    embs, steps, lens, masks = random_case(1, padded=False)
    embs = embs.clone().requires_grad_(True)
    sequence_contrastive_loss(embs, steps, lens, masks).backward()
    assert torch.isfinite(embs.grad).all() and embs.grad.abs().sum() > 0


def test_aligned_views_give_lower_loss_than_shuffled_ones():
    gen = torch.Generator().manual_seed(0)
    frames = 16
    base = F.normalize(torch.randn(frames, 8, generator=gen), dim=-1)
    steps = torch.arange(frames).expand(1, 2, frames)
    lens = torch.tensor([[frames, frames]])
    masks = torch.ones(1, 2, frames)
    aligned = torch.stack([base, base])[None]
    shuffled = torch.stack([base, base[torch.randperm(frames, generator=gen)]])[None]
    assert sequence_contrastive_loss(aligned, steps, lens, masks) < sequence_contrastive_loss(shuffled, steps, lens, masks)


def test_no_nan_when_a_view_is_mostly_padding():
    embs, steps, lens, masks = random_case(5, padded=False)
    masks[1, 1, 1:] = 0
    assert np.isfinite(sequence_contrastive_loss(embs, steps, lens, masks).item())
