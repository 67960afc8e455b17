"""Frozen backbones: exact agreement with the Hugging Face models and with DINO / torchvision weights files,
chunking, freezing, pixel patches, the ResNet-50 ablation, errors."""

import argparse
import math
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers import (
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    ResNetConfig,
    ResNetModel,
    ViTConfig,
    ViTModel,
)

from mvformer.cli import main
from mvformer.config import BackboneConfig, ModelConfig
from mvformer.errors import MVFormerError
from mvformer.model.backbone import FrozenBackbone, build_backbone
from mvformer.model.mvformer import MVFormer
from mvformer.model.weights import convert_backbone
from tolerances import assert_same_maths

SMALL = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64}
# The test ViTs' longest sum is the 8x8x3 = 192-term patch projection or a width-192 layer; 2 blocks of about
# 6 chained reductions each (norm, qkv, scores, weighted sum, projection, MLP), rounded up.
VIT_REDUCTION, VIT_DEPTH = 192, 16


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


def dino_interpolate_pos_encoding(pos_embed, npatch, w, h, patch_size):
    """DINO's `VisionTransformer.interpolate_pos_encoding` restated line by line (x of `npatch` patch tokens, an
    input of w x h pixels, DINO's own names: w is the input's dim 2)."""
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    class_pos_embed = pos_embed[:, 0]
    patch_pos_embed = pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0 = w // patch_size
    h0 = h // patch_size
    w0, h0 = w0 + 0.1, h0 + 0.1  # "a small number to avoid floating point error in the interpolation"
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)), mode="bicubic")
    assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def test_vit_other_image_size_takes_dinos_position_table(tmp_path):
    """At 48 px a 32 px ViT adds DINO's resized position table: the same network as the HF model with that
    table, and not transformers' own resize (which differs by the 0.1 offset). The table is resized once, in
    float32, when the backbone is built, so the comparison is in float32 with float32's rounding bound."""
    config = ViTConfig(**SMALL, image_size=32, patch_size=8)
    model = saved_model(ViTModel, config, tmp_path)
    backbone = build_backbone("vit", [3], path=tmp_path, image_size=48)
    pixels = frames(2, size=48)

    patches, cls = backbone(pixels)

    assert backbone.grid == (6, 6) and patches.shape == (2, 36, 32)
    transformers_resize = reference(model, pixels, [3], prefix_tokens=1, interpolate_pos_encoding=True)
    with torch.no_grad():
        table = model.embeddings.position_embeddings
        model.embeddings.position_embeddings = nn.Parameter(dino_interpolate_pos_encoding(table, 36, 48, 48, 8))
        expected_patches, expected_cls = reference(model, pixels, [3], prefix_tokens=1, interpolate_pos_encoding=True)
    assert_same_maths(patches, expected_patches, VIT_REDUCTION, VIT_DEPTH)
    assert_same_maths(cls, expected_cls, VIT_REDUCTION, VIT_DEPTH)
    assert (patches - transformers_resize[0]).abs().max() > 1e-3  # the offset matters


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
    with pytest.raises(MVFormerError, match="'resnet'.*vit, dinov2, tiny, patches, resnet50"):
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


# ---- Original DINO / timm / torchvision weights files (mvformer.model.weights) ----

