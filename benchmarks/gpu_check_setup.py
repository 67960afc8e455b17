"""Part of benchmarks/gpu_check.py: what its sections share (sizes, the check's state, the demo data, the configs and
backbones they build). Not a script of its own."""

from __future__ import annotations

import copy
import importlib.util
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from transformers import ViTConfig, ViTModel

from mvformer.config import CONFIG_DIR, Config, load_config
from mvformer.data.datasets import VideoDataset
from mvformer.data.synthetic import generate_pouring_dataset

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16", "fp16")
SOURCES = ("on_the_fly", "from_tokens")
PENN_STEPS_PER_EPOCH = 1140  # Penn Action's training videos at batch 1
PENN_EPOCHS = 500
PENN_ACTIONS = 13  # Penn Action is scored per action and averaged
RERUN_FACTOR = 10.0  # a resumed run on non-deterministic kernels may differ by this many times a rerun's difference
PENN_BACKBONES = {  # label: (shipped config, ViT geometry at paper size); None: a registry backbone, real weights
    "vit_b8": ("penn_action", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                   intermediate_size=3072, patch_size=8)),
    "vit_s16": ("ablation_vits16", dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                        intermediate_size=1536, patch_size=16)),
    "efficientnet_lite0": None,
}
TINY_VIT = dict(hidden_size=16, num_hidden_layers=12, num_attention_heads=2, intermediate_size=32)  # --quick
TINY_HEAD = ("model.pool_dim=16", "model.fc_layers=[16]", "model.hidden_size=16", "model.num_layers=1",
             "model.num_heads=2", "model.ff_dim=32", "model.embedding_size=8", "model.projection_size=8")  # --quick
SECTION_FIELDS = {  # the figures each section writes (besides status, seconds, note, error)
    "head_equivalence": ("shape", "dtype", "passed", "check_output"),
    "demo_training": ("epochs", "losses", "loss_finite", "loss_falls", "interrupted_at", "resume_max_abs_diff",
                      "rerun_max_abs_diff", "resume", "tolerance", "seconds_per_run"),
    "penn_step": ("steps_per_epoch", "epochs", "backbones"),
    "cuda_tests": ("passed", "failed", "skipped", "errors", "returncode", "summary"),
    "torchrun": ("processes", "backend", "process_group", "interrupted_at", "resume_max_abs_diff", "resume",
                 "export_equal", "seconds"),
    "loader": ("image_size", "clip_len", "workers", "decoded_clips_per_s", "cache_items_per_s", "cache_mib_per_item",
               "step_rates", "keeps_up", "cache_read_share"),
    "evaluation": ("datasets", "train_videos", "val_videos", "frames", "cpu_seconds", "projected_penn_s", "gpu",
                   "metrics"),
}


class Interrupted(Exception):
    """Raised by a dataset that stops delivering frames: the run ends as a killed one would, between two steps."""


class SectionTimeout(Exception):
    """A section ran past its share of the time budget."""


@dataclass(frozen=True)
class Sizes:
    """What the sections run at: paper size on a GPU, or small shapes and tiny backbones with --quick."""

    head_shape: tuple[int, int, int]  # features of the equivalence check: patches P, channels C, CLS channels
    head_clip: int
    demo_videos: dict  # generate_pouring_dataset arguments
    demo_overrides: tuple[str, ...]
    demo_evaluates: bool  # keep the val split, so that training ends with an evaluation on the device
    vit_override: dict  # replaces the ViT geometry (tiny with --quick)
    head_overrides: tuple[str, ...]  # replace the Penn Action head's sizes (tiny with --quick)
    image_size: int
    clip_len: int
    warmup_steps: int
    timed_steps: int
    backbone_frames: int
    loader_videos: dict
    loader_items: int
    eval_datasets: int
    eval_videos: tuple[int, int]  # (train, val) videos per dataset


FULL = Sizes(head_shape=(784, 2304, 768), head_clip=80,
             demo_videos=dict(num_train=24, num_val=8, size=64, min_frames=40, max_frames=64),
             demo_overrides=("train.batch_size=4", "train.epochs=8"), demo_evaluates=True, vit_override={},
             head_overrides=(), image_size=224, clip_len=80, warmup_steps=2, timed_steps=5, backbone_frames=160,
             loader_videos=dict(num_train=4, num_val=1, size=112, min_frames=80, max_frames=100), loader_items=24,
             eval_datasets=13, eval_videos=(100, 80))
QUICK = Sizes(head_shape=(16, 24, 8), head_clip=16,
              demo_videos=dict(num_train=6, num_val=1, size=32, min_frames=16, max_frames=24),
              demo_overrides=("data.image_size=32", "data.clip_len=8", "train.batch_size=2", "train.epochs=3"),
              demo_evaluates=False, vit_override=TINY_VIT, head_overrides=TINY_HEAD, image_size=64, clip_len=8,
              warmup_steps=1, timed_steps=1, backbone_frames=16,
              loader_videos=dict(num_train=2, num_val=1, size=32, min_frames=16, max_frames=24), loader_items=6,
              eval_datasets=2, eval_videos=(6, 4))


