"""Spatial and colour augmentation of video views, vectorised over views.

Every view draws its random parameters once and applies them to all of its frames, so the
augmentation changes appearance but never the temporal consistency the model must learn.
All draws are made up front as (V,) tensors from one torch.Generator (deterministic given
its seed); the pixel work is batched over all views and frames without Python loops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mvformer.config import AugmentConfig
from mvformer.errors import MVFormerError

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
CROP_ATTEMPTS = 10
BLUR_KERNEL_SIZE = (5, 9)  # (width, height): torchvision's GaussianBlur(kernel_size=(5, 9)) of the published recipe


def augment_views(
    frames: torch.Tensor,
    generator: torch.Generator | Sequence[torch.Generator] | None,
    out_size: int,
    params: AugmentConfig | None = None,
) -> torch.Tensor:
    """uint8 frames (V, T, H, W, 3) -> float32 (V, T, 3, out_size, out_size) in [0, 1].

    With `params` enabled: random resized crop + horizontal flip, colour jitter (fixed order:
    brightness, contrast, saturation, hue), grayscale and Gaussian blur, one draw per view.
    A sequence of G generators splits the views into G equal consecutive groups, each drawn from its
    own generator (one per video of a batch, so that a video's draw does not depend on its batch).
    With `params` None or disabled: centre square crop of the short side resized to out_size.
    Mean/std normalisation is left to the caller (see `normalize`).
    """
    if frames.dim() != 5 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise MVFormerError(f"expected uint8 frames (V, T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    num_views, _, height, width, _ = frames.shape
    images = frames.permute(0, 1, 4, 2, 3).to(torch.float32) / 255.0  # (V, T, 3, H, W)

    if params is None or not params.enabled:
        if height == width == out_size:
            return images.contiguous()
        side = torch.full((num_views,), min(height, width), device=frames.device)
        no_flip = torch.zeros(num_views, dtype=torch.bool, device=frames.device)
        return _crop_resize(images, *_centre_box(height, width, side, side), flip=no_flip, out_size=out_size)

    if params.blur_p > 0 and out_size <= BLUR_KERNEL_SIZE[1] // 2:
        raise MVFormerError(f"augment: Gaussian blur with a {BLUR_KERNEL_SIZE[0]} x {BLUR_KERNEL_SIZE[1]} kernel "
                            f"needs an output size of at least {BLUR_KERNEL_SIZE[1] // 2 + 1}, got {out_size}")
    generators = [generator] if isinstance(generator, torch.Generator) or generator is None else list(generator)
    if not generators or num_views % len(generators):
        raise MVFormerError(f"{num_views} views cannot be split evenly over {len(generators)} generators")
    groups = [_draw_view_params(num_views // len(generators), height, width, group, params) for group in generators]
    draws = {name: torch.cat([group[name] for group in groups]).to(frames.device) for name in groups[0]}
    crop_box = (draws["crop_top"], draws["crop_left"], draws["crop_height"], draws["crop_width"])
    views = _crop_resize(images, *crop_box, flip=draws["flip"], out_size=out_size)  # (V, T, 3, S, S)
    views = _color_jitter(views, draws)
    views = torch.where(_per_view(draws["grayscale"]), _grayscale(views).expand_as(views), views)
    views = _gaussian_blur(views, draws["blur_sigma"], draws["blur"])
    return views.clamp_(0.0, 1.0)


def normalize(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Channel-wise (x - mean) / std of float frames (..., 3, H, W)."""
    mean_t = torch.as_tensor(mean, dtype=frames.dtype, device=frames.device).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=frames.dtype, device=frames.device).view(3, 1, 1)
    return (frames - mean_t) / std_t


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """RGB (..., 3, H, W) in [0, 1] -> HSV (..., 3, H, W) with hue in [0, 1)."""
    value, max_channel = rgb.max(dim=-3, keepdim=True)  # (..., 1, H, W)
    chroma = value - rgb.amin(dim=-3, keepdim=True)
    saturation = chroma / value.clamp_min(1e-12)  # 0 for black pixels, whose chroma is 0
    # Hue in sixths of the circle: 2 * max_channel + (next channel - the one after) / chroma,
    # i.e. (g - b), 2 + (b - r) or 4 + (r - g) for a red, green or blue maximum.
    channel_differences = rgb.roll(-1, dims=-3) - rgb.roll(-2, dims=-3)  # (g - b, b - r, r - g)
    sector = channel_differences.gather(-3, max_channel) / chroma.clamp_min(1e-12) + 2.0 * max_channel
    hue = torch.where(chroma > 0, torch.remainder(sector, 6.0) / 6.0, 0.0)  # grey pixels: hue 0
    return torch.cat((hue, saturation, value), dim=-3)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """HSV (..., 3, H, W) with hue in [0, 1) -> RGB (..., 3, H, W)."""
    hue, saturation, value = hsv.split(1, dim=-3)  # each (..., 1, H, W)
    # Closed form: channel n = V - V*S*clamp(min(k, 4 - k), 0, 1), k = (n + 6*hue) mod 6.
    channel_offsets = torch.tensor([5.0, 3.0, 1.0], dtype=hsv.dtype, device=hsv.device).view(3, 1, 1)
    k = torch.remainder(channel_offsets + 6.0 * hue, 6.0)  # (..., 3, H, W)
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return value - value * saturation * ramp


