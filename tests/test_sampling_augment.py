"""Temporal view sampling and per-view spatial/colour augmentation."""

import math

import numpy as np
import pytest
import torch

from mvformer.data.transforms import AugmentConfig, _draw_view_params, augment_views, hsv_to_rgb, normalize, rgb_to_hsv
from mvformer.data.sampling import sample_views
from mvformer.errors import MVFormerError

NO_AUGMENT = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)


def random_frames(shape, seed=0):
    """uint8 frames of the given (V, T, H, W, 3) shape."""
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def as_channels_first(frames):
    """uint8 (V, T, H, W, 3) -> float (V, T, 3, H, W) in [0, 1]."""
    return frames.permute(0, 1, 4, 2, 3).float() / 255.0


# --- sampling ---------------------------------------------------------------------------------


def reference_views(num_frames, clip_len, seed, num_views, max_stretch):
    """Spec of the protocol, frame by frame: raw draws and padding, before clamping."""
    rng = np.random.default_rng(seed)
    raw = np.full((num_views, clip_len), num_frames)
    for view in range(num_views):
        stretch = rng.uniform(1.0, max_stretch)
        drawn = np.sort(rng.choice(math.ceil(stretch * num_frames), size=min(num_frames, clip_len), replace=False))
        raw[view, : len(drawn)] = drawn
    return raw


def test_sample_views_shapes_and_dtypes():
    views = sample_views(40, 16, np.random.default_rng(0))
    assert views.indices.shape == views.steps.shape == views.masks.shape == (2, 16)
    assert views.indices.dtype == views.steps.dtype == np.int64
    assert views.masks.dtype == np.float32
    assert views.seq_len == 40
    np.testing.assert_array_equal(views.steps, views.indices)


@pytest.mark.parametrize("num_frames, clip_len", [(40, 16), (16, 16), (5, 8), (1, 4), (300, 20)])
def test_sample_views_masks_exactly_draws_past_the_end_and_padding(num_frames, clip_len):
    for seed in range(20):
        views = sample_views(num_frames, clip_len, np.random.default_rng(seed), num_views=3, max_stretch=1.5)
        raw = reference_views(num_frames, clip_len, seed, num_views=3, max_stretch=1.5)
        np.testing.assert_array_equal(views.masks, (raw < num_frames).astype(np.float32))
        np.testing.assert_array_equal(views.indices, np.minimum(raw, num_frames - 1))
        assert views.indices.min() >= 0 and views.indices.max() < num_frames
        assert np.all(np.diff(views.indices, axis=1) >= 0)
        for view_indices, view_mask in zip(views.indices, views.masks):
            real = view_indices[view_mask == 1]
            assert np.all(np.diff(real) > 0)  # real frames are distinct
            assert np.all(view_indices[view_mask == 0] == num_frames - 1)


def test_short_video_is_padded_with_masked_last_frame():
    views = sample_views(5, 8, np.random.default_rng(1), max_stretch=1.0)
    np.testing.assert_array_equal(views.indices, np.tile([0, 1, 2, 3, 4, 4, 4, 4], (2, 1)))
    np.testing.assert_array_equal(views.masks, np.tile([1, 1, 1, 1, 1, 0, 0, 0], (2, 1)))
    stretched = sample_views(5, 8, np.random.default_rng(1))
    assert np.all(stretched.masks[:, 5:] == 0) and np.all(stretched.indices[:, 5:] == 4)


def test_long_video_gives_distinct_frames():
    views = sample_views(10_000, 16, np.random.default_rng(2), max_stretch=1.0)
    for view_indices in views.indices:
        assert len(np.unique(view_indices)) == 16
    assert np.all(views.masks == 1)
    assert not np.array_equal(views.indices[0], views.indices[1])


def test_no_stretch_and_full_length_takes_every_frame():
    views = sample_views(12, 12, np.random.default_rng(3), max_stretch=1.0)
    np.testing.assert_array_equal(views.indices, np.tile(np.arange(12), (2, 1)))
    np.testing.assert_array_equal(views.masks, np.ones((2, 12), dtype=np.float32))


def test_masked_fraction_matches_stretch_distribution():
    num_frames, clip_len, max_stretch = 100, 16, 1.5
    rng = np.random.default_rng(4)
    masked = np.mean([1 - sample_views(num_frames, clip_len, rng).masks.mean() for _ in range(3000)])
    # Each draw is marginally uniform over [0, ceil(rL)), so P(masked | r) = 1 - L / ceil(rL).
    stretches = 1 + (max_stretch - 1) * (np.arange(100_000) + 0.5) / 100_000
    expected = np.mean(1 - num_frames / np.ceil(stretches * num_frames))
    assert abs(expected - (1 - math.log(max_stretch) / (max_stretch - 1))) < 0.01  # ~ E[1 - 1/r] = 0.189
    assert abs(masked - expected) < 0.01


