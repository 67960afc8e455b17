"""Property-style fuzz of the configuration: whatever a user writes (a YAML file or --set overrides), loading it
either gives a valid Config or one MVFormerError line naming the source, never another exception."""

import string

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from mvformer.config import Config, flatten_tree, load_config
from mvformer.errors import MVFormerError

KEYS = sorted(flatten_tree(Config().to_dict())) + ["base", "model.num_token", "data", "train", "x.y.z"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(string.printable, max_size=12),
    st.sampled_from(["1e999", "-1", "nan", ".inf", "vit", "lstp", "[1, 2]", "{a: 1}", "", "0", "3e-4"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(string.ascii_lowercase, max_size=6), inner, max_size=3), max_leaves=6)


def load_or_error(*args) -> None:
    try:
        config = load_config(*args)
    except MVFormerError as error:
        assert "\n" not in str(error) and str(error)
        return
    assert isinstance(config, Config)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=4))
def test_any_overrides_load_or_give_one_line(overrides):
    load_or_error("demo", [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"
                           for key, value in overrides])


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["base", "model", "data", "train", "eval", "name", "backbone"]), VALUES,
                       max_size=4))
def test_any_yaml_file_loads_or_gives_one_line(tmp_path_factory, tree):
    path = tmp_path_factory.mktemp("config") / "fuzz.yaml"
    path.write_text(yaml.safe_dump(tree))
    load_or_error(path)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_as_a_config_file_give_one_line(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("config") / "bytes.yaml"
    path.write_bytes(data)
    load_or_error(path)