def _draw_view_params(
    num_views: int, height: int, width: int, generator: torch.Generator, params: AugmentConfig
) -> dict[str, torch.Tensor]:
    """All random draws of a batch of views, each a (V,) tensor (in a fixed order, for determinism)."""

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape or (num_views,), generator=generator, device=generator.device)

    def coin(p: float) -> torch.Tensor:
        return torch.rand(num_views, generator=generator, device=generator.device) < p

    log_ratio = (math.log(params.crop_ratio[0]), math.log(params.crop_ratio[1]))
    crop_area = height * width * uniform(*params.crop_scale, num_views, CROP_ATTEMPTS)  # (V, attempts)
    crop_aspect = torch.exp(uniform(*log_ratio, num_views, CROP_ATTEMPTS))
    top_fraction, left_fraction = uniform(0.0, 1.0), uniform(0.0, 1.0)
    crop_top, crop_left, crop_height, crop_width = _crop_boxes(
        height, width, crop_area, crop_aspect, top_fraction, left_fraction, params.crop_ratio
    )
    return {
        "crop_top": crop_top,
        "crop_left": crop_left,
        "crop_height": crop_height,
        "crop_width": crop_width,
        "flip": coin(params.flip_p),
        "jitter": coin(params.jitter_p),
        "brightness": uniform(max(0.0, 1.0 - params.brightness), 1.0 + params.brightness),
        "contrast": uniform(max(0.0, 1.0 - params.contrast), 1.0 + params.contrast),
        "saturation": uniform(max(0.0, 1.0 - params.saturation), 1.0 + params.saturation),
        "hue": uniform(-params.hue, params.hue),
        "grayscale": coin(params.grayscale_p),
        "blur": coin(params.blur_p),
        "blur_sigma": uniform(*params.blur_sigma),
    }