@dataclass
class Check:
    """What the sections share: the device, the sizes, a scratch folder, the clock and the results so far."""

    device: torch.device
    quick: bool
    work: Path
    deadline: float
    results: dict = field(default_factory=dict)
    reserve_s: float = 0.0  # what the sections after the running one are expected to need
    made: dict = field(default_factory=dict)  # things built once and shared: datasets, backbone folders

    @property
    def sizes(self) -> Sizes:
        return QUICK if self.quick else FULL

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def note(message: str) -> None:
    """A progress line on stderr (the table alone goes to stdout)."""
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_benchmark(name: str):
    """Another script of benchmarks/ as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def child_environment(check: Check) -> dict:
    """Environment of the subprocesses: this checkout importable, the parent's thread count, no progress bars."""
    path = os.pathsep.join(part for part in (str(REPO), os.environ.get("PYTHONPATH", "")) if part)
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS=str(torch.get_num_threads()), MVFORMER_NO_PROGRESS="1",
                MVFORMER_CACHE_DIR=str(check.work / "feature-caches"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def max_abs_difference(first: dict, second: dict) -> float:
    """Largest |a - b| over the floating-point tensors of two state dicts with the same keys."""
    if first.keys() != second.keys():
        raise RuntimeError(f"the state dicts differ in their keys: {sorted(set(first) ^ set(second))[:3]}")
    return max(((first[key].double().cpu() - second[key].double().cpu()).abs().max().item()
                for key in first if first[key].is_floating_point() and first[key].numel()), default=0.0)


def resume_verdict(resume_diff: float, rerun_diff: float | None) -> tuple[str, float | None]:
    """("bit-identical" | "within tolerance" | "differs", tolerance): a resumed run cannot be closer to the
    uninterrupted one than a second uninterrupted run is; with deterministic kernels both must be exact."""
    if resume_diff == 0:
        return "bit-identical", 0.0
    if not rerun_diff:
        return "differs", 0.0
    tolerance = RERUN_FACTOR * rerun_diff
    return ("within tolerance" if resume_diff <= tolerance else "differs"), tolerance


def demo_data(check: Check) -> tuple[Path, VideoDataset, VideoDataset | None]:
    """The synthetic pouring videos of the demo runs (made once), and their train and val splits preloaded (no
    val split where the sizes say the runs do not evaluate)."""
    if "demo" not in check.made:
        root = generate_pouring_dataset(check.work / "demo-data", seed=0, **check.sizes.demo_videos)
        size = check.sizes.demo_videos["size"]
        val_set = None
        if check.sizes.demo_evaluates:
            val_set = VideoDataset(root, "val", size=size, preload=True)
        else:
            (root / "splits" / "val.txt").unlink()
        check.made["demo"] = (root, VideoDataset(root, "train", size=size, preload=True), val_set)
    return check.made["demo"]


def demo_config(check: Check, output_dir: Path) -> Config:
    """The demo config on the device, a checkpoint after every step, evaluation after the last epoch only."""
    root, _, _ = demo_data(check)
    return load_config("demo", [f"data.root={root}", f"train.output_dir={output_dir}",
                                f"train.device={check.device.type}", "data.feature_cache=none",
                                "train.checkpoint_every=1", "train.checkpoint_every_steps=1",
                                "train.eval_every=1000", *check.sizes.demo_overrides])


def interrupted_after(dataset: VideoDataset, reads: int) -> VideoDataset:
    """`dataset`, but its `frames` raises Interrupted from read number `reads` on (one read per video of a step)."""
    stopping = copy.copy(dataset)
    done = [0]

    def frames(index: int, indices=None) -> np.ndarray:
        if done[0] >= reads:
            raise Interrupted
        done[0] += 1
        return dataset.frames(index, indices)

    stopping.frames = frames
    return stopping


def steps_before_interruption(config: Config, num_videos: int) -> int:
    """Where the interrupted runs stop: the middle of the second epoch."""
    steps_per_epoch = num_videos // config.train.batch_size
    return steps_per_epoch + max(1, steps_per_epoch // 2)


def vit_folder(check: Check, label: str) -> Path:
    """A randomly initialised ViT of `label`'s geometry (tiny with --quick), saved with save_pretrained, made once."""
    if label not in check.made:
        _, geometry = PENN_BACKBONES[label]
        folder = check.work / f"backbone-{label}"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            config = ViTConfig(**{**geometry, **check.sizes.vit_override}, image_size=check.sizes.image_size)
            ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
        check.made[label] = folder
    return check.made[label]


def shipped_config_naming(backbone: str) -> str | None:
    """The first shipped config whose own YAML names `backbone`, or None."""
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        tree = yaml.safe_load(path.read_text()) or {}
        if (tree.get("backbone") or {}).get("name") == backbone:
            return path.stem
    return None


def penn_config(check: Check, label: str, precision: str = "fp32", extra: tuple[str, ...] = ()) -> Config:
    """The Penn Action config of `label` on the device at `precision`: a random ViT from a local folder, or a
    registry backbone with its own weights, blocks and image size (from the shipped config naming it) in the Penn
    Action head."""
    sizes = check.sizes
    common = [f"train.precision={precision}", f"train.device={check.device.type}", "data.feature_cache=none",
              f"data.clip_len={sizes.clip_len}", f"train.output_dir={check.work / 'unused-run'}",
              *sizes.head_overrides, *extra]
    if PENN_BACKBONES[label] is None:
        shipped = load_config(shipped_config_naming(label))
        image_size = sizes.image_size if check.quick else shipped.data.image_size
        return load_config("penn_action", [f"backbone.name={label}", "backbone.path=null",
                                           f"backbone.blocks={list(shipped.backbone.blocks)}",
                                           f"data.image_size={image_size}", *common])
    config_name, _ = PENN_BACKBONES[label]
    return load_config(config_name, [f"backbone.path={vit_folder(check, label)}",
                                     f"data.image_size={sizes.image_size}", *common])