def test_sample_views_rejects_bad_arguments():
    with pytest.raises(MVFormerError):
        sample_views(0, 8, np.random.default_rng(0))
    with pytest.raises(MVFormerError):
        sample_views(10, 8, np.random.default_rng(0), max_stretch=0.5)


# --- augmentation -----------------------------------------------------------------------------


def test_output_shape_dtype_and_range():
    frames = random_frames((6, 3, 40, 56, 3))
    out = augment_views(frames, torch.Generator().manual_seed(0), 32, AugmentConfig())
    assert out.shape == (6, 3, 3, 32, 32) and out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_one_draw_per_view_shared_by_its_frames():
    image = random_frames((1, 1, 48, 48, 3))
    frames = image.expand(8, 4, 48, 48, 3).contiguous()  # every frame of every view is the same image
    out = augment_views(frames, torch.Generator().manual_seed(1), 32, AugmentConfig())
    assert torch.equal(out, out[:, :1].expand_as(out))
    for first in range(8):
        for second in range(first + 1, 8):
            assert not torch.allclose(out[first], out[second])


def test_same_seed_same_output_other_seed_differs():
    frames = random_frames((4, 2, 36, 36, 3))
    first = augment_views(frames, torch.Generator().manual_seed(7), 24, AugmentConfig())
    again = augment_views(frames, torch.Generator().manual_seed(7), 24, AugmentConfig())
    other = augment_views(frames, torch.Generator().manual_seed(8), 24, AugmentConfig())
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


@pytest.mark.parametrize("params", [None, AugmentConfig(enabled=False)])
def test_evaluation_transform_is_identity_at_output_size(params):
    frames = random_frames((2, 3, 16, 16, 3))
    out = augment_views(frames, torch.Generator().manual_seed(0), 16, params)
    torch.testing.assert_close(out, as_channels_first(frames), atol=1e-6, rtol=0)


def test_evaluation_transform_centre_crops_the_short_side():
    frames = random_frames((2, 2, 8, 12, 3))
    out = augment_views(frames, torch.Generator().manual_seed(0), 8, None)
    torch.testing.assert_close(out, as_channels_first(frames)[..., 2:10], atol=1e-5, rtol=0)
    smaller = augment_views(random_frames((1, 1, 32, 32, 3)), torch.Generator(), 16, None)
    assert smaller.shape == (1, 1, 3, 16, 16)


def test_full_crop_with_flip_mirrors_width():
    frames = random_frames((3, 2, 16, 16, 3))
    params = AugmentConfig(**{**NO_AUGMENT, "flip_p": 1.0})
    out = augment_views(frames, torch.Generator().manual_seed(0), 16, params)
    torch.testing.assert_close(out, as_channels_first(frames).flip(-1), atol=1e-5, rtol=0)


def test_impossible_crop_falls_back_to_centre_crop():
    frames = random_frames((2, 1, 8, 12, 3))
    out = augment_views(frames, torch.Generator().manual_seed(0), 8, AugmentConfig(**NO_AUGMENT))
    torch.testing.assert_close(out, as_channels_first(frames)[..., 2:10], atol=1e-5, rtol=0)


def test_random_crop_boxes_fit_the_image_with_requested_area_and_ratio():
    height, width = 40, 56
    draws = _draw_view_params(2000, height, width, torch.Generator().manual_seed(0), AugmentConfig())
    top, left = draws["crop_top"], draws["crop_left"]
    crop_height, crop_width = draws["crop_height"], draws["crop_width"]
    assert torch.all((top >= 0) & (left >= 0) & (top + crop_height <= height) & (left + crop_width <= width))
    area_fraction = (crop_height * crop_width).float() / (height * width)
    assert area_fraction.min() > 0.77 and area_fraction.max() <= 1.0  # (0.8, 1.0) up to rounding
    aspect = crop_width.float() / crop_height.float()
    assert aspect.min() > 0.7 and aspect.max() < 1.4  # (3/4, 4/3) up to rounding
    # placement is random: boxes reach both edges and use many offsets
    assert torch.any(top == 0) and torch.any(top + crop_height == height) and len(torch.unique(left)) > 10