def _crop_boxes(
    height: int,
    width: int,
    crop_area: torch.Tensor,
    crop_aspect: torch.Tensor,
    top_fraction: torch.Tensor,
    left_fraction: torch.Tensor,
    ratio_range: tuple[float, float],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random-resized-crop boxes (top, left, height, width), each (V,) int64.

    Each view takes its first attempt (of crop_area/crop_aspect, (V, attempts)) that fits in the
    image, placed at the given fractions of the free room; views with no fitting attempt fall
    back to the largest centred crop whose aspect ratio lies within ratio_range (torchvision's
    RandomResizedCrop fallback, e.g. the central 480 x 360 of a 640 x 360 frame).
    """
    attempt_widths = torch.round(torch.sqrt(crop_area * crop_aspect)).long()  # (V, attempts)
    attempt_heights = torch.round(torch.sqrt(crop_area / crop_aspect)).long()
    fits = (attempt_widths > 0) & (attempt_widths <= width) & (attempt_heights > 0) & (attempt_heights <= height)
    first_fit = fits.long().argmax(dim=1, keepdim=True)  # (V, 1): first True (0 if none)
    any_fit = fits.any(dim=1)

    image_ratio = width / height
    if image_ratio < ratio_range[0]:
        fallback_width, fallback_height = width, round(width / ratio_range[0])
    elif image_ratio > ratio_range[1]:
        fallback_width, fallback_height = round(height * ratio_range[1]), height
    else:
        fallback_width, fallback_height = width, height

    crop_width = torch.where(any_fit, attempt_widths.gather(1, first_fit).squeeze(1), fallback_width)
    crop_height = torch.where(any_fit, attempt_heights.gather(1, first_fit).squeeze(1), fallback_height)
    random_top = torch.minimum((top_fraction * (height - crop_height + 1)).long(), height - crop_height)
    random_left = torch.minimum((left_fraction * (width - crop_width + 1)).long(), width - crop_width)
    centre_top, centre_left, _, _ = _centre_box(height, width, crop_height, crop_width)
    crop_top = torch.where(any_fit, random_top, centre_top)
    crop_left = torch.where(any_fit, random_left, centre_left)
    return crop_top, crop_left, crop_height, crop_width


def _centre_box(
    height: int, width: int, crop_height: torch.Tensor, crop_width: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centred boxes (top, left, height, width) of the given (V,) sizes."""
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


def _crop_resize(
    images: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    crop_height: torch.Tensor,
    crop_width: torch.Tensor,
    flip: torch.Tensor,
    out_size: int,
) -> torch.Tensor:
    """Crop each view's box from (V, T, 3, H, W), optionally mirror it, resize to (V, T, 3, S, S).

    One affine grid per view maps the output square onto the box in normalised coordinates
    (align_corners=False: [-1, 1] spans pixel edges); a negative x scale mirrors the crop.
    """
    num_views, num_steps, channels, height, width = images.shape
    dtype, device = images.dtype, images.device
    scale_x = crop_width.to(dtype) / width * torch.where(flip, -1.0, 1.0).to(dtype)
    scale_y = crop_height.to(dtype) / height
    centre_x = (2.0 * left.to(dtype) + crop_width.to(dtype)) / width - 1.0
    centre_y = (2.0 * top.to(dtype) + crop_height.to(dtype)) / height - 1.0
    zeros = torch.zeros(num_views, dtype=dtype, device=device)
    theta = torch.stack(
        (torch.stack((scale_x, zeros, centre_x), dim=-1), torch.stack((zeros, scale_y, centre_y), dim=-1)), dim=1
    )  # (V, 2, 3)
    theta = theta.repeat_interleave(num_steps, dim=0)  # (V*T, 2, 3)
    flat = images.reshape(num_views * num_steps, channels, height, width)
    grid = F.affine_grid(theta, [num_views * num_steps, channels, out_size, out_size], align_corners=False)
    # Boxes lie inside the image; "border" only guards the last pixel row/column against rounding.
    resized = F.grid_sample(flat, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return resized.view(num_views, num_steps, channels, out_size, out_size)


def _per_view(values: torch.Tensor) -> torch.Tensor:
    """(V,) -> (V, 1, 1, 1, 1), broadcastable over (V, T, 3, S, S)."""
    return values.view(-1, 1, 1, 1, 1)


def _grayscale(views: torch.Tensor) -> torch.Tensor:
    """Luma of (..., 3, H, W) as (..., 1, H, W)."""
    red, green, blue = views.unbind(dim=-3)
    return (LUMA_WEIGHTS[0] * red + LUMA_WEIGHTS[1] * green + LUMA_WEIGHTS[2] * blue).unsqueeze(-3)


def _color_jitter(views: torch.Tensor, draws: dict[str, torch.Tensor]) -> torch.Tensor:
    """Brightness, contrast, saturation then hue (fixed order) on (V, T, 3, S, S).

    Views that skip jitter get factor 1 and hue shift 0, which leaves them unchanged. Contrast
    blends towards each frame's mean luma, saturation towards each pixel's luma.
    """
    jitter = draws["jitter"]
    brightness = _per_view(torch.where(jitter, draws["brightness"], 1.0))
    contrast = _per_view(torch.where(jitter, draws["contrast"], 1.0))
    saturation = _per_view(torch.where(jitter, draws["saturation"], 1.0))
    hue_shift = _per_view(torch.where(jitter, draws["hue"], 0.0))

    views = (views * brightness).clamp_(0.0, 1.0)
    frame_mean_luma = _grayscale(views).mean(dim=(-3, -2, -1), keepdim=True)  # (V, T, 1, 1, 1)
    views = torch.lerp(frame_mean_luma, views, contrast).clamp_(0.0, 1.0)  # c * x + (1 - c) * mean
    views = torch.lerp(_grayscale(views), views, saturation).clamp_(0.0, 1.0)
    if not bool((hue_shift != 0).any()):
        return views
    hue, sat, value = rgb_to_hsv(views).unbind(dim=-3)  # each (V, T, S, S)
    hue = torch.remainder(hue + hue_shift.squeeze(-1), 1.0)
    return hsv_to_rgb(torch.stack((hue, sat, value), dim=-3))


def _gaussian_kernels(size: int, sigma: torch.Tensor) -> torch.Tensor:
    """Normalised 1-D Gaussians over offsets -(size-1)/2 .. (size-1)/2, one per sigma: (len(sigma), size).

    torchvision's `_get_gaussian_kernel1d`, for each view's sigma at once.
    """
    offsets = torch.arange(size, dtype=sigma.dtype, device=sigma.device) - (size - 1) / 2
    gaussian = torch.exp(-0.5 * (offsets / sigma.unsqueeze(1)) ** 2)  # (V, size)
    return gaussian / gaussian.sum(dim=1, keepdim=True)


def _gaussian_blur(views: torch.Tensor, sigma: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """torchvision's GaussianBlur(kernel_size=(5, 9)) of (V, T, 3, S, S), one sigma per view for both axes;
    views not in `apply` are kept.

    The 2-D kernel is the outer product of a 9-tap vertical and a 5-tap horizontal Gaussian, applied as two
    1-D convolutions to the reflect-padded planes (torchvision pads reflect, 2 columns and 4 rows each side).
    Only the views drawn for blurring are convolved: one grouped convolution covers every (view, frame,
    channel) plane of them.
    """
    if not bool(apply.any()):
        return views
    chosen = apply.nonzero().squeeze(1)  # (V_blur,)
    blurred_views = views[chosen]  # (V_blur, T, 3, S, S)
    num_views, num_steps, channels, height, width = blurred_views.shape
    kernel_width, kernel_height = BLUR_KERNEL_SIZE
    view_sigma = sigma[chosen].to(views.dtype)
    repeats = num_steps * channels
    horizontal = _gaussian_kernels(kernel_width, view_sigma).repeat_interleave(repeats, dim=0)  # (planes, kw)
    vertical = _gaussian_kernels(kernel_height, view_sigma).repeat_interleave(repeats, dim=0)  # (planes, kh)

    planes = num_views * repeats
    pad_x, pad_y = kernel_width // 2, kernel_height // 2
    flat = F.pad(blurred_views.reshape(1, planes, height, width), (pad_x, pad_x, pad_y, pad_y), mode="reflect")
    flat = F.conv2d(flat, horizontal.view(planes, 1, 1, kernel_width), groups=planes)
    flat = F.conv2d(flat, vertical.view(planes, 1, kernel_height, 1), groups=planes)
    return views.index_copy(0, chosen, flat.view(num_views, num_steps, channels, height, width))


def prepare_frames(frames: torch.Tensor | np.ndarray, image_size: int, mean: Sequence[float], std: Sequence[float],
                   mode: str = "squash") -> torch.Tensor:
    """The one evaluation-time frame preparation (evaluation, feature cache, own-video commands):
    uint8 (L, H, W, 3) -> normalised float (L, 3, S, S).

    squash: frames decoded squashed to S x S pass unchanged (any other size: centre square of the short side,
    resized). native: the central S x S pixels at native resolution (FineGym, Kinetics, as published); a frame
    smaller than S in either direction falls back to the squash preparation.
    """
    video = torch.as_tensor(frames)[None]  # (1, L, H, W, 3)
    height, width = video.shape[2:4]
    if mode == "native" and height >= image_size and width >= image_size:
        top, left = math.ceil((height - image_size) / 2), math.ceil((width - image_size) / 2)
        video = video[:, :, top:top + image_size, left:left + image_size]
    return normalize(augment_views(video, None, image_size, None)[0], mean, std)
