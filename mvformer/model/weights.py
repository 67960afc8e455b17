"""Checkpoint-format conversion: weights files as researchers hold them -> transformers models.

Two layouts are read, from a `.pth`/`.pt`/`.bin`/`.ckpt` file (torch.load with weights_only=True: tensors and plain
containers only, never arbitrary pickled objects) or a `.safetensors` file:
  - ViT in the facebookresearch/dino and timm key layout (cls_token, pos_embed, patch_embed.proj.*, blocks.N.norm1.*,
    blocks.N.attn.qkv.*, blocks.N.attn.proj.*, blocks.N.norm2.*, blocks.N.mlp.fc1.*, blocks.N.mlp.fc2.*, norm.*)
    -> transformers ViTModel (qkv split into query, key, value; layer_norm_eps 1e-6 as DINO uses);
  - ResNet in the torchvision key layout (conv1, bn1, layerS.I.convJ/bnJ/downsample.*: torchvision's and DINO's
    ResNet-50 files) -> transformers ResNetModel.
DINO's training checkpoints wrap the backbone: the "teacher" entry is used (as DINO's own evaluation does), and the
"module." (DistributedDataParallel) and "backbone." (DINO's MultiCropWrapper) prefixes are removed; of a BYOL or MoCo
checkpoint only the online encoder is kept. Projection and classifier heads (head.*, and fc.* of a ResNet) are
dropped: a frozen feature extractor never runs them.
"""

from __future__ import annotations

import argparse
import contextlib
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import PreTrainedModel, ResNetConfig, ResNetModel, ViTConfig, ViTModel

from mvformer.errors import MVFormerError
from mvformer.files import check_output_place, output_folder
from mvformer.hub import WEIGHTS_FILE_SUFFIXES

