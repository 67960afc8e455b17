"""The published MV-Former recipe, point by point (issue 12): FineGym's window sampling, torchvision's
Gaussian blur and RandomResizedCrop fallback, and the initialisation of the LSTP queries and the encoder.
Each rule is written plainly here, as the published code states it, and compared with mvformer's form."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage, stats
from torch import nn

from mvformer.config import AugmentConfig
from mvformer.data.sampling import sample_views
from mvformer.data.transforms import _draw_view_params, _gaussian_blur, augment_views
from mvformer.errors import MVFormerError
from mvformer.model.pooling import SpatialTokenPooling
from mvformer.model.temporal import TemporalEncoder

ONLY_BLUR = {"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "flip_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.0,
             "blur_p": 1.0}
ONLY_CROP = {"flip_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0}  # published crop scale and ratio


# --- 1. FineGym's window rule -----------------------------------------------------------------


def published_window_views(num_frames, clip_len, rng, num_views, max_stretch, consistent_offset):
    """datasets/finegym.py `sample_frames` ('time_augment'), view after view, each later view given view 0's steps
    as `pre_steps`. Its random calls take their numbers from `rng` in the order sample_views draws them:
    np.random.uniform -> stretches[v]; torch.randperm(block)[:n] -> the n smallest of keys[v, :block];
    np.random.randint(low, high) -> low + int(fractions[v] * (high - low))."""
    n = min(num_frames, clip_len)
    stretches = rng.uniform(1.0, max_stretch, size=num_views)
    blocks = [math.ceil(stretch * n) for stretch in stretches]
    keys = rng.random((num_views, max(blocks)))
    fractions = rng.random(num_views)
    all_steps, all_masks, pre_steps = [], [], None
    for view in range(num_views):
        block, fraction = blocks[view], fractions[view]

        def randint(low, high, fraction=fraction):
            return low + int(fraction * (high - low))

        if pre_steps is not None and consistent_offset != 0:
            pre_offset = min(pre_steps)
            shift = int((1 - consistent_offset) * n)
            offset = randint(max(0, min(num_frames - block, pre_offset - shift)),
                             max(1, min(num_frames - block + 1, pre_offset + shift + 1)))
        else:
            offset = randint(0, max(num_frames - block, 1))
        steps = sorted(offset + int(i) for i in np.argsort(keys[view, :block], kind="stable")[:n])
        steps += [num_frames] * (clip_len - n)
        all_masks.append([1.0 if step < num_frames else 0.0 for step in steps])
        all_steps.append([min(step, num_frames - 1) for step in steps])
        if view == 0:
            pre_steps = all_steps[0]
    return np.array(all_steps), np.array(all_masks, dtype=np.float32)


@pytest.mark.parametrize("num_frames, clip_len", [(2000, 240), (300, 240), (241, 240), (240, 240), (100, 240),
                                                  (37, 8), (1, 4)])
@pytest.mark.parametrize("consistent_offset, num_views", [(0.2, 2), (1.0, 2), (0.0, 2), (0.2, 3)])
def test_window_rule_equals_the_published_loop(num_frames, clip_len, consistent_offset, num_views):
    for seed in range(15):
        views = sample_views(num_frames, clip_len, np.random.default_rng(seed), num_views=num_views, max_stretch=1.5,
                             rule="window", consistent_offset=consistent_offset)
        steps, masks = published_window_views(num_frames, clip_len, np.random.default_rng(seed), num_views, 1.5,
                                               consistent_offset)
        np.testing.assert_array_equal(views.indices, steps)
        np.testing.assert_array_equal(views.steps, steps)
        np.testing.assert_array_equal(views.masks, masks)
        assert views.seq_len == num_frames


def test_window_offsets_follow_the_published_distribution_exactly():
    """L = 12, T = 4, no stretch: block = 4, so each view is offset + (0, 1, 2, 3). View 0's offset is uniform on
    randint(0, 8) = {0..7}; with shift int(0.8 * 4) = 3, view 1's is uniform on
    [max(0, min(8, o0 - 3)), max(1, min(9, o0 + 4))), e.g. {4..8} for o0 = 7 (8 = L - block is reachable)."""
    expected = np.zeros((9, 9))
    for first in range(8):
        low, high = max(0, min(8, first - 3)), max(1, min(9, first + 4))
        expected[first, low:high] = 1 / 8 / (high - low)
    rng = np.random.default_rng(0)
    counts = np.zeros((9, 9))
    draws = 5_000
    for _ in range(draws):
        views = sample_views(12, 4, rng, max_stretch=1.0, rule="window", consistent_offset=0.2)
        np.testing.assert_array_equal(views.indices - views.indices[:, :1], np.tile(np.arange(4), (2, 1)))
        counts[views.indices[0, 0], views.indices[1, 0]] += 1
    assert np.all(counts[expected == 0] == 0)  # nothing outside the published support
    support = expected > 0
    assert stats.chisquare(counts[support], expected[support] * draws).pvalue > 1e-3


def test_window_views_are_short_windows_near_each_other():
    num_frames, clip_len, shift = 2000, 240, int(0.8 * 240)
    rng = np.random.default_rng(5)
    first_frames = []
    for _ in range(300):
        views = sample_views(num_frames, clip_len, rng, rule="window", consistent_offset=0.2)
        assert np.all(views.masks == 1)  # blocks of at most ceil(1.5 * 240) = 360 frames fit in the video
        assert np.all(np.diff(views.indices, axis=1) > 0)  # num_valid sorted distinct frames
        spans = views.indices[:, -1] - views.indices[:, 0]
        assert np.all(spans < math.ceil(1.5 * clip_len))  # inside [offset, offset + block)
        assert views.indices[0, -1] <= num_frames - 2  # view 0's offset < L - block: randint's high is exclusive
        # view 1's offset lies within +-shift of view 0's first frame; its first frame at most block - n after it
        gap = views.indices[1, 0] - views.indices[0, 0]
        assert -shift <= gap <= shift + math.ceil(1.5 * clip_len) - clip_len
        first_frames.append(views.indices[0, 0])
    # the window wanders over the whole video (the whole-video rule always starts near frame 0)
    assert min(first_frames) < 100 and max(first_frames) > num_frames - 500
    whole = sample_views(num_frames, clip_len, np.random.default_rng(5))
    assert np.all(whole.indices[:, -1] - whole.indices[:, 0] > num_frames // 2)


def test_window_rule_options_are_checked():
    with pytest.raises(MVFormerError, match="sampling rule"):
        sample_views(10, 4, np.random.default_rng(0), rule="middle")
    with pytest.raises(MVFormerError, match="consistent_offset"):
        sample_views(10, 4, np.random.default_rng(0), rule="window", consistent_offset=1.5)


# --- 6. Gaussian blur: torchvision's GaussianBlur(kernel_size=(5, 9), sigma=(0.1, 2.0)) ---------------------------


def torchvision_kernel_2d(sigma):
    """torchvision `_get_gaussian_kernel2d([5, 9], [sigma, sigma])`: (9, 5), 9 rows high and 5 columns wide."""

    def kernel_1d(size):
        x = np.linspace(-(size - 1) * 0.5, (size - 1) * 0.5, size)
        pdf = np.exp(-0.5 * (x / sigma) ** 2)
        return pdf / pdf.sum()

    return np.outer(kernel_1d(9), kernel_1d(5))


def hand_blur(image, sigma):
    """(H, W) float64: reflect-pad 4 rows and 2 columns, then the plain 2-D correlation with the (9, 5) kernel."""
    kernel = torchvision_kernel_2d(sigma)
    padded = np.pad(image, ((4, 4), (2, 2)), mode="reflect")
    height, width = image.shape
    out = np.zeros_like(image)
    for row in range(9):
        for col in range(5):
            out += kernel[row, col] * padded[row : row + height, col : col + width]
    return out


def test_blur_of_an_impulse_is_the_9_high_5_wide_kernel():
    image = torch.zeros(1, 1, 1, 21, 21)
    image[..., 10, 10] = 1.0
    sigma = 1.3
    out = _gaussian_blur(image, torch.tensor([sigma]), torch.tensor([True]))[0, 0, 0].double().numpy()
    rows, cols = np.nonzero(out)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (6, 14, 8, 12)  # 9 rows, 5 columns
    np.testing.assert_allclose(out[6:15, 8:13], torchvision_kernel_2d(sigma), atol=1e-7)


def test_blur_equals_the_hand_computation_and_scipy_with_reflect_borders():
    images = torch.rand(3, 2, 3, 11, 7, generator=torch.Generator().manual_seed(0))  # (V, T, 3, H, W)
    sigmas = torch.tensor([0.1, 0.7, 2.0])
    apply = torch.tensor([True, False, True])
    out = _gaussian_blur(images, sigmas, apply)
    torch.testing.assert_close(out[1], images[1], atol=0, rtol=0)  # not drawn for blurring: unchanged
    for view in (0, 2):
        for step in range(2):
            for channel in range(3):
                plane = images[view, step, channel].double().numpy()
                expected = hand_blur(plane, sigmas[view].item())
                # scipy's "mirror" is torch's "reflect" (d c b | a b c d | c b a)
                scipy_form = ndimage.correlate(plane, torchvision_kernel_2d(sigmas[view].item()), mode="mirror")
                np.testing.assert_allclose(scipy_form, expected, atol=1e-12)
                np.testing.assert_allclose(out[view, step, channel].numpy(), expected, atol=1e-6)


def test_augment_views_blurs_with_the_drawn_sigma_on_both_axes():
    frames = torch.randint(0, 256, (4, 2, 16, 12, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    params = AugmentConfig(**{**ONLY_BLUR, "crop_ratio": (0.75, 0.75)})  # the whole 12 x 16 frame: no resampling
    out = augment_views(frames, torch.Generator().manual_seed(2), 16, params)
    draws = _draw_view_params(4, 16, 12, torch.Generator().manual_seed(2), params)
    assert torch.all(draws["crop_height"] == 16) and torch.all(draws["crop_width"] == 12)
    resized = F.interpolate(frames.permute(0, 1, 4, 2, 3).flatten(0, 1).double() / 255, size=(16, 16),
                            mode="bilinear", align_corners=False).view(4, 2, 3, 16, 16)
    for view in range(4):
        sigma = draws["blur_sigma"][view].item()
        assert 0.1 <= sigma <= 2.0
        expected = np.stack([[hand_blur(plane, sigma) for plane in frame] for frame in resized[view].numpy()])
        np.testing.assert_allclose(out[view].numpy(), expected, atol=1e-5)


def test_blur_needs_room_for_its_reflect_padding():
    with pytest.raises(MVFormerError, match="at least 5"):
        augment_views(torch.zeros(1, 1, 8, 8, 3, dtype=torch.uint8), torch.Generator(), 4, AugmentConfig())


# --- the random-resized-crop fallback (torchvision / datasets/data_augment.py) ----------------------------------


def published_crop_fallback(height, width, ratio=(3 / 4, 4 / 3)):
    """data_augment._get_param_spatial_crop after its 10 attempts fail: the central crop of the nearest ratio."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize("height, width, box", [(360, 640, (0, 80, 360, 480)), (640, 360, (80, 0, 480, 360))])
