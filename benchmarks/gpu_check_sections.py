"""Part of benchmarks/gpu_check.py: its sections, each a function of the shared `Check` returning its figures
(listed in `SECTION_FIELDS`). Not a script of its own."""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import io
import math
import os
import re
import statistics
import subprocess
import sys
import time
import traceback
import typing
from collections.abc import Callable

import numpy as np
import torch

from mvformer.checkpoint import export_checkpoint, load_checkpoint
from mvformer.config import BackboneName, Config, load_config, save_config
from mvformer.data.datasets import VideoDataset
from mvformer.data.synthetic import generate_pouring_dataset
from mvformer.evaluation.metrics import evaluate_embeddings
from mvformer.features.build import cache_features
from mvformer.features.cache import open_feature_cache
from mvformer.model.backbone import FrozenBackbone, build_backbone
from mvformer.model.mvformer import build_model
from mvformer.pretrained import load_pretrained
from mvformer.progress import silent
from mvformer.runs import read_log
from mvformer.train import loop
from mvformer.train.clips import CachedTrainingClips, TrainingClips, _Clips, collate_clips
from mvformer.train.distributed import Ranks
from mvformer.train.objectives import TrainStep

from gpu_check_setup import (PENN_ACTIONS, PENN_BACKBONES, PENN_EPOCHS, PENN_STEPS_PER_EPOCH, PRECISIONS, REPO, SOURCES,
                             Check, Interrupted, SectionTimeout, child_environment, demo_config, demo_data, free_port,
                             interrupted_after, load_benchmark, max_abs_difference, note, penn_config, resume_verdict,
                             shipped_config_naming, steps_before_interruption)

SCRIPT = REPO / "benchmarks" / "gpu_check.py"  # torchrun launches it again for the interrupted run


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
    cut = subprocess.run([*launch, str(free_port()), str(SCRIPT), "--interrupted-train",
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