WRAPPER_KEYS = ("teacher", "student", "model", "state_dict")  # DINO training checkpoints first: teacher, student
WRAPPER_PREFIXES = ("module.", "backbone.")
BACKBONE_FIRST_KEYS = ("cls_token", "blocks.", "conv1.", "layer1.")  # a bare ViT or ResNet state dict
ONLINE_ENCODER_PREFIXES = ("encoder.", "encoder_q.")  # BYOL (CARL's BYOL_1000.pth), MoCo v2
DINO_LAYER_NORM_EPS = 1e-6
# ViT width -> attention heads: DINO's vit_tiny/small/base, timm's ViT-L and ViT-H (all 64 channels per head).
VIT_HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
VIT_IGNORED_PREFIXES = ("head.",)
RESNET_IGNORED_PREFIXES = ("head.", "fc.")
CONVERTED_FILES = ("config.json", "model.safetensors")
VIT_TOP_LEVEL = {  # DINO/timm name -> transformers ViTModel name, outside the blocks
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
VIT_BLOCK_PARTS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
VIT_BLOCK_KEY = re.compile(rf"blocks\.(\d+)\.({'|'.join(map(re.escape, VIT_BLOCK_PARTS))})\.(weight|bias)")


def is_weights_file(path: str | Path) -> bool:
    """True when `path` names a single weights file (an existing file, or a weights suffix) rather than a folder."""
    path = Path(path)
    return path.is_file() or (not path.is_dir() and path.suffix.lower() in WEIGHTS_FILE_SUFFIXES)


def first_nonfinite(state: dict[str, torch.Tensor]) -> str | None:
    """The first key of a state dict whose floating-point tensor holds NaN or Inf, or None."""
    return next((key for key, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()),
                None)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The backbone tensors of a weights file: unwrapped from a training checkpoint, prefixes removed, on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise MVFormerError(f"{path}: no such weights file")
    content = _read_safetensors(path) if path.suffix.lower() == ".safetensors" else _read_torch_file(path)
    if not isinstance(content, dict):
        raise MVFormerError(f"{path}: holds a {type(content).__name__}, not a dictionary of tensors")
    wrapper = next((key for key in WRAPPER_KEYS if isinstance(content.get(key), dict)), None)
    tensors = content[wrapper] if wrapper else content
    inside = f" (in its '{wrapper}' entry)" if wrapper else ""
    state = {}
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise MVFormerError(f"{path}: entry '{key}'{inside} is a {type(value).__name__}, not a tensor")
        state[_strip_prefixes(str(key))] = value
    if not state:
        raise MVFormerError(f"{path}: holds no tensors{inside}")
    return _online_encoder(state)


def _online_encoder(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A self-supervised training checkpoint's online encoder (BYOL `encoder.*`, MoCo `encoder_q.*`), its momentum
    encoder, projector and predictor dropped, as the published code reads BYOL_1000.pth; other files unchanged."""
    if any(key.startswith(BACKBONE_FIRST_KEYS) for key in state):
        return state
    for prefix in ONLINE_ENCODER_PREFIXES:
        encoder = {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}
        if encoder:
            return encoder
    return state


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as error:
        raise MVFormerError(f"{path}: not a readable safetensors file ({_first_line(error)})") from error


def _read_torch_file(path: Path) -> object:
    """torch.load with weights_only=True; argparse.Namespace (the `args` of DINO's checkpoints) is also allowed."""
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    with allow([argparse.Namespace]) if allow else contextlib.nullcontext():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            refused = re.search(r"GLOBAL ([\w.]+)", str(error))
            if refused:
                raise MVFormerError(f"{path}: holds a pickled {refused.group(1)} object; only tensors and plain "
                                    f"containers are read (weights_only), so it is refused") from error
            raise MVFormerError(f"{path}: not a readable torch weights file ({_first_line(error)})") from error
        except (RuntimeError, EOFError, ValueError, OSError) as error:
            raise MVFormerError(f"{path}: not a readable torch weights file ({_first_line(error)})") from error


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _strip_prefixes(key: str) -> str:
    """'module.backbone.blocks.0...' -> 'blocks.0...': the wrappers DINO's training puts around a backbone."""
    for prefix in WRAPPER_PREFIXES:
        key = key.removeprefix(prefix)
    return key


def load_backbone_file(path: str | Path, num_heads: int | None = None) -> PreTrainedModel:
    """A DINO/timm ViT or torchvision ResNet weights file as a transformers ViTModel or ResNetModel (eval, float32).

    `num_heads` is needed only for a ViT whose width is not in VIT_HEADS_BY_WIDTH (heads cannot be read from weights).
    """
    state = read_state_dict(path)
    if "cls_token" in state or any(key.startswith("blocks.") for key in state):
        return _vit_from_state_dict(state, path, num_heads)
    if "conv1.weight" in state:
        return _resnet_from_state_dict(state, path)
    raise MVFormerError(f"{path}: key '{next(iter(state))}' fits neither a DINO/timm ViT (no cls_token) nor a "
                        f"torchvision ResNet (no conv1.weight)")


def _vit_from_state_dict(state: dict[str, torch.Tensor], path: str | Path, num_heads: int | None) -> ViTModel:
    """Build the ViTConfig from the tensor shapes, then map every DINO key to its transformers name."""
    state = _drop_ignored(state, VIT_IGNORED_PREFIXES)
    depth = 1 + max((int(m.group(1)) for key in state if (m := re.match(r"blocks\.(\d+)\.", key))), default=-1)
    qkv_bias = "blocks.0.attn.qkv.bias" in state
    block_keys = [f"blocks.{block}.{part}.{kind}" for block in range(max(depth, 1)) for part in VIT_BLOCK_PARTS
                  for kind in ("weight", "bias") if qkv_bias or (part, kind) != ("attn.qkv", "bias")]
    unplaced = next((key for key in state if key not in VIT_TOP_LEVEL and not VIT_BLOCK_KEY.fullmatch(key)), None)
    if unplaced:
        raise MVFormerError(f"{path}: key '{unplaced}' has no place in a ViT (DINO/timm layout expected)")
    _require(state, path, [*VIT_TOP_LEVEL, *block_keys])
    width, channels, patch_size, _ = state["patch_embed.proj.weight"].shape  # (C, 3, p, p)
    num_positions = state["pos_embed"].shape[1] - 1
    side = round(num_positions ** 0.5)
    if side * side != num_positions:
        raise MVFormerError(f"{path}: pos_embed holds {num_positions} patch positions, not a square grid")
    if num_heads is not None and num_heads < 1:
        raise MVFormerError(f"{path}: number of attention heads {num_heads} must be at least 1")
    heads = num_heads or VIT_HEADS_BY_WIDTH.get(width)
    if heads is None:
        raise MVFormerError(f"{path}: width {width} is not a known DINO/timm ViT width "
                            f"({', '.join(map(str, VIT_HEADS_BY_WIDTH))}); give the number of attention heads: "
                            f"mvformer convert-backbone {path} OUT_DIR --num-heads H, then set backbone.path to "
                            f"OUT_DIR")
    if width % heads:
        raise MVFormerError(f"{path}: width {width} is not divisible by {heads} attention heads")
    config = ViTConfig(
        hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
        intermediate_size=state["blocks.0.mlp.fc1.weight"].shape[0], image_size=side * patch_size,
        patch_size=patch_size, num_channels=channels, qkv_bias=qkv_bias,
        layer_norm_eps=DINO_LAYER_NORM_EPS, hidden_act="gelu", attn_implementation="sdpa",
    )
    model = ViTModel(config, add_pooling_layer=False)
    rename = _vit_renamer(set(model.state_dict()))
    mapped = dict(entry for key, value in state.items() for entry in _vit_entries(key, value, rename))
    return _load_mapped(model, mapped, path)


def _vit_renamer(target_keys: set[str]) -> Callable[[int, str], str]:
    """DINO block part -> transformers name, for the layout of the installed transformers (5.x or 4.x)."""
    if "layers.0.attention.q_proj.weight" in target_keys:
        parts = {"norm1": "layernorm_before", "attn.q": "attention.q_proj", "attn.k": "attention.k_proj",
                 "attn.v": "attention.v_proj", "attn.proj": "attention.o_proj", "norm2": "layernorm_after",
                 "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
        return lambda block, part: f"layers.{block}.{parts[part]}"
    parts = {"norm1": "layernorm_before", "attn.q": "attention.attention.query", "attn.k": "attention.attention.key",
             "attn.v": "attention.attention.value", "attn.proj": "attention.output.dense",
             "norm2": "layernorm_after", "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    return lambda block, part: f"encoder.layer.{block}.{parts[part]}"


def _vit_entries(key: str, value: torch.Tensor, rename: Callable[[int, str], str]) -> list[tuple[str, torch.Tensor]]:
    """The transformers (name, tensor) pairs one DINO entry (a VIT_TOP_LEVEL or VIT_BLOCK_KEY key) becomes."""
    if key in VIT_TOP_LEVEL:
        return [(VIT_TOP_LEVEL[key], value)]
    match = VIT_BLOCK_KEY.fullmatch(key)
    block, part, kind = int(match.group(1)), match.group(2), match.group(3)
    if part == "attn.qkv":  # rows [query; key; value], each (heads * head_dim) as transformers lays them out
        return [(f"{rename(block, 'attn.' + name)}.{kind}", rows)
                for name, rows in zip("qkv", value.chunk(3, dim=0))]
    return [(f"{rename(block, part)}.{kind}", value)]


RESNET_RULES = (  # torchvision name -> transformers ResNetModel name
    (re.compile(r"conv1\.weight"), lambda m: "embedder.embedder.convolution.weight"),
    (re.compile(r"bn1\.(\w+)"), lambda m: f"embedder.embedder.normalization.{m.group(1)}"),
    (re.compile(r"layer(\d)\.(\d+)\.conv(\d)\.weight"),
     lambda m: f"{_stage_layer(m)}.layer.{int(m.group(3)) - 1}.convolution.weight"),
    (re.compile(r"layer(\d)\.(\d+)\.bn(\d)\.(\w+)"),
     lambda m: f"{_stage_layer(m)}.layer.{int(m.group(3)) - 1}.normalization.{m.group(4)}"),
    (re.compile(r"layer(\d)\.(\d+)\.downsample\.0\.weight"),
     lambda m: f"{_stage_layer(m)}.shortcut.convolution.weight"),
    (re.compile(r"layer(\d)\.(\d+)\.downsample\.1\.(\w+)"),
     lambda m: f"{_stage_layer(m)}.shortcut.normalization.{m.group(3)}"),
)


def _resnet_name(key: str) -> str | None:
    """The transformers name of a torchvision ResNet key; None when the key has no place."""
    for pattern, rename in RESNET_RULES:
        match = pattern.fullmatch(key)
        if match:
            return rename(match)
    return None


def _stage_layer(match: re.Match) -> str:
    """torchvision layerS.I (S from 1) -> transformers encoder.stages.S-1.layers.I."""
    return f"encoder.stages.{int(match.group(1)) - 1}.layers.{match.group(2)}"


def _resnet_from_state_dict(state: dict[str, torch.Tensor], path: str | Path) -> ResNetModel:
    """Build the ResNetConfig from the torchvision tensor shapes (v1.5: stride in the 3x3 conv), then rename."""
    state = _drop_ignored(state, RESNET_IGNORED_PREFIXES)
    blocks = sorted({(int(m.group(1)), int(m.group(2)))
                     for key in state if (m := re.match(r"layer(\d)\.(\d+)\.", key))})  # (stage, block)
    stages = sorted({stage for stage, _ in blocks})
    if stages != list(range(1, len(stages) + 1)):
        raise MVFormerError(f"{path}: ResNet stages {stages} are not layer1, layer2, ... in order")
    bottleneck = "layer1.0.conv3.weight" in state
    last_conv = "conv3" if bottleneck else "conv2"
    _require(state, path, [f"layer{stage}.0.{last_conv}.weight" for stage in stages])
    config = ResNetConfig(
        num_channels=state["conv1.weight"].shape[1], embedding_size=state["conv1.weight"].shape[0],
        hidden_sizes=[state[f"layer{stage}.0.{last_conv}.weight"].shape[0] for stage in stages],
        depths=[sum(1 for s, _ in blocks if s == stage) for stage in stages],
        layer_type="bottleneck" if bottleneck else "basic", downsample_in_bottleneck=False,
    )
    model = ResNetModel(config)
    mapped = {}
    for key, value in state.items():
        name = _resnet_name(key)
        if name is None:
            raise MVFormerError(f"{path}: key '{key}' has no place in a ResNet (torchvision layout expected)")
        mapped[name] = value
    untracked = {key: value for key, value in model.state_dict().items() if key.endswith("num_batches_tracked")}
    return _load_mapped(model, {**untracked, **mapped}, path)


def _drop_ignored(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {key: value for key, value in state.items() if not key.startswith(prefixes)}


def _require(state: dict[str, torch.Tensor], path: str | Path, keys: list[str]) -> None:
    missing = next((key for key in keys if key not in state), None)
    if missing:
        raise MVFormerError(f"{path}: key '{missing}' is missing")


def _load_mapped(model: PreTrainedModel, mapped: dict[str, torch.Tensor], path: str | Path) -> PreTrainedModel:
    """Load renamed tensors strictly: every weight of the model filled, with the shape it expects."""
    expected = model.state_dict()
    missing = next((key for key in expected if key not in mapped), None)
    if missing:
        raise MVFormerError(f"{path}: nothing in the file fills '{missing}' of the {model.config.model_type} model "
                            f"(is a block or layer missing?)")
    wrong = next((key for key, value in mapped.items() if value.shape != expected[key].shape), None)
    if wrong:
        raise MVFormerError(f"{path}: '{wrong}' has shape {tuple(mapped[wrong].shape)}, the inferred "
                            f"{model.config.model_type} model expects {tuple(expected[wrong].shape)}")
    integer = next((key for key, value in mapped.items() if expected[key].is_floating_point()
                    and not value.is_floating_point()), None)
    if integer:
        raise MVFormerError(f"{path}: '{integer}' is {mapped[integer].dtype}, not floating point")
    nonfinite = first_nonfinite(mapped)
    if nonfinite:
        raise MVFormerError(f"{path}: the weights hold NaN or Inf (first: '{nonfinite}'); they cannot be used")
    model.load_state_dict({key: value.to(expected[key].dtype) for key, value in mapped.items()})
    return model.float().eval()


def describe(model: PreTrainedModel) -> str:
    """One line on the architecture read from a file, e.g. 'ViT: width 768, 12 blocks, 12 heads, patch 8, 224 px'."""
    config = model.config
    if isinstance(model, ViTModel):
        return (f"ViT: width {config.hidden_size}, {config.num_hidden_layers} blocks, {config.num_attention_heads} "
                f"heads, patch {config.patch_size}, {config.image_size} px")
    return f"ResNet ({config.layer_type}): blocks per stage {config.depths}, stage widths {config.hidden_sizes}"


def _not_converted(folder: Path) -> str | None:
    """Why `folder` is not an earlier `convert-backbone` output (exactly its two files), or None."""
    names = sorted(entry.name for entry in folder.iterdir())
    return None if names == sorted(CONVERTED_FILES) else f"it holds {', '.join(names[:3])}, not just " \
                                                          f"{' and '.join(CONVERTED_FILES)}"


def convert_backbone(path: str | Path, out_dir: str | Path, num_heads: int | None = None,
                     overwrite: bool = False) -> str:
    """Write a weights file as a transformers `save_pretrained` folder (config.json, model.safetensors) that
    `backbone.path` can name; returns the one-line description of the model. The folder is written through
    `files.output_folder` (whole or not at all; --overwrite replaces only an earlier conversion)."""
    out_dir = Path(out_dir)
    check_output_place(out_dir, _not_converted, overwrite, [path])
    model = load_backbone_file(path, num_heads)
    with output_folder(out_dir, _not_converted, overwrite, [path]) as staging:
        try:
            model.save_pretrained(staging)
        except SafetensorError as error:  # a full disk, among others: its message names no file
            raise MVFormerError(f"{out_dir}: cannot write model.safetensors ({error}); nothing was replaced") \
                from None
    return describe(model)