def test_sixteen_by_nine_frames_fall_back_to_the_central_four_by_three_crop(height, width, box):
    # no scale in [0.8, 1] and ratio in [3/4, 4/3] fits 16:9: the short side would need >= sqrt(0.8 * 0.75) of the long
    assert published_crop_fallback(height, width) == box
    draws = _draw_view_params(400, height, width, torch.Generator().manual_seed(0), AugmentConfig())
    for key, value in zip(("crop_top", "crop_left", "crop_height", "crop_width"), box):
        assert torch.all(draws[key] == value)


def test_finegym_frame_is_the_central_480x360_resized_to_224():
    frame = torch.randint(0, 256, (1, 1, 360, 640, 3), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    out = augment_views(frame, torch.Generator().manual_seed(4), 224, AugmentConfig(**ONLY_CROP))
    crop = frame[0, :, :, 80:560].permute(0, 3, 1, 2).float() / 255  # (1, 3, 360, 480)
    expected = F.interpolate(crop, size=(224, 224), mode="bilinear", align_corners=False)  # as published
    # float32 sampling-grid coordinates across 640 pixels move samples by < 1e-4 pixel; a box off by one pixel
    # differs by ~0.1 on random frames
    torch.testing.assert_close(out[0], expected, atol=2e-4, rtol=0)


# --- 9. initialisation ------------------------------------------------------------------------------------------


def published_query_bound(num_tokens, dim):
    """nn.init.kaiming_uniform_(Q_s, a=sqrt(5)) on Q_s of shape (1, N, dim): gain * sqrt(3 / fan_in)."""
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(torch.empty(1, num_tokens, dim))
    return nn.init.calculate_gain("leaky_relu", math.sqrt(5)) * math.sqrt(3.0 / fan_in)


@pytest.mark.parametrize("num_tokens", [3, 6])
def test_lstp_queries_are_kaiming_uniform_with_one_shared_bias(num_tokens):
    torch.manual_seed(0)
    pool = SpatialTokenPooling(in_dim=64, num_tokens=num_tokens, dim=384)
    bound = published_query_bound(num_tokens, 384)
    assert bound == pytest.approx(1 / math.sqrt(num_tokens * 384))
    queries, bias = pool.queries.detach(), pool.query_bias.detach()
    assert queries.shape == (num_tokens, 384) and bias.shape == (384,)
    # U(-b, b): all inside, the extremes close to b, standard deviation b / sqrt(3)
    for values in (queries, bias):
        assert values.abs().max() <= bound and values.abs().max() > 0.95 * bound
    assert queries.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.06)
    # the bias is published's fan-in bound too: uniform(-1 / sqrt(fan_in), 1 / sqrt(fan_in)), fan_in = N * 384
    assert bias.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.12)
    # one bias vector shared by all tokens: every query is its own vector plus the same bias
    offsets = pool.query_vectors().detach() - queries  # (N, 384)
    torch.testing.assert_close(offsets, bias.expand_as(offsets), atol=1e-7, rtol=0)
    patches = torch.randn(2, 10, 64)
    pool(patches).sum().backward()
    torch.testing.assert_close(pool.query_bias.grad, pool.queries.grad.sum(0), atol=1e-6, rtol=1e-5)


