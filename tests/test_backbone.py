"""Frozen backbones: exact agreement with the Hugging Face models, chunking, freezing, pixel patches, errors."""

import re

import pytest
import torch
from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel
from transformers import ViTConfig, ViTModel

from mvformer.backbone import FrozenBackbone, build_backbone
from mvformer.errors import MVFormerError

SMALL = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64)


def saved_model(model_class, config, folder):
    """A random model saved with `save_pretrained` into `folder`, returned in eval mode."""
    torch.manual_seed(0)
    kwargs = {"add_pooling_layer": False} if model_class is ViTModel else {}
    model = model_class(config, **kwargs).eval()
    model.save_pretrained(folder)
    return model


def frames(count, size=32, seed=1):
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def reference(model, pixels, blocks, prefix_tokens, **kwargs):
    """Patch tokens and CLS sliced by hand from the full model's hidden states."""
    with torch.no_grad():
        hidden = model(pixels, output_hidden_states=True, **kwargs).hidden_states
    patches = torch.cat([hidden[i + 1][:, prefix_tokens:] for i in blocks], dim=-1)  # (F, P, C * len(blocks))
    cls = model.layernorm(hidden[max(blocks) + 1][:, 0])  # (F, C)
    return patches, cls


def test_vit_round_trip_matches_hidden_states(tmp_path):
    config = ViTConfig(**SMALL, image_size=32, patch_size=8)
    model = saved_model(ViTModel, config, tmp_path)
    backbone = build_backbone("vit", [1, 3], path=tmp_path, image_size=32)
    pixels = frames(5)

    patches, cls = backbone(pixels)

    expected_patches, expected_cls = reference(model, pixels, [1, 3], prefix_tokens=1)
    assert patches.shape == (5, 16, 2 * 32) and cls.shape == (5, 32)
    assert (backbone.patch_dim, backbone.cls_dim, backbone.grid) == (64, 32, (4, 4))
    assert torch.allclose(patches, expected_patches, atol=1e-5)
    assert torch.allclose(cls, expected_cls, atol=1e-5)
    # last chosen block is the final one: CLS is DINO's standard feature
    with torch.no_grad():
        assert torch.allclose(cls, model(pixels).last_hidden_state[:, 0], atol=1e-5)


def test_vit_runs_only_needed_layers(tmp_path):
    config = ViTConfig(**SMALL, image_size=32, patch_size=8)
    model = saved_model(ViTModel, config, tmp_path)
    backbone = build_backbone("vit", [0, 2], path=tmp_path, image_size=32)
    pixels = frames(3)

    patches, cls = backbone(pixels)

    assert len(backbone.layers) == 3
    expected_patches, expected_cls = reference(model, pixels, [0, 2], prefix_tokens=1)
    assert torch.allclose(patches, expected_patches, atol=1e-5)
    assert torch.allclose(cls, expected_cls, atol=1e-5)


def test_vit_other_image_size_interpolates_positions(tmp_path):
    config = ViTConfig(**SMALL, image_size=32, patch_size=8)
    model = saved_model(ViTModel, config, tmp_path)
    backbone = build_backbone("vit", [3], path=tmp_path, image_size=48)
    pixels = frames(2, size=48)

    patches, cls = backbone(pixels)

    assert backbone.grid == (6, 6) and patches.shape == (2, 36, 32)
    expected_patches, expected_cls = reference(model, pixels, [3], prefix_tokens=1, interpolate_pos_encoding=True)
    assert torch.allclose(patches, expected_patches, atol=1e-5)
    assert torch.allclose(cls, expected_cls, atol=1e-5)


@pytest.mark.parametrize(
    "model_class, config, prefix_tokens",
    [
        (Dinov2Model, Dinov2Config(**SMALL, image_size=28, patch_size=14), 1),
        (Dinov2WithRegistersModel, Dinov2WithRegistersConfig(**SMALL, image_size=28, patch_size=14), 1 + 4),
    ],
    ids=["dinov2", "dinov2_registers"],
)
def test_dinov2_round_trip_drops_cls_and_registers(tmp_path, model_class, config, prefix_tokens):
    model = saved_model(model_class, config, tmp_path)
    backbone = build_backbone("dinov2", [1, 3], path=tmp_path, image_size=42)
    pixels = frames(4, size=42)

    patches, cls = backbone(pixels)

    expected_patches, expected_cls = reference(model, pixels, [1, 3], prefix_tokens=prefix_tokens)
    assert backbone.grid == (3, 3)
    assert patches.shape == (4, 9, 64) and cls.shape == (4, 32)
    assert torch.allclose(patches, expected_patches, atol=1e-5)
    assert torch.allclose(cls, expected_cls, atol=1e-5)


