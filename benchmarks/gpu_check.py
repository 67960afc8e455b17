"""The GPU path of mvformer checked and measured in one command; prints one table and writes the figures as JSON.

On one CUDA device (under 8 minutes from a bare machine; nothing is downloaded):
    python benchmarks/gpu_check.py --out gpu_check.json
On the CPU, with small shapes and tiny backbones (tests/test_gpu_check.py runs this):
    python benchmarks/gpu_check.py --device cpu --quick --out gpu_check.json

Sections, in this order; each is guarded (a failure is recorded, the next one runs), and one that the time budget
(--budget-s) could not hold is skipped with a note:
- head_equivalence: `check_same` of benchmarks/train_step.py on the device: the library's head against the
  straightforward form, embeddings, loss and every gradient, in float64 (the claim is equal mathematics, so the
  rounding bound holds on any device), at the ViT-B/8 feature shape (2, 80, 784, 2304).
- demo_training: the demo config trained on synthetic videos on the device: the loss is finite and falls; a run
  interrupted mid-epoch (its data stops after K steps, as a killed run would) and resumed ends with the weights of
  the uninterrupted run. Bit-identical where the device's kernels are deterministic (the CPU); where they are not
  (some CUDA kernels accumulate in a varying order), a second uninterrupted run sets the floor and the resumed run
  must lie within RERUN_FACTOR times it: a resume cannot be closer to the run than a rerun of it is.
- penn_step: one Penn Action training step at paper size (batch 1, two 80-frame views at 224 px, the Penn Action
  head) through the training loop's own step function, for ViT-B/8 and ViT-S/16 (randomly initialised with DINO's
  geometry, hence DINO's FLOPs; saved with save_pretrained into a temporary folder) and EfficientNet-Lite0 where the
  registry has it: s/step and peak memory (torch.cuda.max_memory_allocated) in fp32, bf16 and fp16 (with the
  gradient scaler), backbone on the fly and from cached tokens, the backbone's frames/s alone, and the projected
  epoch (1,140 steps) and 500-epoch times.
- cuda_tests: `pytest -m cuda tests/test_cuda.py` (what CPU tests cannot show), pass/fail counts.
- torchrun: `torchrun --nproc_per_node 1` (NCCL on a GPU, gloo on the CPU): two epochs of the demo config cut
  after K steps, resumed by `mvformer train --resume`, compared with an uninterrupted run, then exported and loaded.
- loader: training clips/s decoded from H.264 by the DataLoader with 0 and `data.num_workers` workers, and items/s
  read from a feature cache, beside ViT-B/8's step rates: does decoding (in workers, beside the step) keep up, and
  what share of a step from tokens would the cache's reads (between steps, in the training process) take?
- evaluation: the protocol metrics of a Penn-sized embedding set (13 actions of 100 + 80 videos of 50-90 frames,
  benchmarks/evaluation.py's), timed on the CPU (with --quick: two small sets, projected to 13); the probes and
  metrics are numpy / scikit-learn, so there is no GPU column.

JSON: {"version", "device": {...}, "quick", "budget_s", "elapsed_s", "checks": {check: passed}, "sections": {name:
{"status": ok | failed | skipped, "seconds", "note", "error", ...figures}}}; the figures of each section are listed
in `SECTION_FIELDS`. Peak memory is null on the CPU (no allocator statistics there). Times are medians after warm-up
steps. The exit status is 1 when a check failed (a failed section counts as one).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import importlib.util
import io
import json
import math
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # this checkout's mvformer, also on a machine where it is not installed
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched: every backbone is local (read at import)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import yaml  # noqa: E402
from transformers import ViTConfig, ViTModel  # noqa: E402

from mvformer.checkpoint import export_checkpoint, load_checkpoint  # noqa: E402
from mvformer.config import CONFIG_DIR, BackboneName, Config, load_config, save_config  # noqa: E402
from mvformer.data.datasets import VideoDataset  # noqa: E402
from mvformer.data.synthetic import generate_pouring_dataset  # noqa: E402
from mvformer.evaluation.metrics import evaluate_embeddings  # noqa: E402
from mvformer.features.build import cache_features  # noqa: E402
from mvformer.features.cache import open_feature_cache  # noqa: E402
from mvformer.model.backbone import FrozenBackbone, build_backbone  # noqa: E402
from mvformer.model.mvformer import build_model  # noqa: E402
from mvformer.pretrained import load_pretrained  # noqa: E402
from mvformer.progress import silent  # noqa: E402
from mvformer.runs import read_log  # noqa: E402
from mvformer.train import loop  # noqa: E402
from mvformer.train.clips import CachedTrainingClips, TrainingClips, _Clips, collate_clips  # noqa: E402
from mvformer.train.distributed import Ranks  # noqa: E402
from mvformer.train.objectives import TrainStep  # noqa: E402

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
ESTIMATED_S = {  # seconds each section is expected to need (full size on a GPU; --quick on two CPU cores)
    "head_equivalence": (20, 5), "demo_training": (40, 20), "penn_step": (150, 30), "cuda_tests": (60, 20),
    "torchrun": (50, 45), "loader": (45, 15), "evaluation": (40, 10),
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


# ---------------------------------------------------------------- shared data and backbones


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


# ---------------------------------------------------------------- sections


def head_equivalence(check: Check) -> dict:
    """The fast head against the straightforward form, on the device, through train_step.py's own check."""
    bench = load_benchmark("train_step")
    bench.SHAPES["checked"] = check.sizes.head_shape
    inputs = {key: value.to(check.device) for key, value in
              bench.build_inputs("checked", check.sizes.head_clip).items()}  # drawn on the CPU, then moved
    printed = io.StringIO()
    passed = True
    with contextlib.redirect_stdout(printed), torch.device(check.device):  # its factories build on the device
        try:
            bench.check_same("checked", inputs)
        except SystemExit:
            passed = False
    output = " ".join(printed.getvalue().split())
    views, frames = inputs["patches"].shape[:2]
    return {"shape": [views, frames, *check.sizes.head_shape[:2]], "dtype": "float64", "passed": passed,
            "check_output": output}


