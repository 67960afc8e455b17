"""TCC, TCN and frame classification against plain-loop forms of the published code, and their clip sampling."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mvformer.data.objective_sampling import sample_tcn_pairs, sample_uniform_views
from mvformer.errors import MVFormerError
from mvformer.losses.classification import FrameClassifier, frame_classification_loss
from mvformer.losses.tcc import TCCConfig, tcc_loss
from mvformer.losses.tcn import TCNConfig, tcn_loss

TCC_VARIANTS = [TCCConfig(loss_type=kind, similarity_type=similarity)
                for kind in ("regression_mse_var", "regression_mse", "regression_huber", "classification")
                for similarity in ("l2", "cosine")]


def published_similarity(a, b, config):
    """get_scaled_similarity of two embeddings: dot product or negative squared distance, / E / temperature."""
    value = torch.dot(a, b) if config.similarity_type == "cosine" else -torch.sum((a - b) ** 2)
    return value / a.shape[0] / config.temperature


def published_tcc_rows(embs, steps, seq_lens, config):
    """Per start frame terms of the published TCC (algos/tcc.py), pair by pair and frame by frame.

    embs: list of (T_i, E) sequences (T_i may differ: a padded sequence enters with its real frames only).
    Regression rows follow regression_loss; classification rows are the TCC paper's cross-entropy.
    """
    rows = []
    for i, first in enumerate(embs):
        for j, second in enumerate(embs):
            if i == j:
                continue
            frames = first.shape[0]
            times = steps[i].double() / (seq_lens[i] if config.normalize_indices else 1)
            smooth = config.label_smoothing
            for t in range(frames):
                forward = torch.stack([published_similarity(first[t], second[k], config) for k in range(second.shape[0])])
                neighbour = torch.softmax(forward, 0) @ second
                logits = torch.stack([published_similarity(neighbour, first[k], config) for k in range(frames)])
                labels = torch.tensor([1 - smooth if k == t else smooth / (frames - 1) for k in range(frames)],
                                      dtype=logits.dtype)
                if config.loss_type == "classification":
                    rows.append(-torch.sum(labels * torch.log_softmax(logits, 0)))
                    continue
                beta = torch.softmax(logits, 0)
                true_time, pred_time = torch.sum(times * labels), torch.sum(times * beta)
                error = pred_time - true_time
                if config.loss_type == "regression_mse":
                    rows.append(error ** 2)
                elif config.loss_type == "regression_huber":  # SmoothL1 with beta huber_delta
                    delta = config.huber_delta
                    rows.append(0.5 * error ** 2 / delta if abs(error) < delta else abs(error) - 0.5 * delta)
                else:
                    log_var = torch.log(torch.sum((times - pred_time) ** 2 * beta))
                    rows.append(torch.exp(-log_var) * error ** 2 + config.variance_lambda * log_var)
    return torch.stack(rows)


def published_tcn_video(embs, reg_lambda):
    """single_sequence_loss of algos/tcn.py for one interleaved clip (2K, E), anchor by anchor."""
    anchors, positives = embs[0::2], embs[1::2]
    count = anchors.shape[0]
    total = 0.0
    for k in range(count):
        scores = torch.stack([torch.dot(anchors[k], positives[m]) for m in range(count)])
        total = total - torch.log(torch.exp(scores[k]) / torch.exp(scores).sum())
    norms = sum(torch.dot(a, a) for a in anchors) / count + sum(torch.dot(p, p) for p in positives) / count
    return total / count + 0.25 * reg_lambda * norms


def random_batch(seed, sequences=3, frames=5, dim=3, padded=True):
    gen = torch.Generator().manual_seed(seed)
    embs = torch.randn(sequences, frames, dim, generator=gen, dtype=torch.float64)
    seq_lens = torch.randint(frames, 3 * frames, (sequences,), generator=gen)
    steps = torch.sort(torch.stack([torch.randperm(int(n), generator=gen)[:frames] for n in seq_lens]), -1).values
    masks = torch.ones(sequences, frames, dtype=torch.bool)
    if padded:
        masks[0, -2:] = False
        masks[2, -1] = False
    return embs, steps, seq_lens, masks


@pytest.mark.parametrize("config", TCC_VARIANTS, ids=lambda c: f"{c.loss_type}-{c.similarity_type}")
@pytest.mark.parametrize("padded", [False, True])
def test_tcc_equals_published_loop_form(config, padded):
    embs, steps, seq_lens, masks = random_batch(1, padded=padded)
    expected = published_tcc_rows([e[m] for e, m in zip(embs, masks)], [s[m] for s, m in zip(steps, masks)],
                                  seq_lens.double(), config).mean()
    assert tcc_loss(embs, steps, seq_lens, masks, config).item() == pytest.approx(expected.item(), rel=1e-9)


@pytest.mark.parametrize("config", [
    TCCConfig(loss_type="regression_mse", normalize_indices=False, label_smoothing=0.0, temperature=0.5),
    TCCConfig(loss_type="regression_huber", normalize_indices=False, huber_delta=2.0, temperature=0.3),
    TCCConfig(loss_type="regression_mse_var", variance_lambda=0.5, label_smoothing=0.3),
], ids=["raw-indices", "huber-delta", "variance-lambda"])
def test_tcc_options_reach_the_value(config):
    embs, steps, seq_lens, masks = random_batch(2, padded=False)
    expected = published_tcc_rows(list(embs), list(steps), seq_lens.double(), config).mean()
    assert tcc_loss(embs, steps, seq_lens, masks, config).item() == pytest.approx(expected.item(), rel=1e-9)


def test_tcc_hand_computation_two_frames():
    # Two 1-d sequences of two frames, cosine (dot) similarity, temperature 1, no smoothing, raw indices 0 and 1.
    embs = torch.tensor([[[1.0], [2.0]], [[0.0], [3.0]]], dtype=torch.float64)
    config = TCCConfig(loss_type="regression_mse", similarity_type="cosine", temperature=1.0, label_smoothing=0.0,
                       normalize_indices=False)
    squared_errors = []
    for start, other in ((embs[0, :, 0].tolist(), embs[1, :, 0].tolist()),
                         (embs[1, :, 0].tolist(), embs[0, :, 0].tolist())):
        for t, u in enumerate(start):
            weights = [math.exp(u * v) for v in other]
            neighbour = sum(w * v for w, v in zip(weights, other)) / sum(weights)
            back = [math.exp(neighbour * v) for v in start]
            squared_errors.append((back[1] / sum(back) - t) ** 2)  # predicted time = P(frame 1)
    loss = tcc_loss(embs, torch.tensor([[0, 1], [0, 1]]), torch.tensor([2, 2]), torch.ones(2, 2), config)
    assert loss.item() == pytest.approx(sum(squared_errors) / 4, rel=1e-12)


def test_tcc_identical_sequences_sharp_temperature_is_zero():
    frames = 3 * torch.eye(6, dtype=torch.float64)  # six far-apart frame embeddings
    embs = torch.stack([frames, frames])
    steps = torch.arange(6).expand(2, 6)
    config = TCCConfig(loss_type="regression_mse", temperature=0.01, label_smoothing=0.0)
    assert tcc_loss(embs, steps, torch.tensor([6, 6]), torch.ones(2, 6), config).item() < 1e-12


@pytest.mark.parametrize("config", TCC_VARIANTS[::2], ids=lambda c: c.loss_type)
def test_tcc_padding_is_invisible_and_gets_no_gradient(config):
    embs, steps, seq_lens, _ = random_batch(3, frames=4, padded=False)
    padded_embs = torch.cat([embs, 50 * torch.randn(3, 2, 3, dtype=torch.float64)], dim=1).requires_grad_()
    padded_steps = torch.cat([steps, steps[:, -1:].expand(3, 2)], dim=1)
    masks = torch.arange(6).expand(3, 6) < 4
    loss = tcc_loss(padded_embs.view(3, 1, 6, 3), padded_steps.view(3, 1, 6), seq_lens.view(3, 1),
                    masks.view(3, 1, 6), config)
    assert loss.item() == pytest.approx(tcc_loss(embs, steps, seq_lens, torch.ones(3, 4), config).item(), rel=1e-9)
    loss.backward()
    assert torch.isfinite(padded_embs.grad).all()
    assert padded_embs.grad[:, 4:].abs().max() == 0
    assert padded_embs.grad[:, :4].abs().max() > 0


@pytest.mark.parametrize("loss_type", ["regression_mse_var", "classification"])
def test_tcc_gradients_finite_float32_padded_two_views(loss_type):
    gen = torch.Generator().manual_seed(4)
    embs = F.normalize(torch.randn(2, 2, 16, 8, generator=gen), dim=-1).requires_grad_()
    steps = torch.sort(torch.randint(0, 40, (2, 2, 16), generator=gen), -1).values
    masks = torch.ones(2, 2, 16)
    masks[0, 1, 10:] = 0
    masks[1, 0, 13:] = 0
    loss = tcc_loss(embs, steps, torch.full((2, 2), 40), masks, TCCConfig(loss_type=loss_type))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(embs.grad).all()


def test_tcc_rejects_bad_settings():
    with pytest.raises(MVFormerError, match="loss_type"):
        TCCConfig(loss_type="regression")
    with pytest.raises(MVFormerError, match="similarity_type"):
        TCCConfig(similarity_type="dot")
    with pytest.raises(MVFormerError, match="label_smoothing"):
        TCCConfig(label_smoothing=1.0)
    with pytest.raises(MVFormerError, match="two sequences"):
        tcc_loss(torch.randn(1, 4, 3), torch.zeros(1, 4), torch.tensor([4]), torch.ones(1, 4))


def test_tcn_equals_published_loop_form():
    gen = torch.Generator().manual_seed(5)
    embs = torch.randn(3, 8, 4, generator=gen, dtype=torch.float64)
    expected = torch.stack([published_tcn_video(video, 0.3) for video in embs]).mean()
    loss = tcn_loss(embs, torch.ones(3, 8), TCNConfig(reg_lambda=0.3))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)


def test_tcn_hand_computation():
    # One clip: anchors a0=(1,0), a1=(0,1); positives p0=(2,0), p1=(0,1); reg_lambda 0.
    embs = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    first = -math.log(math.exp(2) / (math.exp(2) + math.exp(0)))
    second = -math.log(math.exp(1) / (math.exp(0) + math.exp(1)))
    assert tcn_loss(embs, torch.ones(4), TCNConfig(reg_lambda=0.0)).item() == pytest.approx((first + second) / 2)
    regularised = tcn_loss(embs, torch.ones(4), TCNConfig(reg_lambda=0.1)).item()
    assert regularised == pytest.approx((first + second) / 2 + 0.25 * 0.1 * (1.0 + 2.5), rel=1e-6)


def test_tcn_masked_pairs_are_invisible_and_get_no_gradient():
    gen = torch.Generator().manual_seed(6)
    real = torch.randn(2, 6, 4, generator=gen, dtype=torch.float64)  # 3 pairs per video
    padded = torch.cat([real[:, :2], 9 * torch.randn(2, 2, 4, generator=gen, dtype=torch.float64), real[:, 2:]],
                       dim=1).requires_grad_()
    masks = torch.ones(2, 8)
    masks[:, 3] = 0  # the positive of the second pair lies before frame 0
    loss = tcn_loss(padded.view(2, 1, 8, 4), masks.view(2, 1, 8))
    assert loss.item() == pytest.approx(tcn_loss(real, torch.ones(2, 6)).item(), rel=1e-12)
    loss.backward()
    assert torch.isfinite(padded.grad).all()
    assert padded.grad[:, 2:4].abs().max() == 0
    with pytest.raises(MVFormerError, match="even"):
        tcn_loss(real[:, :5], torch.ones(2, 5))


def test_tcn_video_without_pairs_is_left_out_of_the_mean():
    gen = torch.Generator().manual_seed(7)
    embs = torch.randn(2, 4, 3, generator=gen)
    masks = torch.tensor([[1.0, 1, 1, 1], [1, 0, 1, 0]])
    assert tcn_loss(embs, masks).item() == pytest.approx(tcn_loss(embs[:1], masks[:1]).item())
    with pytest.raises(MVFormerError, match="no real"):
        tcn_loss(embs[1:], masks[1:])


def test_classification_matches_per_frame_sum():
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(2, 2, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[[0, 3, -1], [2, 2, 1]], [[-1, -1, 0], [1, 0, 3]]])
    masks = torch.tensor([[[1, 1, 1], [1, 1, 0]], [[1, 1, 1], [1, 0, 0]]])
    total, count = 0.0, 0
    for index in np.ndindex(*labels.shape):
        if labels[index] >= 0 and masks[index]:
            row = logits[index].tolist()
            total += math.log(sum(math.exp(v) for v in row)) - row[labels[index]]
            count += 1
    loss = frame_classification_loss(logits, labels, masks)
    assert loss.item() == pytest.approx(total / count, rel=1e-12)
    loss.backward()
    assert logits.grad[1, 0, 0].abs().max() == 0 and logits.grad[0, 1, 2].abs().max() == 0
    assert frame_classification_loss(logits, torch.full_like(labels, -1), masks).item() == 0


def test_frame_classifier_is_dropout_then_linear():
    head = FrameClassifier(5, 3).eval()
    embs = torch.randn(2, 4, 5)
    assert torch.allclose(head(embs), embs @ head.layers[1].weight.T + head.layers[1].bias)
    assert head.layers[0].p == 0.1


def test_uniform_views_sorted_distinct_and_uniform():
    gen = np.random.default_rng(0)
    clip = sample_uniform_views(30, 10, gen, num_views=2)
    assert clip.indices.shape == (2, 10) and clip.masks.all() and clip.seq_len == 30
    assert all(len(set(row)) == 10 and (np.diff(row) > 0).all() for row in clip.indices)
    counts = np.bincount(np.concatenate([sample_uniform_views(30, 10, gen).indices[0] for _ in range(3000)]),
                         minlength=30)
    assert np.abs(counts / 3000 - 10 / 30).max() < 0.04  # each frame drawn with probability T / L
    short = sample_uniform_views(4, 6, gen)
    assert short.indices.tolist() == [[0, 1, 2, 3, 3, 3]] and short.masks.tolist() == [[1, 1, 1, 1, 0, 0]]
    assert sample_uniform_views(30, 10, np.random.default_rng(5)).indices.tolist() == \
        sample_uniform_views(30, 10, np.random.default_rng(5)).indices.tolist()


def test_tcn_pairs_interleave_anchor_and_earlier_positive():
    gen = np.random.default_rng(1)
    clips = [sample_tcn_pairs(40, 12, gen, positive_window=5) for _ in range(2000)]
    anchors = np.stack([c.indices[0, 0::2] for c in clips])
    positives = np.stack([c.indices[0, 1::2] for c in clips])
    masks = np.stack([c.masks[0] for c in clips])
    assert (np.diff(anchors, axis=1) > 0).all()
    real = masks[:, 1::2] == 1
    gaps = (anchors - positives)[real]
    assert gaps.min() == 1 and gaps.max() == 5
    assert np.abs(np.bincount(gaps)[1:] / gaps.size - 0.2).max() < 0.02
    assert (positives[~real] == 0).all() and (anchors[~real] < 5).all()  # a positive before frame 0 is masked
    short = sample_tcn_pairs(3, 8, np.random.default_rng(2), positive_window=1)
    assert short.indices.tolist() == [[0, 0, 1, 0, 2, 1, 2, 2]]
    assert short.masks.tolist() == [[1, 0, 1, 1, 1, 1, 0, 1]]
    with pytest.raises(MVFormerError, match="even"):
        sample_tcn_pairs(40, 7, gen)