def test_random_crop_renders_the_drawn_box():
    frames = random_frames((6, 2, 40, 40, 3))
    params = AugmentConfig(**{**NO_AUGMENT, "crop_scale": (0.25, 0.25)})  # 20 x 20 boxes, no resizing needed
    out = augment_views(frames, torch.Generator().manual_seed(3), 20, params)
    draws = _draw_view_params(6, 40, 40, torch.Generator().manual_seed(3), params)
    images = as_channels_first(frames)
    for view, (top, left) in enumerate(zip(draws["crop_top"].tolist(), draws["crop_left"].tolist())):
        torch.testing.assert_close(out[view], images[view, ..., top : top + 20, left : left + 20], atol=1e-5, rtol=0)


def test_grayscale_makes_channels_equal():
    frames = random_frames((3, 2, 16, 16, 3))
    params = AugmentConfig(**{**NO_AUGMENT, "grayscale_p": 1.0})
    out = augment_views(frames, torch.Generator().manual_seed(0), 16, params)
    torch.testing.assert_close(out[:, :, 0], out[:, :, 1], atol=0, rtol=0)
    torch.testing.assert_close(out[:, :, 0], out[:, :, 2], atol=0, rtol=0)
    luma = (as_channels_first(frames) * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(2)
    torch.testing.assert_close(out[:, :, 0], luma, atol=1e-5, rtol=0)


def test_blur_keeps_constant_image_and_smooths_noise():
    params = AugmentConfig(**{**NO_AUGMENT, "blur_p": 1.0})
    constant = torch.full((4, 2, 32, 32, 3), 77, dtype=torch.uint8)
    out = augment_views(constant, torch.Generator().manual_seed(0), 32, params)
    torch.testing.assert_close(out, torch.full_like(out, 77 / 255), atol=1e-6, rtol=0)
    noise = random_frames((4, 2, 32, 32, 3))
    blurred = augment_views(noise, torch.Generator().manual_seed(0), 32, params)
    assert torch.all(blurred.std(dim=(-2, -1)) < as_channels_first(noise).std(dim=(-2, -1)))


def test_neutral_jitter_is_identity():
    frames = random_frames((3, 2, 16, 16, 3))
    neutral = {"jitter_p": 1.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0}
    out = augment_views(frames, torch.Generator().manual_seed(0), 16, AugmentConfig(**{**NO_AUGMENT, **neutral}))
    torch.testing.assert_close(out, as_channels_first(frames), atol=1e-6, rtol=0)


def test_hsv_round_trip_and_hue_rotation():
    rgb = torch.rand(2, 3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    rgb[0, 0, :, :2] = 0.5  # grey rows: zero chroma
    rgb[0, 1] = 0.0  # black frame: zero value
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(rgb)), rgb, atol=1e-5, rtol=0)
    assert torch.all(rgb_to_hsv(rgb)[0, 0, 0, :2] == 0)  # grey has hue 0 by convention
    primaries = torch.eye(3).view(3, 3, 1, 1)  # red, green, blue pixels
    hsv = rgb_to_hsv(primaries)
    torch.testing.assert_close(hsv[:, 0].flatten(), torch.tensor([0.0, 1 / 3, 2 / 3]))
    hsv[:, 0] = (hsv[:, 0] + 1 / 3) % 1.0
    torch.testing.assert_close(hsv_to_rgb(hsv), primaries.roll(1, dims=1), atol=1e-6, rtol=0)


def test_jitter_changes_colours_but_keeps_range():
    frames = random_frames((8, 2, 16, 16, 3))
    params = AugmentConfig(**{**NO_AUGMENT, "jitter_p": 1.0})
    out = augment_views(frames, torch.Generator().manual_seed(0), 16, params)
    assert out.min() >= 0.0 and out.max() <= 1.0
    per_view_change = (out - as_channels_first(frames)).abs().mean(dim=(1, 2, 3, 4))
    assert torch.all(per_view_change > 1e-3)


def test_normalize_per_channel():
    frames = torch.ones(2, 3, 4, 4) * torch.tensor([0.5, 0.25, 1.0]).view(3, 1, 1)
    out = normalize(frames, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5))
    torch.testing.assert_close(out[:, :, 0, 0], torch.tensor([[0.0, -1.0, 1.0]] * 2))


def test_config_rejects_bad_values():
    with pytest.raises(MVFormerError):
        AugmentConfig(flip_p=1.5)
    with pytest.raises(MVFormerError):
        AugmentConfig(crop_scale=(0.9, 0.5))
    with pytest.raises(MVFormerError):
        augment_views(torch.zeros(2, 4, 4, 3, dtype=torch.uint8), torch.Generator(), 4, None)