class DinoBlock(nn.Module):
    """One block of facebookresearch/dino's VisionTransformer, written plainly (pre-norm, fused qkv, exact GELU)."""

    def __init__(self, width, heads, mlp_width):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = nn.ModuleDict({"qkv": nn.Linear(width, 3 * width), "proj": nn.Linear(width, width)})
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.ModuleDict({"fc1": nn.Linear(width, mlp_width), "fc2": nn.Linear(mlp_width, width)})

    def forward(self, x):
        batch, tokens, width = x.shape
        qkv = self.attn["qkv"](self.norm1(x)).reshape(batch, tokens, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, N, head_dim)
        weights = (q @ k.transpose(-2, -1) * (width // self.heads) ** -0.5).softmax(dim=-1)
        x = x + self.attn["proj"]((weights @ v).transpose(1, 2).reshape(batch, tokens, width))
        return x + self.mlp["fc2"](F.gelu(self.mlp["fc1"](self.norm2(x))))


class DinoViT(nn.Module):
    """DINO's ViT key layout (cls_token, pos_embed, patch_embed.proj, blocks.N.*, norm); forward -> block outputs."""

    def __init__(self, width, heads, depth=2, patch=8, image=32, mlp_width=80, seed=0):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (image // patch) ** 2, width))
        self.patch_embed = nn.ModuleDict({"proj": nn.Conv2d(3, width, patch, stride=patch)})
        self.blocks = nn.ModuleList(DinoBlock(width, heads, mlp_width) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # every weight random, layer norms included, so a swapped name cannot go unnoticed
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)

    def forward(self, pixels):
        patches = self.patch_embed["proj"](pixels).flatten(2).transpose(1, 2)  # (F, P, C)
        x = torch.cat([self.cls_token.expand(len(pixels), -1, -1), patches], dim=1)
        patch = self.patch_embed["proj"].kernel_size[0]
        x = x + dino_interpolate_pos_encoding(self.pos_embed, patches.shape[1], *pixels.shape[2:], patch)
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return outputs


def dino_reference(vit, pixels, blocks):
    """Patch tokens of the chosen blocks and the final-norm CLS of the deepest, from the DINO-layout forward."""
    with torch.no_grad():
        outputs = vit(pixels)
        patches = torch.cat([outputs[i][:, 1:] for i in blocks], dim=-1)
        return patches, vit.norm(outputs[max(blocks)][:, 0])


def write_dino_file(vit, path, kind):
    """A released backbone file (.pth or timm .safetensors) or a DINO training checkpoint (teacher and student)."""
    state = vit.state_dict()
    if kind == "safetensors":
        save_file(state, path)
    elif kind == "training_checkpoint":
        student = {f"module.backbone.{key}": value + 1 for key, value in state.items()}
        teacher = {f"backbone.{key}": value for key, value in state.items()}
        head = {"head.mlp.0.weight": torch.ones(4, 3), "head.last_layer.weight_g": torch.ones(4, 1)}
        student_head = {f"module.{key}": value for key, value in head.items()}
        torch.save({"student": {**student, **student_head}, "teacher": {**teacher, **head}, "epoch": 100,
                    "args": argparse.Namespace(arch="vit_tiny", patch_size=8)}, path)
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("kind, name", [("pth", "dino_deittiny8.pth"), ("safetensors", "model.safetensors"),
                                        ("training_checkpoint", "checkpoint.pth")])
def test_dino_file_matches_dino_forward_through_loader(tmp_path, kind, name):
    vit = DinoViT(width=192, heads=3).eval()  # DINO's vit_tiny width: 3 heads from the width table
    path = write_dino_file(vit, tmp_path / name, kind)
    backbone = build_backbone("vit", [0, 1], path=path, image_size=32)
    pixels = frames(3).double()

    patches, cls = backbone.double()(pixels)  # the mapping is exact: compared in float64

    expected_patches, expected_cls = dino_reference(vit.double(), pixels, [0, 1])
    assert (backbone.patch_dim, backbone.cls_dim, backbone.grid) == (384, 192, (4, 4))
    assert_same_maths(patches, expected_patches, VIT_REDUCTION, VIT_DEPTH)
    assert_same_maths(cls, expected_cls, VIT_REDUCTION, VIT_DEPTH)


@pytest.mark.parametrize("size", [40, 64])
def test_dino_file_at_other_sizes_matches_dinos_own_resize(tmp_path, size):
    """float32, as the position table is resized when the backbone is built (see the test above)."""
    vit = DinoViT(width=192, heads=3).eval()  # trained at 32 px (4 x 4 patches)
    path = write_dino_file(vit, tmp_path / "dino.pth", "pth")
    backbone = build_backbone("vit", [0, 1], path=path, image_size=size)
    pixels = frames(2, size=size)

    patches, cls = backbone(pixels)

    expected_patches, expected_cls = dino_reference(vit, pixels, [0, 1])
    assert backbone.grid == (size // 8, size // 8)
    assert_same_maths(patches, expected_patches, VIT_REDUCTION, VIT_DEPTH)
    assert_same_maths(cls, expected_cls, VIT_REDUCTION, VIT_DEPTH)


def test_converted_folder_holds_dino_config_and_gives_same_blocks(tmp_path):
    vit = DinoViT(width=48, heads=3, mlp_width=96, seed=2).eval()
    path = write_dino_file(vit, tmp_path / "dino_small_width.pth", "pth")

    summary = convert_backbone(path, tmp_path / "converted", num_heads=3)

    saved = ViTConfig.from_pretrained(tmp_path / "converted")
    assert summary == "ViT: width 48, 2 blocks, 3 heads, patch 8, 32 px"
    assert (saved.hidden_size, saved.num_hidden_layers, saved.num_attention_heads, saved.intermediate_size,
            saved.patch_size, saved.image_size) == (48, 2, 3, 96, 8, 32)
    assert (saved.layer_norm_eps, saved.qkv_bias, saved.hidden_act) == (1e-6, True, "gelu")
    backbone = build_backbone("vit", [0, 1], path=tmp_path / "converted", image_size=32).double()
    pixels = frames(2).double()
    for got, expected in zip(backbone(pixels), dino_reference(vit.double(), pixels, [0, 1])):
        assert_same_maths(got, expected, VIT_REDUCTION, VIT_DEPTH)


def test_convert_refuses_to_replace_without_overwrite(tmp_path):
    path = write_dino_file(DinoViT(width=192, heads=3), tmp_path / "vit.pth", "pth")
    convert_backbone(path, tmp_path / "out")
    with pytest.raises(MVFormerError, match="out: already exists; pass --overwrite"):
        convert_backbone(path, tmp_path / "out")
    convert_backbone(path, tmp_path / "out", overwrite=True)
    assert sorted(entry.name for entry in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]
    (tmp_path / "out" / "notes.txt").write_text("the user's")
    with pytest.raises(MVFormerError, match="not an earlier output .*it holds config.json, model.safetensors, notes"):
        convert_backbone(path, tmp_path / "out", overwrite=True)


@pytest.mark.parametrize("spoil, message", [(lambda value: value * float("nan"), "NaN or Inf"),
                                            (lambda value: value.long(), "is torch.int64, not floating point")])
def test_weights_that_cannot_be_used_are_refused_before_any_file(tmp_path, spoil, message):
    state = {key: spoil(value) for key, value in DinoViT(width=192, heads=3).state_dict().items()}
    torch.save(state, tmp_path / "spoilt.pth")
    with pytest.raises(MVFormerError, match=message):
        convert_backbone(tmp_path / "spoilt.pth", tmp_path / "out")
    with pytest.raises(MVFormerError, match=message):
        build_backbone("vit", [0], path=tmp_path / "spoilt.pth", image_size=32)
    assert not (tmp_path / "out").exists()


def test_unknown_width_asks_for_the_number_of_heads(tmp_path):
    path = write_dino_file(DinoViT(width=48, heads=3), tmp_path / "odd.pth", "pth")
    with pytest.raises(MVFormerError, match="width 48 .*--num-heads"):
        build_backbone("vit", [1], path=path, image_size=32)


def test_first_unplaceable_key_is_named_on_one_line(tmp_path):
    state = DinoViT(width=192, heads=3).state_dict()
    state["blocks.0.ls1.gamma"] = torch.ones(192)  # DINOv2 layer scale: not part of a DINO ViT
    state["mask_token"] = torch.zeros(1, 192)
    path = tmp_path / "dinov2_layout.pth"
    torch.save(state, path)
    with pytest.raises(MVFormerError) as error:
        build_backbone("vit", [1], path=path, image_size=32)
    expected = re.escape(str(path)) + r": key 'blocks\.0\.ls1\.gamma' has no place in a ViT.*"
    assert re.fullmatch(expected, str(error.value))


def test_missing_block_weight_is_named(tmp_path):
    state = DinoViT(width=192, heads=3).state_dict()
    del state["blocks.1.mlp.fc2.bias"]
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(MVFormerError, match=r"cut\.pth: key 'blocks\.1\.mlp\.fc2\.bias' is missing"):
        build_backbone("vit", [1], path=tmp_path / "cut.pth", image_size=32)


@pytest.mark.parametrize("name, content, message", [
    ("dino_vitbase8_pretrain.pth", None, "no such weights file"),
    ("broken.pth", b"not a checkpoint" * 4, "not a readable torch weights file"),
    ("broken.safetensors", b"not safetensors" * 4, "not a readable safetensors file"),
])
def test_missing_or_corrupt_file_is_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(MVFormerError) as error:
        build_backbone("vit", [11], path=path)
    assert str(error.value).startswith(f"{path}: {message}") and "\n" not in str(error.value)


SPRUNG = []


def spring_trap():
    SPRUNG.append(True)


class Trap:
    """Unpickling this object would call spring_trap: a stand-in for code hidden in an untrusted checkpoint."""

    def __reduce__(self):
        return spring_trap, ()


def test_arbitrary_pickled_objects_are_refused_unrun(tmp_path):
    path = tmp_path / "trap.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 4), "payload": Trap()}, path)
    with pytest.raises(MVFormerError, match=r"trap\.pth: holds a pickled .*spring_trap object"):
        build_backbone("vit", [0], path=path)
    assert SPRUNG == []


# ---- ResNet-50 ablation (transformers ResNetModel) ----

TINY_RESNET = {"embedding_size": 8, "hidden_sizes": [16, 24, 32, 40], "depths": [1, 2, 1, 1],
               "layer_type": "bottleneck"}


def saved_resnet(folder, seed=0):
    """A tiny random ResNetModel with random batch-norm statistics, saved with save_pretrained."""
    torch.manual_seed(seed)
    model = ResNetModel(ResNetConfig(**TINY_RESNET)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_()
                module.bias.normal_()
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize("size, side", [(64, 2), (50, 2), (224, 7)])
def test_resnet_last_stage_map_is_the_patch_tokens_and_pooled_output_the_cls(tmp_path, size, side):
    model = saved_resnet(tmp_path)
    backbone = build_backbone("resnet50", [3], path=tmp_path, image_size=size)
    pixels = frames(2, size=size)

    patches, cls = backbone(pixels)

    with torch.no_grad():
        output = model(pixels, output_hidden_states=True)
    last_map = output.hidden_states[4]  # (F, 40, side, side)
    assert (backbone.grid, backbone.patch_dim, backbone.cls_dim) == ((side, side), 40, 40)
    assert last_map.shape[2:] == (side, side)
    torch.testing.assert_close(patches, last_map.flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cls, output.pooler_output.flatten(1), atol=1e-5, rtol=1e-5)
    assert backbone.mean == (0.485, 0.456, 0.406) and backbone.std == (0.229, 0.224, 0.225)


def test_resnet_two_stages_are_averaged_to_the_last_grid_and_concatenated(tmp_path):
    model = saved_resnet(tmp_path)
    backbone = build_backbone("resnet50", [2, 3], path=tmp_path, image_size=64)
    pixels = frames(2, size=64)

    patches, _ = backbone(pixels)

    with torch.no_grad():
        hidden = model(pixels, output_hidden_states=True).hidden_states
    stage2 = hidden[3].reshape(2, 32, 2, 2, 2, 2).mean(dim=(3, 5))  # (F, 32, 4, 4) -> mean of each 2x2 cell
    expected = torch.cat([stage2, hidden[4]], dim=1).flatten(2).transpose(1, 2)  # (F, 4, 72)
    assert backbone.patch_dim == 72
    torch.testing.assert_close(patches, expected, atol=1e-5, rtol=1e-5)


def test_resnet_runs_only_needed_stages_and_checks_blocks(tmp_path):
    saved_resnet(tmp_path)
    assert len(build_backbone("resnet50", [1], path=tmp_path, image_size=64).stages) == 2
    with pytest.raises(MVFormerError, match=r"block index 4 out of range \[0, 4\)"):
        build_backbone("resnet50", [4], path=tmp_path, image_size=64)
    with pytest.raises(MVFormerError, match="model_type 'resnet' does not fit backbone 'vit'"):
        build_backbone("vit", [0], path=tmp_path)


class TorchvisionBottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride in the 3x3 conv), written plainly."""

    def __init__(self, in_width, out_width, stride):
        super().__init__()
        mid = out_width // 4
        self.conv1, self.bn1 = nn.Conv2d(in_width, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, out_width, 1, bias=False), nn.BatchNorm2d(out_width)
        self.downsample = nn.Sequential(nn.Conv2d(in_width, out_width, 1, stride, bias=False),
                                        nn.BatchNorm2d(out_width)) if stride != 1 or in_width != out_width else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class TorchvisionResNet(nn.Module):
    """torchvision's ResNet key layout (conv1, bn1, layer1..4, fc); forward -> layer4's map."""

    def __init__(self, stem=8, widths=(16, 24, 32, 40), depths=(1, 2, 1, 1)):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False), nn.BatchNorm2d(stem)
        in_width = stem
        for stage, (width, depth) in enumerate(zip(widths, depths), start=1):
            layers = [TorchvisionBottleneck(in_width if i == 0 else width, width, 2 if i == 0 and stage > 1 else 1)
                      for i in range(depth)]
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
            in_width = width
        self.fc = nn.Linear(in_width, 10)

    def forward(self, pixels):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(pixels))), 3, 2, 1)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def torchvision_checkpoint(state, layout):
    """torchvision's own file, a DDP training checkpoint, or a BYOL one as CARL's BYOL_1000.pth (online encoder,
    momentum encoder, projector, predictor; the published loader keeps module.encoder.* only)."""
    if layout == "torchvision":
        return state
    if layout == "ddp":
        return {"model": {f"module.{key}": value for key, value in state.items()}, "epoch": 3}
    online = {f"module.encoder.{key}": value for key, value in state.items()}
    momentum = {f"module.encoder_k.{key}": value.float() + 1 for key, value in state.items()}
    heads = {"module.projector.0.weight": torch.ones(8, 40), "module.predictor.0.weight": torch.ones(8, 8)}
    return {"model": {**momentum, **online, **heads}, "optimizer": {"state": {}, "param_groups": []}}


@pytest.mark.parametrize("layout", ["torchvision", "ddp", "byol"])
def test_torchvision_layout_resnet_file_matches_its_forward(tmp_path, layout):
    torch.manual_seed(3)
    resnet = TorchvisionResNet().eval()
    with torch.no_grad():
        for module in resnet.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_()
                module.bias.normal_()
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision_checkpoint(resnet.state_dict(), layout), path)
    backbone = build_backbone("resnet50", [3], path=path, image_size=64)
    pixels = frames(2, size=64)

    patches, cls = backbone(pixels)

    with torch.no_grad():
        last_map = resnet(pixels)  # (F, 40, 2, 2)
    torch.testing.assert_close(patches, last_map.flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cls, last_map.mean(dim=(2, 3)), atol=1e-5, rtol=1e-5)
    with pytest.raises(MVFormerError, match="holds a ResNet .*does not fit backbone 'vit'"):
        build_backbone("vit", [0], path=path)


@pytest.mark.parametrize("pooling, num_tokens, token_id", [("lstp", 3, "pooling"), ("max", 1, "none")])
def test_resnet_backbone_drives_the_model(tmp_path, pooling, num_tokens, token_id):
    saved_resnet(tmp_path)
    model_cfg = ModelConfig(pooling=pooling, num_tokens=num_tokens, token_id=token_id)
    backbone_cfg = BackboneConfig(name="resnet50", path=str(tmp_path), blocks=[3])
    model = MVFormer(model_cfg, backbone_cfg, image_size=64, train_len=5).eval()

    embeddings = model(frames(10, size=64).view(2, 5, 3, 64, 64))

    assert embeddings.shape == (2, 5, 128)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(2, 5))


def test_convert_backbone_command(tmp_path, capsys):
    path = write_dino_file(DinoViT(width=48, heads=3), tmp_path / "vit.pth", "pth")

    assert main(["convert-backbone", str(path), str(tmp_path / "out"), "--num-heads", "3"]) == 0
    assert "ViT: width 48, 2 blocks, 3 heads, patch 8, 32 px" in capsys.readouterr().out
    assert ViTConfig.from_pretrained(tmp_path / "out").num_attention_heads == 3
    assert main(["convert-backbone", str(tmp_path / "absent.pth"), str(tmp_path / "other")]) == 2
    assert capsys.readouterr().err == f"mvformer: error: {tmp_path / 'absent.pth'}: no such weights file\n"


def test_a_saved_backbone_holding_nan_is_refused_when_built(tmp_path):
    """A save_pretrained folder with NaN weights (not read through the weights-file mapping) is caught at build
    time, with one line, instead of training on NaN features."""
    model = saved_model(ViTModel, ViTConfig(**SMALL, image_size=32, patch_size=8), tmp_path)
    with torch.no_grad():
        model.get_parameter("layers.1.attention.q_proj.weight").fill_(float("nan"))
    model.save_pretrained(tmp_path)
    with pytest.raises(MVFormerError, match=r"the backbone's weights hold NaN or Inf \(first: 'layers.1"):
        build_backbone("vit", [1], path=tmp_path, image_size=32)
