"""Pooling, time encoding, the temporal encoder and the assembled model: shapes, masks, exactness."""

import pytest
import torch

from tolerances import assert_same_maths
from mvformer.config import load_config
from mvformer.model.mvformer import build_model
from mvformer.model.pooling import SpatialTokenPooling, build_pooling
from mvformer.model.temporal import TemporalEncoder, sinusoidal_time_encoding


def straightforward_pooling(pool: SpatialTokenPooling, patches: torch.Tensor) -> torch.Tensor:
    """Keys and values projected for every patch, attention written out by hand."""
    keys, values = pool.key(patches), pool.value(patches)  # (F, P, D)
    scores = torch.einsum("nd,fpd->fnp", pool.query_vectors(), keys) / pool.out_dim**0.5
    return scores.softmax(dim=-1) @ values  # (F, N, D)


def test_pooling_fast_order_equals_straightforward_outputs_and_gradients():
    """The same maths in two orders: compared in float64 to the rounding bound."""
    torch.manual_seed(0)
    pool = SpatialTokenPooling(in_dim=12, num_tokens=3, dim=8).double()
    patches = torch.randn(5, 20, 12, dtype=torch.float64, requires_grad=True)
    # The key bias cannot change a softmax over patches: the fast form does not use it, so it is frozen.
    assert not pool.key.bias.requires_grad
    inputs = [patches, *(p for p in pool.parameters() if p.requires_grad)]
    fast = pool(patches)
    fast_grads = torch.autograd.grad(fast.square().sum(), inputs)
    slow = straightforward_pooling(pool, patches)
    slow_grads = torch.autograd.grad(slow.square().sum(), inputs)
    assert_same_maths(fast, slow, reduction=20 * 12, depth=4)
    for a, b in zip(fast_grads, slow_grads):
        assert_same_maths(a, b, reduction=5 * 20 * 12, depth=8)


def test_pooling_attention_sums_to_one_and_ignores_patch_order():
    torch.manual_seed(1)
    pool = SpatialTokenPooling(in_dim=6, num_tokens=4, dim=16)
    patches = torch.randn(3, 10, 6)
    attention = pool.attention(patches)  # (F, N, P)
    assert attention.shape == (3, 4, 10)
    torch.testing.assert_close(attention.sum(-1), torch.ones(3, 4))
    order = torch.randperm(10)
    pool, patches = pool.double(), patches.double()  # a permuted sum is the same maths: float64, rounding bound
    assert_same_maths(pool(patches[:, order]), pool(patches), reduction=10 * 6, depth=4)
    assert_same_maths(pool.attention(patches[:, order]), pool.attention(patches)[:, :, order], 10 * 6, 4)


def test_late_fusion_and_fixed_width_poolers():
    patches, cls = torch.randn(4, 9, 6), torch.randn(4, 5)
    torch.testing.assert_close(build_pooling("cls", 6, 5, 1, 8)(patches, cls), cls[:, None])
    torch.testing.assert_close(build_pooling("max", 6, 5, 1, 8)(patches, cls), patches.amax(1, keepdim=True))
    torch.testing.assert_close(build_pooling("avg", 6, 5, 1, 8)(patches, cls), patches.mean(1, keepdim=True))
    assert build_pooling("fixed_width", 6, 5, 3, 8)(patches, cls).shape == (4, 3, 8)


def test_time_encoding_values_and_interpolation():
    table = sinusoidal_time_encoding(10, 8)
    assert table.shape == (10, 8)
    assert table[3, 2] == pytest.approx(torch.sin(torch.tensor(3 / 10000 ** (2 / 8))).item(), abs=1e-6)
    assert table[3, 5] == pytest.approx(torch.cos(torch.tensor(3 / 10000 ** (5 / 8))).item(), abs=1e-6)
    torch.testing.assert_close(sinusoidal_time_encoding(10, 8, train_len=10), table)
    longer = sinusoidal_time_encoding(19, 8, train_len=10)  # positions 0, 0.5, 1, ..., 9
    torch.testing.assert_close(longer[::2], table)
    shorter = sinusoidal_time_encoding(4, 8, train_len=10)  # positions 0, 3, 6, 9
    torch.testing.assert_close(shorter, table[[0, 3, 6, 9]])


def test_encoder_ignores_padded_frames():
    torch.manual_seed(2)
    encoder = TemporalEncoder(16, num_layers=2, num_heads=4, ff_dim=32, dropout=0.0, train_len=6).eval()
    tokens = torch.randn(2, 6, 3, 16)
    masks = torch.ones(2, 6)
    masks[0, 4:] = 0
    out = encoder(tokens, masks)
    changed = tokens.clone()
    changed[0, 4:] = torch.randn(2, 3, 16) * 10
    out_changed = encoder(changed, masks)
    torch.testing.assert_close(out[0, :4], out_changed[0, :4])
    torch.testing.assert_close(out[1], out_changed[1])