def test_chunking_does_not_change_output():
    pixels = frames(7)
    chunked = build_backbone("tiny", [1, 3], image_size=32, chunk_size=3)(pixels)
    whole = build_backbone("tiny", [1, 3], image_size=32, chunk_size=64)(pixels)
    for got, expected in zip(chunked, whole):
        assert torch.allclose(got, expected, atol=1e-6)


def test_backbone_is_frozen_and_stays_in_eval_mode():
    backbone = build_backbone("tiny", [3], image_size=32)
    parent = torch.nn.Sequential(backbone)
    parent.train()

    assert isinstance(backbone, FrozenBackbone)
    assert not backbone.training and not any(module.training for module in backbone.modules())
    assert not any(parameter.requires_grad for parameter in backbone.parameters())
    patches, cls = backbone(frames(2).requires_grad_(True))
    assert patches.grad_fn is None and cls.grad_fn is None


def test_tiny_is_deterministic_and_leaves_global_rng_alone():
    pixels = frames(2, size=128)
    torch.manual_seed(123)
    first = build_backbone("tiny", [0, 3], image_size=128)
    after_build = torch.rand(1)
    torch.manual_seed(123)
    second = build_backbone("tiny", [0, 3], image_size=128)

    assert torch.equal(after_build, torch.rand(1))
    assert first.grid == (8, 8)  # patch size 16 from 128 px up
    for a, b in zip(first(pixels), second(pixels)):
        assert torch.equal(a, b)
    assert first(pixels)[0].std() > 0


def test_patches_backbone_returns_pixels_and_position_code():
    backbone = build_backbone("patches", [0], image_size=32)
    image = torch.arange(16.0).reshape(1, 1, 4, 4)  # value of patch (r, c) is 4 r + c
    image = image.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3).expand(2, 3, 32, 32)

    patches, cls = backbone(image)

    assert backbone.grid == (4, 4) and backbone.patch_dim == 224
    assert patches.shape == (2, 16, 224) and cls.shape == (2, 224)
    pixel_part, position_part = patches[..., :192], patches[..., 192:]
    expected_pixels = torch.arange(16.0)[None, :, None].expand(2, 16, 192)
    assert torch.equal(pixel_part, expected_pixels)
    assert len(torch.unique(position_part[0], dim=0)) == 16  # every patch has its own position code
    assert torch.equal(position_part[0], position_part[1])
    assert torch.allclose(cls, patches.mean(dim=1))


def test_patches_keep_pixel_order_within_patch():
    image = torch.randn(1, 3, 16, 16)
    patches, _ = build_backbone("patches", [0], image_size=16)(image)
    # patch (row 1, col 0) is token 2; channels ordered (colour, y, x)
    assert torch.equal(patches[0, 2, :192], image[0, :, 8:16, 0:8].reshape(-1))


def test_missing_folder_is_reported(tmp_path):
    missing = tmp_path / "dino-vits16"
    with pytest.raises(MVFormerError, match="dino-vits16.*no weights folder"):
        build_backbone("vit", [11], path=missing)


def test_folder_without_config_is_reported(tmp_path):
    with pytest.raises(MVFormerError, match=re.escape(str(tmp_path)) + ".*config.json"):
        build_backbone("dinov2", [0], path=tmp_path)


def test_folder_with_wrong_model_type_is_reported(tmp_path):
    saved_model(ViTModel, ViTConfig(**SMALL, image_size=32, patch_size=8), tmp_path)
    with pytest.raises(MVFormerError, match="model_type 'vit'"):
        build_backbone("dinov2", [0], path=tmp_path)


def test_unknown_name_lists_known_names():
    with pytest.raises(MVFormerError, match="'resnet'.*vit, dinov2, tiny, patches"):
        build_backbone("resnet", [0])


@pytest.mark.parametrize("blocks", [[4], [-1], [], [1, 1]])
def test_bad_block_indices_are_reported(tmp_path, blocks):
    saved_model(ViTModel, ViTConfig(**SMALL, image_size=32, patch_size=8), tmp_path)
    with pytest.raises(MVFormerError, match=re.escape(str(tmp_path))):
        build_backbone("vit", blocks, path=tmp_path, image_size=32)


def test_patches_reject_other_blocks():
    with pytest.raises(MVFormerError, match="patches"):
        build_backbone("patches", [1])


def test_wrong_frame_size_is_reported():
    backbone = build_backbone("tiny", [0], image_size=32)
    with pytest.raises(MVFormerError, match=r"\(2, 3, 64, 64\)"):
        backbone(frames(2, size=64))