def test_encoder_layers_start_equal_with_xavier_q_k_v_and_linear_biases():
    torch.manual_seed(0)
    dim, ff_dim = 256, 1024
    encoder = TemporalEncoder(dim, num_layers=3, num_heads=8, ff_dim=ff_dim, dropout=0.1, train_len=80)
    first, *others = encoder.layers
    for layer in others:  # copies of one layer: equal values, separate tensors
        for (name, a), (_, b) in zip(first.named_parameters(), layer.named_parameters()):
            assert torch.equal(a, b), name
            assert a.data_ptr() != b.data_ptr(), name

    def xavier_bound(rows, cols):
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(torch.empty(rows, cols))
        return math.sqrt(6.0 / (fan_in + fan_out))

    # published: separate Q, K, V (dim x dim) maps, the output map, fc1 and fc2 each xavier-uniform
    query, key, value = first.qkv.weight.detach().chunk(3, dim=0)
    matrices = {"query": (query, xavier_bound(dim, dim)), "key": (key, xavier_bound(dim, dim)),
                "value": (value, xavier_bound(dim, dim)), "out": (first.out.weight.detach(), xavier_bound(dim, dim)),
                "fc1": (first.ff[0].weight.detach(), xavier_bound(ff_dim, dim)),
                "fc2": (first.ff[2].weight.detach(), xavier_bound(dim, ff_dim))}
    assert xavier_bound(dim, dim) > xavier_bound(3 * dim, dim) * 1.4  # a fused (3 dim, dim) xavier would be narrower
    for name, (matrix, bound) in matrices.items():
        assert matrix.abs().max() <= bound and matrix.abs().max() > 0.99 * bound, name
        assert matrix.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02), name
    # biases keep nn.Linear's default U(+-1 / sqrt(in_features)), as published's separate Linear(dim, dim) maps have
    for name, bias, in_features in (("qkv", first.qkv.bias, dim), ("out", first.out.bias, dim),
                                    ("fc1", first.ff[0].bias, dim), ("fc2", first.ff[2].bias, ff_dim)):
        bound = 1 / math.sqrt(in_features)
        assert bias.abs().max() <= bound and bias.abs().max() > 0.9 * bound, name
    assert torch.equal(first.attn_norm.weight, torch.ones(dim)) and torch.equal(first.ff_norm.bias, torch.zeros(dim))