def test_encoder_attends_across_tokens_and_frames():
    torch.manual_seed(3)
    encoder = TemporalEncoder(16, num_layers=1, num_heads=2, ff_dim=32, dropout=0.0, train_len=4).eval()
    tokens = torch.randn(1, 4, 2, 16)
    changed = tokens.clone()
    changed[0, 3, 1] += torch.randn(16)  # one token of the last frame
    difference = (encoder(tokens) - encoder(changed)).abs().sum(-1)[0]  # (T, N)
    assert (difference > 1e-6).all()  # every token of every frame sees it: joint attention


# The tiny model's longest sum is a 256-wide layer (or the backbone's 192-term patch projection); the tiny
# backbone, the head and the encoder chain about 30 of them, rounded up.
MODEL_REDUCTION, MODEL_DEPTH = 256, 32


def tiny_config(**overrides):
    pairs = [f"{k}={v}" for k, v in overrides.items()]
    return load_config("demo", ["backbone.name=tiny", "data.image_size=32", "data.clip_len=6", *pairs])


@pytest.mark.parametrize("overrides", [
    {},
    {"model.token_id": "encoder", "model.token_reduction": "mean"},
    {"model.token_id": "none", "model.token_reduction": "linear"},
    {"model.token_reduction": "max", "model.time_encoding": "none"},
    {"model.pooling": "cls", "model.num_tokens": 1},
    {"model.pooling": "max", "model.num_tokens": 1},
    {"model.pooling": "fixed_width"},
])
def test_model_shapes_normalisation_and_masks(overrides):
    torch.manual_seed(0)
    model = build_model(tiny_config(**overrides)).eval()
    frames = torch.randn(2, 6, 3, 32, 32)
    masks = torch.ones(2, 6)
    masks[1, 4:] = 0
    embs = model(frames, masks)
    assert embs.shape == (2, 6, 32)
    torch.testing.assert_close(embs.norm(dim=-1), torch.ones(2, 6))
    assert model(frames, masks, project=True).shape == (2, 6, 32)
    changed = frames.clone()
    changed[1, 4:] = torch.randn(2, 3, 32, 32)
    model, changed, frames = model.double(), changed.double(), frames.double()  # the padding is masked out exactly
    assert_same_maths(model(changed, masks)[1, :4], model(frames, masks)[1, :4], MODEL_REDUCTION, MODEL_DEPTH)


def test_batch_items_are_independent():
    torch.manual_seed(0)
    model = build_model(tiny_config()).eval()
    model = model.double()
    frames = torch.randn(3, 6, 3, 32, 32, dtype=torch.float64)
    together = model(frames)
    alone = torch.cat([model(frames[i:i + 1]) for i in range(3)])
    assert_same_maths(together, alone, MODEL_REDUCTION, MODEL_DEPTH)


def test_embed_video_in_chunks_equals_one_pass_with_interpolated_time():
    torch.manual_seed(0)
    model = build_model(tiny_config()).eval()
    model = model.double()
    frames = torch.randn(11, 3, 32, 32, dtype=torch.float64)
    chunked = model.embed_video(frames, chunk_size=4)  # handed over in float32, as videos' embeddings are
    whole = model(frames[None])[0].float()
    # The same maths in float64 (differences ~1e-15), each rounded once to float32: at most one float32 step apart
    # on unit-norm rows.
    torch.testing.assert_close(chunked, whole, rtol=0, atol=torch.finfo(torch.float32).eps)


def test_time_only_control_ignores_the_frames():
    torch.manual_seed(0)
    model = build_model(tiny_config(**{"model.zero_visual_input": "true"})).eval()
    a, b = torch.randn(1, 6, 3, 32, 32), torch.randn(1, 6, 3, 32, 32)
    torch.testing.assert_close(model(a), model(b))
    assert not torch.allclose(model(a)[0, 0], model(a)[0, 1])  # the time encoding still varies


def test_trainable_state_excludes_the_frozen_backbone_and_round_trips():
    torch.manual_seed(0)
    model = build_model(tiny_config()).eval()
    state = model.trainable_state_dict()
    assert state and not any(key.startswith("backbone.") for key in state)
    other = build_model(tiny_config()).eval()
    other.load_trainable_state_dict(state)
    frames = torch.randn(1, 6, 3, 32, 32)
    torch.testing.assert_close(other(frames), model(frames))
    assert all(not p.requires_grad for p in model.backbone.parameters())
