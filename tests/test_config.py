"""Typed configuration: shipped files load, overrides apply, bad keys and values name themselves."""

import pytest

from mvformer.config import CONFIG_DIR, config_from_dict, load_config
from mvformer.errors import MVFormerError


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_loads_and_round_trips(path):
    config = load_config(path)
    assert config_from_dict(config.to_dict()) == config


def test_paper_configurations_follow_the_protocol():
    penn, pouring, gym = load_config("penn_action"), load_config("pouring"), load_config("finegym99")
    assert (penn.model.num_tokens, penn.backbone.blocks, penn.model.token_reduction) == (3, [3, 7, 11], "first")
    assert (penn.model.fc_layers, penn.model.embedding_size, penn.data.clip_len) == ([512, 512], 128, 80)
    assert (pouring.backbone.blocks, pouring.data.clip_len, pouring.train.epochs) == ([11], 240, 1000)
    assert (gym.model.num_tokens, gym.backbone.blocks, gym.model.token_reduction) == (6, [9, 10, 11], "mean")
    assert (gym.model.fc_layers, gym.model.embedding_size, gym.train.epochs) == ([1536, 1536], 256, 300)
    assert (penn.train.lr, penn.train.weight_decay, penn.train.grad_clip) == (1e-4, 1e-5, 10.0)
    assert (penn.loss.temperature, penn.loss.variance, penn.eval.stride, gym.eval.stride) == (0.1, 10.0, 2, 5)


def test_dotted_overrides_are_typed():
    config = load_config("demo", ["model.num_tokens=5", "data.augment.flip_p=0", "train.lr=3e-4"])
    assert config.model.num_tokens == 5 and config.data.augment.flip_p == 0.0 and config.train.lr == 3e-4


@pytest.mark.parametrize("override, message", [
    ("model.num_token=5", "unknown key 'model.num_token' (did you mean 'model.num_tokens'?)"),
    ("model.num_tokens=three", "'model.num_tokens' must be int"),
    ("model.pooling=attention", "'model.pooling' is 'attention'; choose one of"),
    ("train.epochs=0", "'train.epochs' must lie in [1, "),
    ("data.augment.flip_p=2", "flip_p must be a probability"),
    ("eval.fractions=[0, 1]", "'eval.fractions' must lie in [1e-09, 1.0], got 0"),
    ("model.num_heads=7", "must be divisible"),
    ("nokey", "expected KEY=VALUE"),
])
def test_bad_overrides_give_one_line_naming_the_key(override, message):
    with pytest.raises(MVFormerError) as error:
        load_config("demo", [override])
    assert message in str(error.value) and "\n" not in str(error.value)


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: demo\nmodel:\n  tokens: 3\n")
    with pytest.raises(MVFormerError, match=r"mine\.yaml: unknown key 'model\.tokens'"):
        load_config(path)


def test_missing_file_and_unknown_shipped_name():
    with pytest.raises(MVFormerError, match="config file not found"):
        load_config("nowhere/none.yaml")
    with pytest.raises(MVFormerError, match="no such config file or shipped config"):
        load_config("penn_actoin")


def test_base_configs_are_merged_deeply():
    ablation = load_config("ablation_block11")
    assert ablation.backbone.blocks == [11] and ablation.backbone.name == "vit"
    assert ablation.model.fc_layers == [512, 512]