# --- the recipe as the shipped configs and the model apply it ------------------------------------------------


def test_long_videos_go_through_the_encoder_as_equal_chunks_each_on_its_own():
    """Published evaluate.py: n = ceil(L / max) chunks of ceil(L / n) frames (the last shorter), each through
    the model with its own time encoding."""
    from mvformer.config import load_config
    from mvformer.model.mvformer import build_model
    torch.manual_seed(0)
    model = build_model(load_config("demo", ["eval.frames_per_batch=10"])).eval()
    tokens = torch.randn(1, 23, model.head.num_tokens, model.head.pooling.out_dim)
    embs = model.encode_pooled(tokens)
    chunks = [tokens[:, 0:8], tokens[:, 8:16], tokens[:, 16:23]]  # n = 3, 8 frames each, then 7
    expected = torch.cat([F.normalize(model.head.encode_tokens(chunk), dim=-1)[0] for chunk in chunks])
    torch.testing.assert_close(embs, expected)
    model.max_encoder_frames = None
    assert not torch.allclose(model.encode_pooled(tokens), embs, atol=1e-3)  # chunking really changes them


def test_native_frames_are_evaluated_on_their_central_square_at_native_resolution():
    from mvformer.data.transforms import prepare_frames
    frames = torch.randint(0, 256, (2, 360, 640, 3), dtype=torch.uint8)
    prepared = prepare_frames(frames, 224, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "native")
    expected = frames[:, 68:292, 208:432].permute(0, 3, 1, 2).float() / 255  # rows 68-291, columns 208-431
    torch.testing.assert_close(prepared, expected)
    squashed = prepare_frames(frames, 224, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "squash")
    assert squashed.shape == prepared.shape and not torch.allclose(squashed, prepared)


def test_shipped_configs_follow_the_published_recipe():
    from mvformer.config import load_config
    penn, finegym, kinetics = load_config("penn_action"), load_config("finegym99"), load_config("k400_pretrain")
    assert (penn.train.schedule, penn.train.warmup_epochs, penn.train.precision) == ("cosine", 0, "fp16")
    assert (penn.data.sampling, penn.data.frames, penn.eval.frames_per_batch) == ("whole_video", "squash", 1000)
    assert (finegym.data.sampling, finegym.data.consistent_offset, finegym.data.frames) == ("window", 0.2, "native")
    assert finegym.eval.frames_per_batch == 2000 and load_config("finegym288").data.subset == "288"
    assert kinetics.data.frames == "native" and kinetics.data.decode_size is None
    tuned = load_config("k400_penn_action")
    assert tuned.train.init_from == "runs/k400_pretrain" and tuned.train.epochs == 500
    for pooling in ("cls", "max", "avg"):
        late = load_config(f"ablation_late_fusion_{pooling}")
        assert (late.backbone.blocks, late.model.token_id, late.model.num_tokens) == ([11], "none", 1)