def _train_weights(config: Config, train_set: VideoDataset, val_set: VideoDataset | None,
                   resume: bool = False) -> dict:
    result = loop.train(config, train_set, val_set, resume=resume)
    return {key: value.detach().cpu().clone() for key, value in result.model.trainable_state_dict().items()}


def demo_training(check: Check) -> dict:
    """Loss finite and falling on the device; an interrupted and resumed run against an uninterrupted one."""
    _, train_set, val_set = demo_data(check)
    started = time.perf_counter()
    reference_config = demo_config(check, check.work / "demo-reference")
    reference = _train_weights(reference_config, train_set, val_set)
    check.made["demo_reference"] = reference  # torchrun's section trains the same config
    seconds_per_run = time.perf_counter() - started
    losses = [record.loss for record in read_log(check.work / "demo-reference").epochs]

    resumed_config = demo_config(check, check.work / "demo-resumed")
    stop_after = steps_before_interruption(resumed_config, len(train_set))
    try:
        loop.train(resumed_config, interrupted_after(train_set, stop_after * resumed_config.train.batch_size),
                   val_set)
        raise RuntimeError("the interrupted run did not stop")
    except Interrupted:
        pass
    state = load_checkpoint(check.work / "demo-resumed")
    interrupted_at = {"epoch": state["epoch"], "step": state["step"]}
    resumed = _train_weights(resumed_config, train_set, val_set, resume=True)
    resume_diff = max_abs_difference(reference, resumed)
    rerun_diff = None
    if resume_diff:  # non-deterministic kernels? a second uninterrupted run measures how far apart reruns land
        rerun_diff = max_abs_difference(reference, _train_weights(
            demo_config(check, check.work / "demo-rerun"), train_set, val_set))
    verdict, tolerance = resume_verdict(resume_diff, rerun_diff)
    return {"epochs": reference_config.train.epochs, "losses": losses,
            "loss_finite": all(math.isfinite(loss) for loss in losses), "loss_falls": losses[-1] < losses[0],
            "interrupted_at": interrupted_at, "resume_max_abs_diff": resume_diff, "rerun_max_abs_diff": rerun_diff,
            "resume": verdict, "tolerance": tolerance, "seconds_per_run": seconds_per_run}


def _step_batch(source: str, clip_len: int, image_size: int, backbone: FrozenBackbone) -> dict:
    """One collated batch of one video as the loader hands it over, on the host: uint8 frames (1, 2, T, S, S, 3)
    and their augmentation seed, or float16 cached tokens (1, 2, T, P, C) and (1, 2, T, C_cls)."""
    generator = torch.Generator().manual_seed(0)
    clips = _Clips([clip_len + clip_len // 4], clip_len, max_stretch=1.5, seed=0)
    views = clips.views(0)
    if source == "on_the_fly":
        frames = torch.randint(0, 256, (2, clip_len, image_size, image_size, 3), dtype=torch.uint8,
                               generator=generator)
        item = clips.item(0, views, frames=frames, augment_seed=torch.tensor(1))
    else:
        patches = torch.randn(2, clip_len, backbone.num_patches, backbone.patch_dim, generator=generator)
        cls = torch.randn(2, clip_len, backbone.cls_dim, generator=generator)
        item = clips.item(0, views, patches=patches.half(), cls=cls.half())
    batch = collate_clips([item])
    batch.pop("skipped")
    return batch


def _time_step(check: Check, config: Config, backbone: FrozenBackbone, batch: dict) -> dict:
    """Median s/step of the training loop's own step (copy to the device, augmentation, backbone, head, loss,
    backward, clipping, Adam, the scaler in fp16) after warm-up, and the peak memory allocated meanwhile."""
    gc.collect()  # the previous row's model and optimiser state, before the peak is reset
    torch.manual_seed(0)
    model = build_model(config, backbone).to(check.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=config.train.lr, weight_decay=config.train.weight_decay)
    scaler = torch.amp.GradScaler(check.device.type) if config.train.precision == "fp16" else None
    run = loop._Run(config=config, ranks=Ranks(), device=check.device, model=model, optimizer=optimizer,
                    scaler=scaler, classifier=None, step_module=TrainStep(model, config.train.objective),
                    train_set=None, clips=None, cache=None, eval_sets=[], checkpoint_path=check.work / "unused.pt",
                    log=None, say=silent)
    autocast = loop._autocast(config, check.device)
    model.train()
    if check.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(check.device)
    nonfinite = 0
    times = []
    for index in range(check.sizes.warmup_steps + check.sizes.timed_steps):
        started = time.perf_counter()
        _, finite, *_ = loop._step(run, batch, autocast)  # (loss, finite, ...)
        check.synchronize()
        if index >= check.sizes.warmup_steps:
            times.append(time.perf_counter() - started)
        nonfinite += not finite
    peak = torch.cuda.max_memory_allocated(check.device) / 2**20 if check.device.type == "cuda" else None
    seconds = statistics.median(times)
    return {"s_per_step": seconds, "peak_mib": peak, "nonfinite_steps": nonfinite,
            "epoch_min": seconds * PENN_STEPS_PER_EPOCH / 60,
            "epochs_500_h": seconds * PENN_STEPS_PER_EPOCH * PENN_EPOCHS / 3600}


def _backbone_frames_per_s(check: Check, backbone: FrozenBackbone, precision: str, image_size: int) -> float:
    """Frames per second of the backbone alone at `precision` (autocast), on one step's frames."""
    frames = torch.randn(check.sizes.backbone_frames, 3, image_size, image_size, device=check.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    with torch.autocast(check.device.type, dtype=dtype, enabled=precision != "fp32"):
        backbone(frames)
        check.synchronize()
        started = time.perf_counter()
        for _ in range(check.sizes.timed_steps):
            backbone(frames)
        check.synchronize()
    return check.sizes.backbone_frames * check.sizes.timed_steps / (time.perf_counter() - started)


def _measure_backbone(check: Check, label: str) -> dict:
    """Every precision and source of one backbone (rows the budget cannot hold are skipped)."""
    if PENN_BACKBONES[label] is None and label not in typing.get_args(BackboneName):
        return {"status": "skipped", "note": "not available (not in mvformer.config.BackboneName)"}
    if PENN_BACKBONES[label] is None and shipped_config_naming(label) is None:
        return {"status": "skipped", "note": "in the registry, but no shipped config names it"}
    config = penn_config(check, label)
    image_size = config.data.image_size
    backbone = build_backbone(config.backbone.name, config.backbone.blocks, path=config.backbone.path,
                              image_size=image_size, chunk_size=config.backbone.chunk_size).to(check.device)
    figures = {"status": "ok", "note": "", "backbone": config.backbone.name, "blocks": list(config.backbone.blocks),
               "image_size": image_size, "clip_len": config.data.clip_len,
               "feature_shape": [2, config.data.clip_len, backbone.num_patches, backbone.patch_dim],
               "backbone_frames_per_s": {}, "steps": {}, "failures": {}}
    batches = {source: _step_batch(source, config.data.clip_len, image_size, backbone) for source in SOURCES}
    precisions = PRECISIONS
    if check.device.type == "cpu" and PENN_BACKBONES[label] is None:
        precisions = ("fp32",)
        figures["note"] = "fp32 only on the CPU: its half-precision convolutions are emulated (seconds per step)"
    for precision in precisions:
        if check.left_s() < check.reserve_s:
            figures["note"] = f"{precision} and later precisions skipped: time budget"
            break
        try:  # one precision's failure (an fp16 overflow, a missing kernel) is recorded, the next one runs
            frames_per_s = _backbone_frames_per_s(check, backbone, precision, image_size)
            step_config = penn_config(check, label, precision)
            figures["steps"][precision] = {source: _time_step(check, step_config, backbone, batches[source])
                                           for source in SOURCES}
            figures["backbone_frames_per_s"][precision] = frames_per_s
        except SectionTimeout:
            raise
        except Exception as error:  # noqa: BLE001
            figures["failures"][precision] = f"{type(error).__name__}: {error}"
            note(traceback.format_exc())
            continue
        note(f"  {label} {precision}: " + ", ".join(f"{source} {row['s_per_step']:.3f} s/step"
                                                   for source, row in figures["steps"][precision].items()))
    return figures


def penn_step(check: Check) -> dict:
    """The Penn Action step at paper size for each backbone; one backbone's failure is recorded in its entry."""
    backbones = {}
    for label in PENN_BACKBONES:
        try:
            backbones[label] = _measure_backbone(check, label)
        except SectionTimeout:
            raise
        except Exception as error:  # noqa: BLE001 -- recorded, the other backbones still run
            backbones[label] = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
            note(traceback.format_exc())
        if check.device.type == "cuda":
            torch.cuda.empty_cache()
    return {"steps_per_epoch": PENN_STEPS_PER_EPOCH, "epochs": PENN_EPOCHS, "backbones": backbones}


def cuda_tests(check: Check) -> dict:
    """tests/test_cuda.py's `cuda` tests in a subprocess (all skipped without a GPU), counted."""
    if importlib.util.find_spec("pytest") is None:
        return {"passed": 0, "failed": 0, "skipped": 0, "errors": 0, "returncode": None,
                "summary": "pytest is not importable", "note": "not run: pytest is not importable"}
    command = [sys.executable, "-m", "pytest", "-m", "cuda", str(REPO / "tests" / "test_cuda.py"), "-q", "-rfE",
               "-p", "no:cacheprovider"]
    done = subprocess.run(command, cwd=REPO, env=child_environment(check), capture_output=True, text=True,
                          timeout=max(30, check.left_s() - check.reserve_s))
    lines = done.stdout.strip().splitlines()
    summary = lines[-1].strip("= ") if lines else done.stderr.strip()[-300:]
    counts = {kind: int(match.group(1)) if (match := re.search(rf"(\d+) {kind}", summary)) else 0
              for kind in ("passed", "failed", "skipped", "errors")}
    counts["errors"] += int(match.group(1)) if (match := re.search(r"(\d+) error\b", summary)) else 0
    if done.returncode not in (0, 5):  # 5: nothing collected
        note(done.stdout[-3000:])
    return {**counts, "returncode": done.returncode, "summary": summary}


def torchrun(check: Check) -> dict:
    """torchrun with one process: the demo config cut after K steps, resumed by the CLI, exported and loaded."""
    _, train_set, val_set = demo_data(check)
    started = time.perf_counter()
    run_dir = check.work / "torchrun-run"
    config = demo_config(check, run_dir)
    config_path = check.work / "torchrun.yaml"
    save_config(config, config_path)
    reference = check.made.get("demo_reference") or _train_weights(
        demo_config(check, check.work / "torchrun-reference"), train_set, val_set)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port"]
    stop_after = steps_before_interruption(config, len(train_set))
    timeout = max(30, (check.left_s() - check.reserve_s) / 2)
    environment = child_environment(check)
    cut = subprocess.run([*launch, str(free_port()), str(Path(__file__).resolve()), "--interrupted-train",
                          str(config_path), str(stop_after)], env=environment, capture_output=True, text=True,
                         timeout=timeout)
    if cut.returncode:
        raise RuntimeError(f"the interrupted torchrun run failed:\n{cut.stderr[-2000:]}")
    state = load_checkpoint(run_dir)
    interrupted_at = {"epoch": state["epoch"], "step": state["step"]}
    resumed = subprocess.run([*launch, str(free_port()), "-m", "mvformer", "train", str(config_path), "--resume",
                              "--no-progress"], env=environment, capture_output=True, text=True, timeout=timeout)
    if resumed.returncode:
        raise RuntimeError(f"torchrun ... mvformer train --resume failed:\n{resumed.stderr[-2000:]}")
    final = load_checkpoint(run_dir)["model"]
    resume_diff = max_abs_difference(reference, final)
    demo = check.results.get("demo_training", {})
    verdict, _ = resume_verdict(resume_diff, demo.get("rerun_max_abs_diff"))
    exported = load_pretrained(export_checkpoint(run_dir, check.work / "torchrun-export"))
    export_equal = max_abs_difference(final, {key: value.cpu() for key, value in
                                              exported.trainable_state_dict().items()}) == 0
    return {"processes": 1, "backend": "nccl" if check.device.type == "cuda" else "gloo",
            "process_group": "none: with WORLD_SIZE=1 mvformer trains as one process (no DDP, no SyncBatchNorm); "
                             "tests/test_cuda.py exercises a one-rank NCCL group",
            "interrupted_at": interrupted_at, "resume_max_abs_diff": resume_diff, "resume": verdict,
            "export_equal": export_equal, "seconds": time.perf_counter() - started}


def _items_per_s(dataset, items: int, workers: int) -> float:
    """Items per second through a DataLoader as training builds it, timed from the first item on (worker start-up
    excluded)."""
    batches = [[index % len(dataset)] for index in range(items)]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                                         collate_fn=collate_clips)
    iterator = iter(loader)
    next(iterator)
    started = time.perf_counter()
    count = sum(1 for _ in iterator)
    return count / (time.perf_counter() - started)


def loader(check: Check) -> dict:
    """Decoded training clips/s with 0 and data.num_workers workers, and cached-token items/s, beside the steps."""
    sizes = check.sizes
    root = generate_pouring_dataset(check.work / "loader-data", seed=1, **sizes.loader_videos)
    config = penn_config(check, "vit_b8", extra=(f"data.root={root}", "data.format=generic",
                                                 f"data.feature_cache={check.work / 'loader-cache'}"))
    workers = min(config.data.num_workers, os.cpu_count() or 1)
    train_set = VideoDataset(root, "train", size=config.data.decode_size)
    clip_args = (config.data.clip_len, config.data.max_stretch, config.train.seed)
    decoded = TrainingClips(train_set, *clip_args)
    decoded_rates = {str(count): _items_per_s(decoded, sizes.loader_items, count) for count in (0, workers)}
    cache_features(config, copies=1, splits=("train",))
    cache = open_feature_cache(config, ("train",), augmented=True, datasets={"train": train_set}, note=silent)
    cached = CachedTrainingClips(cache, "train", *clip_args, augmented=True)
    item_bytes = sum(value.numel() * value.element_size() for value in cached[0].values()
                     if isinstance(value, torch.Tensor))
    cache_rate = _items_per_s(cached, sizes.loader_items, 0)  # the training loop reads the cache in its own process
    backbone = check.results.get("penn_step", {}).get("backbones", {}).get("vit_b8", {})
    step_rates = {precision: {source: 1 / row["s_per_step"] for source, row in sources.items()}
                  for precision, sources in backbone.get("steps", {}).items()}
    # Workers decode beside the step, so decoding keeps up or not; the cache is read between steps, so its reads
    # add to each step: their share of the time of a step from tokens.
    keeps_up = {precision: decoded_rates[str(workers)] >= rates["on_the_fly"]
                for precision, rates in step_rates.items()}
    read_share = {precision: rates["from_tokens"] / (rates["from_tokens"] + cache_rate)
                  for precision, rates in step_rates.items()}
    return {"image_size": config.data.image_size, "clip_len": config.data.clip_len, "workers": workers,
            "decoded_clips_per_s": decoded_rates, "cache_items_per_s": cache_rate,
            "cache_mib_per_item": item_bytes / 2**20, "step_rates": step_rates, "keeps_up": keeps_up,
            "cache_read_share": read_share,
            "note": f"videos {sizes.loader_videos['size']} px H.264 decoded to {config.data.image_size} px; "
                    f"step rates are ViT-B/8's steps/s from penn_step"}


def evaluation(check: Check) -> dict:
    """The protocol metrics (Penn Action's settings) of Penn-sized embedding sets on the CPU, projected to 13."""
    bench = load_benchmark("evaluation")
    rng = np.random.default_rng(0)
    num_train, num_val = check.sizes.eval_videos
    datasets = [bench.penn_like(rng, num_train, num_val) for _ in range(check.sizes.eval_datasets)]
    cfg = load_config("penn_action").eval
    started = time.perf_counter()
    metrics = [evaluate_embeddings(train[0], train[1], val[0], val[1], num_classes=1 + max(int(lab.max()) for lab in
                                                                                         train[1] + val[1]),
                                   fractions=tuple(cfg.fractions), ks=tuple(cfg.ks), stride=cfg.stride)
               for train, val in datasets]
    seconds = time.perf_counter() - started
    return {"datasets": len(datasets), "train_videos": sum(len(train[0]) for train, _ in datasets),
            "val_videos": sum(len(val[0]) for _, val in datasets),
            "frames": sum(len(video) for train, val in datasets for video in train[0] + val[0]),
            "cpu_seconds": seconds, "projected_penn_s": seconds * PENN_ACTIONS / len(datasets),
            "gpu": "not available: mvformer/evaluation/metrics.py and probes.py are numpy / scikit-learn (CPU only)",
            "metrics": metrics[0]}


SECTIONS: dict[str, Callable[[Check], dict]] = {
    "head_equivalence": head_equivalence, "demo_training": demo_training, "penn_step": penn_step,
    "cuda_tests": cuda_tests, "torchrun": torchrun, "loader": loader, "evaluation": evaluation,
}


# ---------------------------------------------------------------- running, the table


def _on_alarm(signum, frame):
    raise SectionTimeout("ran past its share of the time budget")


def run_section(check: Check, name: str, later: list[str]) -> dict:
    """One section, guarded: its figures, or why it failed or was skipped."""
    estimate = ESTIMATED_S[name][check.quick]
    check.reserve_s = sum(ESTIMATED_S[other][check.quick] for other in later)
    if check.left_s() < estimate:
        return {"status": "skipped", "seconds": 0.0, "note": f"time budget: {check.left_s():.0f} s left, the "
                f"section needs about {estimate} s", "error": None}
    note(f"{name} ...")
    started = time.perf_counter()
    signal.alarm(max(1, int(check.left_s())))
    try:
        figures = SECTIONS[name](check)
        outcome = {"status": "ok", "note": figures.pop("note", ""), "error": None, **figures}
    except Exception as error:  # noqa: BLE001 -- one section's failure is recorded, the others still run
        note(traceback.format_exc())
        outcome = {"status": "failed", "note": "", "error": f"{type(error).__name__}: {error}"}
    finally:
        signal.alarm(0)
    outcome["seconds"] = time.perf_counter() - started
    note(f"{name}: {outcome['status']} in {outcome['seconds']:.1f} s")
    return outcome


def device_facts(device: torch.device) -> dict:
    """What the figures were measured on; TF32 decides how fast fp32 matrix products run on a recent GPU."""
    facts = {"kind": device.type, "torch": torch.__version__, "transformers": transformers.__version__,
             "python": platform.python_version(), "cpu_count": os.cpu_count(), "cuda": torch.version.cuda,
             "name": platform.processor() or platform.machine(), "memory_gib": None,
             "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        facts.update(name=properties.name, memory_gib=properties.total_memory / 2**30)
    return facts


def _fmt(value: float | None, unit: str = "", digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}{unit}"


def verdicts(sections: dict) -> dict[str, bool]:
    """The checks among the figures (the rest are measurements): True where one passed; a section that failed
    counts as a failed check, one skipped or not run is absent."""
    found = {name: False for name, section in sections.items() if section["status"] == "failed"}
    ran = {name: section for name, section in sections.items() if section["status"] == "ok"}
    if "head_equivalence" in ran:
        found["head_equivalence"] = ran["head_equivalence"]["passed"]
    if "demo_training" in ran:
        demo = ran["demo_training"]
        found["demo_loss_finite_and_falls"] = demo["loss_finite"] and demo["loss_falls"]
        found["demo_resume"] = demo["resume"] != "differs"
    if "cuda_tests" in ran and ran["cuda_tests"]["returncode"] is not None:
        found["cuda_tests"] = ran["cuda_tests"]["failed"] == ran["cuda_tests"]["errors"] == 0
    if "torchrun" in ran:
        found["torchrun_resume"] = ran["torchrun"]["resume"] != "differs"
        found["torchrun_export"] = ran["torchrun"]["export_equal"]
    return found


def table_rows(report: dict) -> list[tuple[str, str, str]]:
    """(section, what, result) rows of the one table, all read from the JSON report; the verdict last."""
    rows = []
    for name, section in report["sections"].items():
        if section["status"] != "ok":
            rows.append((name, section["status"], section.get("error") or section.get("note") or ""))
            continue
        rows.extend((name, what, result) for what, result in SECTION_ROWS[name](section))
    failed = [name for name, passed in report["checks"].items() if not passed]
    rows.append(("checks", f"{len(report['checks'])} checks", f"FAILED: {', '.join(failed)}" if failed else
                 "all passed"))
    return rows


def _head_rows(section: dict) -> list[tuple[str, str]]:
    verdict = "pass" if section["passed"] else "FAIL"
    return [(f"fast head = straightforward form, {section['dtype']}, features {tuple(section['shape'])}",
             f"{verdict}: {section['check_output']}")]


def _demo_rows(section: dict) -> list[tuple[str, str]]:
    losses = section["losses"]
    trend = "falls" if section["loss_falls"] else "does NOT fall"
    resume = section["resume"]
    if resume != "bit-identical":
        resume += (f" (max abs diff {section['resume_max_abs_diff']:.2g}; two uninterrupted runs differ by "
                   f"{_fmt(section['rerun_max_abs_diff'], '', 2)}; tolerance {_fmt(section['tolerance'], '', 2)})")
    return [(f"loss over {section['epochs']} epochs", f"{losses[0]:.4f} -> {losses[-1]:.4f}, "
             f"{'finite' if section['loss_finite'] else 'NOT finite'}, {trend}"),
            (f"cut at epoch {section['interrupted_at']['epoch']} step {section['interrupted_at']['step']}, resumed",
             resume)]


def _penn_rows(section: dict) -> list[tuple[str, str]]:
    rows = []
    for label, entry in section["backbones"].items():
        if entry["status"] != "ok":
            rows.append((label, entry.get("note") or entry.get("error") or entry["status"]))
            continue
        shape = tuple(entry["feature_shape"])
        fps = ", ".join(f"{precision} {value:.0f}" for precision, value in entry["backbone_frames_per_s"].items())
        rows.append((f"{label} backbone alone ({entry['image_size']} px, blocks {entry['blocks']})",
                     f"frames/s: {fps}"))
        for precision, sources in entry["steps"].items():
            for source, row in sources.items():
                rows.append((f"{label} {precision} {source.replace('_', ' ')} (features {shape})",
                             f"{row['s_per_step']:.3f} s/step, peak {_fmt(row['peak_mib'], ' MiB', 4)}, "
                             f"epoch {row['epoch_min']:.1f} min, 500 epochs {row['epochs_500_h']:.1f} h"
                             + (f", {row['nonfinite_steps']} steps skipped (non-finite; in fp16 the scaler's overflows)"
                                if row["nonfinite_steps"] else "")))
        rows.extend((f"{label} {precision}", f"FAILED: {error}") for precision, error in entry["failures"].items())
        if entry["note"]:
            rows.append((label, entry["note"]))
    return rows


def _tests_rows(section: dict) -> list[tuple[str, str]]:
    return [("pytest -m cuda tests/test_cuda.py", f"{section['passed']} passed, {section['failed']} failed, "
             f"{section['skipped']} skipped, {section['errors']} errors ({section['summary']})")]


def _torchrun_rows(section: dict) -> list[tuple[str, str]]:
    cut = section["interrupted_at"]
    export = "loads the same weights" if section["export_equal"] else "DIFFERS"
    return [(f"torchrun, {section['processes']} {section['backend']} process: cut at epoch {cut['epoch']} step "
             f"{cut['step']}, resumed by the CLI", f"{section['resume']} (max abs diff "
             f"{section['resume_max_abs_diff']:.2g}), export {export}, {section['seconds']:.0f} s"),
            ("process group", section["process_group"])]


def _loader_rows(section: dict) -> list[tuple[str, str]]:
    decoded = ", ".join(f"{workers} workers {rate:.1f}" for workers, rate in section["decoded_clips_per_s"].items())
    rows = [(f"decoded clips/s (2 x {section['clip_len']} frames at {section['image_size']} px)", decoded),
            ("cached-token items/s (main process)",
             f"{section['cache_items_per_s']:.1f} ({_fmt(section['cache_mib_per_item'], ' MiB')} per item)")]
    for precision, rates in section["step_rates"].items():
        rows.append((f"ViT-B/8 {precision} steps/s: on the fly / from tokens",
                     f"{rates['on_the_fly']:.1f} / {rates['from_tokens']:.1f}; decoding keeps up: "
                     f"{'yes' if section['keeps_up'][precision] else 'NO'}; cache reads would take "
                     f"{section['cache_read_share'][precision]:.0%} of a step from tokens"))
    return rows


def _evaluation_rows(section: dict) -> list[tuple[str, str]]:
    return [(f"protocol metrics, {section['datasets']} datasets, {section['train_videos']} + {section['val_videos']} "
             f"videos ({section['frames']} frames)", f"CPU {section['cpu_seconds']:.1f} s, all {PENN_ACTIONS} actions "
             f"{section['projected_penn_s']:.0f} s; GPU {section['gpu']}")]


SECTION_ROWS = {"head_equivalence": _head_rows, "demo_training": _demo_rows, "penn_step": _penn_rows,
                "cuda_tests": _tests_rows, "torchrun": _torchrun_rows, "loader": _loader_rows,
                "evaluation": _evaluation_rows}


def print_table(report: dict) -> None:
    facts = report["device"]
    print(f"mvformer GPU check on {facts['name']} ({facts['kind']}), torch {facts['torch']}, CUDA {facts['cuda']}, "
          f"TF32 matmul {'on' if facts['tf32_matmul'] else 'off'}, {report['started']}; {report['elapsed_s']:.0f} s "
          f"of a {report['budget_s']:.0f} s budget"
          f"{' (--quick: small shapes, tiny backbones)' if report['quick'] else ''}")
    print("| section | what | result |")
    print("|---|---|---|")
    for section, what, result in table_rows(report):
        cell = result.replace("|", "\\|")  # a bar inside a cell, escaped for Markdown
        print(f"| {section} | {what} | {cell} |")


def interrupted_train(config_path: str, steps: int) -> None:
    """Under torchrun: train the config until its data stops after `steps` steps (the run then ends as a killed one
    would, its last checkpoint in place)."""
    config = load_config(config_path)
    train_set = VideoDataset(config.data.root, "train", size=config.data.decode_size, preload=config.data.preload)
    try:
        loop.train(config, interrupted_after(train_set, steps * config.train.batch_size))
    except Interrupted:
        return
    raise RuntimeError("the run ended before it was interrupted")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="small shapes, tiny backbones, few steps")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON file of figures")
    parser.add_argument("--budget-s", type=float, default=None, help="time budget (default 440 s, --quick 300 s)")
    parser.add_argument("--only", nargs="+", choices=tuple(SECTIONS), help="run these sections only")
    parser.add_argument("--interrupted-train", nargs=2, metavar=("CONFIG", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.interrupted_train:
        interrupted_train(args.interrupted_train[0], int(args.interrupted_train[1]))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu (and --quick for small shapes)", file=sys.stderr)
        return 2
    budget = args.budget_s if args.budget_s is not None else (300.0 if args.quick else 440.0)
    started = time.monotonic()
    signal.signal(signal.SIGALRM, _on_alarm)
    transformers.utils.logging.disable_progress_bar()  # the progress lines of this script are its own
    device = torch.device(args.device)
    report = {"version": 1, "device": device_facts(device), "quick": args.quick, "budget_s": budget,
              "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "elapsed_s": 0.0, "checks": {}, "sections": {}}
    names = [name for name in SECTIONS if not args.only or name in args.only]
    with tempfile.TemporaryDirectory(prefix="mvformer-gpu-check-") as folder:
        os.environ["MVFORMER_CACHE_DIR"] = str(Path(folder) / "feature-caches")  # never the user's caches
        os.environ.setdefault("MVFORMER_NO_PROGRESS", "1")
        check = Check(device, args.quick, Path(folder), started + budget)
        for position, name in enumerate(names):
            check.results[name] = run_section(check, name, names[position + 1:])
            report["sections"][name] = check.results[name]
            report["checks"] = verdicts(report["sections"])
            report["elapsed_s"] = time.monotonic() - started
            args.out.write_text(json.dumps(report, indent=1, default=str))  # complete after every section
    print_table(report)
    return 0 if all(report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
