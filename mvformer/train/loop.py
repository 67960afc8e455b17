"""The SCL training loop: two time-augmented views of each video, frozen backbone, trainable head.

One code path for one process and for torchrun (DDP): the global batch of `train.batch_size` videos is split
over the ranks, every random draw is a function of (seed, epoch, video) or saved in the checkpoint, and a
checkpoint records the step within the epoch, so a run killed at any moment resumes to the same weights.
`train` reads top-down: open the data, build the model, resume or start the run folder, then one epoch after
another of `_train_epoch`, each step one `_step`.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from mvformer.checkpoint import (CHECKPOINT_VERSION, config_differences, load_checkpoint, save_checkpoint,
                                 trainable_weights)
from mvformer.config import Config, TrainConfig, save_config
from mvformer.data.datasets import VideoDataset
from mvformer.data.formats import has_split, open_dataset
from mvformer.errors import MVFormerError
from mvformer.evaluation.embed import EvaluationSet, check_scorable, embed_split, evaluation_sets
from mvformer.evaluation.scoring import score_with_controls
from mvformer.features.cache import FeatureCache, open_feature_cache
from mvformer.losses.classification import FrameClassifier
from mvformer.model.mvformer import MVFormer, build_model
from mvformer.model.weights import first_nonfinite
from mvformer.progress import note, progress_bar, silent
from mvformer.runs import (CHECKPOINT_NAME, CONFIG_NAME, LOCK_NAME, METRICS_NAME, EpochRecord, EvalRecord, MetricsLog,
                           read_log, run_folder_lock)
from mvformer.runtime import random_states, resolve_device, restore_random_states, seed_everything
from mvformer.train.clips import (CachedTrainingClips, TrainingClips, check_batch_fits, collate_clips,
                                  epoch_batches, training_batch)
from mvformer.train.distributed import (
    Ranks,
    any_rank,
    check_batch_divides,
    gather_objects,
    init_distributed,
    process_device,
    sum_over_ranks,
    synchronise_batch_norm,
)
from mvformer.train.objectives import TrainStep, objective_head, objective_loss, objective_sampler


@dataclass
class TrainResult:
    model: MVFormer
    run_dir: Path
    final_metrics: dict | None


@dataclass
class _Run:
    """What one training process holds while it trains: everything is built, and every check made, before the
    first step (`train`); only the counters below change as it trains."""

    config: Config
    ranks: Ranks
    device: torch.device
    model: MVFormer
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # fp16 only
    classifier: FrameClassifier | None  # the supervised objective's linear layer
    step_module: nn.Module  # the differentiable part of a step (DDP-wrapped under torchrun)
    train_set: VideoDataset
    clips: TrainingClips | CachedTrainingClips
    cache: FeatureCache | None  # the feature cache the clips and the evaluation read, when one matches
    eval_sets: list[EvaluationSet]  # what the evaluation scores (none for an unlabelled dataset)
    checkpoint_path: Path
    log: MetricsLog | None  # rank 0 only
    say: Callable[[str], None]
    counters: dict = field(default_factory=lambda: {"nonfinite_steps": 0, "skipped_videos": 0})
    consecutive_nonfinite: int = 0
    warned: set = field(default_factory=set)


def learning_rate_factor(epoch: int, cfg: TrainConfig) -> float:
    """The per-epoch schedule. cosine (published): CosineAnnealingLR with T_max = epochs + 1 stepped per epoch,
    (1 + cos(pi * e / (epochs + 1))) / 2. warmup_cosine: linear warm-up over `warmup_epochs`, then cosine to 0."""
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / (cfg.epochs + 1)))
    if epoch < cfg.warmup_epochs:
        return (epoch + 1) / (cfg.warmup_epochs + 1)
    progress = (epoch - cfg.warmup_epochs) / max(1, cfg.epochs - cfg.warmup_epochs)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _open_data(config: Config, train_set: VideoDataset | None, val_set: VideoDataset | None,
               say: Callable[[str], None]) -> tuple[VideoDataset, VideoDataset | None]:
    """The training split and, when the dataset has one, the validation split."""
    if train_set is None and not config.data.root.strip():
        raise MVFormerError("data.root is not set: name the dataset in the config or with --set data.root=PATH")

    def load(split: str) -> VideoDataset:
        return open_dataset(config.data.root, split, config.data.format, config.data.subset,
                            size=config.data.decode_size, preload=config.data.preload)

    train_set = train_set or load("train")
    if val_set is None and has_split(config.data.root, config.data.format, "val"):
        val_set = load("val")
    if train_set.skipped:
        path, reason = train_set.skipped[0]
        say(f"left out {len(train_set.skipped)} unreadable videos of {train_set.root} (first: {path}: {reason})")
    return train_set, val_set


def _evaluation_sets(config: Config, train_set: VideoDataset, val_set: VideoDataset | None,
                     say: Callable[[str], None]) -> list[EvaluationSet]:
    """What training's evaluation scores, checked before the first step (a task the labels do not allow is named
    once and left out): the training data, or each Penn Action action on its own (PROTOCOL.md), exactly as
    `mvformer evaluate` does."""
    if val_set is None or not (train_set.labelled and val_set.labelled):
        return []
    if config.data.format == "penn_action" and config.data.subset is None:
        sets = evaluation_sets(config)
    else:
        sets = [EvaluationSet(Path(config.data.root).name or "data", train_set, val_set)]
        check_scorable(sets[0], config.eval)
    for line in (line for dataset in sets for line in dataset.notes):
        say(line)
    return sets


def _start(run: _Run, resume: bool) -> tuple[int, int, list[float]]:
    """Resume from the run folder's checkpoint, or check that a fresh run may use the folder (writing nothing);
    returns (epoch, step, epoch losses)."""
    config, ranks, path = run.config, run.ranks, run.checkpoint_path
    start = (0, 0, [])
    if resume:
        state = load_checkpoint(path)
        if state["version"] != CHECKPOINT_VERSION:
            raise MVFormerError(f"{path}: a version-{state['version']} checkpoint can be evaluated but not resumed")
        differences = config_differences(state["config"], config.to_dict(), ignore=("train.output_dir",))
        if differences:
            raise MVFormerError(f"{path}: was written with a different config (first: '{differences[0]}'); resume "
                                f"with the same one")
        if state["world_size"] != ranks.world_size:
            raise MVFormerError(f"{path}: was written by {state['world_size']} processes; resume it with the same "
                                f"number (got {ranks.world_size})")
        run.model.load_trainable_state_dict(state["model"], str(path))
        run.optimizer.load_state_dict(state["optimizer"])
        if run.scaler is not None and state.get("scaler"):
            run.scaler.load_state_dict(state["scaler"])
        if run.classifier is not None:
            run.classifier.load_state_dict(state["objective_head"])
        restore_random_states(state["random_states"][ranks.rank])
        run.counters.update(state["counters"])
        start = (state["epoch"], state["step"], list(state["epoch_losses"]))
    elif path.exists():
        raise MVFormerError(f"{path.parent}: already holds a checkpoint; pass --resume to continue it or choose "
                            f"another train.output_dir")
    elif path.parent.is_dir() and any(entry.name != LOCK_NAME for entry in path.parent.iterdir()):
        raise MVFormerError(f"{path.parent}: holds files of another run ({METRICS_NAME}, {CONFIG_NAME}, ...); a fresh "
                            f"run needs an empty or new train.output_dir")
    elif config.train.init_from:
        run.model.load_trainable_state_dict(trainable_weights(config.train.init_from), config.train.init_from)
    return start


def _claim(run: _Run) -> None:
    """Write the run's config: the first write, once every check has passed, so a refused start leaves nothing
    behind that would block the corrected command."""
    any_rank(False, run.device)  # a barrier: every rank has looked at the folder before the first one writes to it
    if run.ranks.is_main:
        save_config(run.config, run.checkpoint_path.parent / CONFIG_NAME)


def _open_clips(config: Config, train_set: VideoDataset, val_set: VideoDataset | None, labelled: bool,
                say: Callable[[str], None]) -> tuple[TrainingClips | CachedTrainingClips, FeatureCache | None]:
    """Training clips from the feature cache when one matches the config, else decoded from the videos; with the
    frame labels when the objective trains on them (`labelled`)."""
    opened = {"train": train_set, **({"val": val_set} if val_set is not None else {})}
    cache = open_feature_cache(config, tuple(opened), augmented=config.data.augment.enabled, datasets=opened,
                               note=say)
    clip_args = (config.data.clip_len, config.data.max_stretch, config.train.seed, config.data.sampling,
                 config.data.consistent_offset)
    sampling = {"sampler": objective_sampler(config),
                "labels": [r.labels for r in train_set.records] if labelled else None}
    if cache is not None:
        return CachedTrainingClips(cache, "train", *clip_args, augmented=config.data.augment.enabled,
                                   **sampling), cache
    native = (config.data.image_size, config.data.augment) if config.data.decode_size is None else None
    return TrainingClips(train_set, *clip_args, augment_here=native, **sampling), None


def _step_module(config: Config, model: MVFormer, classifier: FrameClassifier | None, ranks: Ranks) -> nn.Module:
    """What a step differentiates, wrapped in DDP under torchrun."""
    step_module = TrainStep(model, config.train.objective, classifier)
    if not ranks.distributed:
        return step_module
    # Only SCL uses the projection head, and a zeroed visual input leaves the pooling idle.
    unused = config.model.zero_visual_input or config.train.objective != "scl"
    return DistributedDataParallel(step_module, find_unused_parameters=unused)


def _evaluate(run: _Run) -> dict | None:
    """Protocol metrics of every evaluation set ({"datasets": ..., "mean": ...}), the videos embedded by all ranks
    (each a share) and scored on rank 0 (None elsewhere)."""
    ranks, embedded = run.ranks, []
    for dataset in run.eval_sets:
        splits = []
        for split, videos in (("train", dataset.train), ("val", dataset.val)):
            mine = list(range(ranks.rank, len(videos), ranks.world_size))
            embs = embed_split(run.model, videos, run.device, run.cache, split, f"embedding {dataset.name} {split}",
                               mine)
            shares = gather_objects(dict(zip(mine, embs)), ranks)
            splits.append([{k: v for share in shares for k, v in share.items()}[i] for i in range(len(videos))])
        embedded.append(tuple(splits))
    if not ranks.is_main:
        return None
    return score_with_controls(run.eval_sets, embedded, run.model, run.config.eval, run.say)


def _checkpoint(run: _Run, epoch: int, step: int, epoch_losses: list[float], where: str) -> None:
    """Write everything a resume needs to continue at (epoch, step) exactly; collective: every rank calls it.
    Weights that hold NaN or Inf are refused, so the last good checkpoint stays the latest."""
    if first_nonfinite(run.model.trainable_state_dict()) is not None:
        raise MVFormerError(f"{where}: the weights hold NaN or Inf; not writing a checkpoint over the last good one")
    state = {"version": CHECKPOINT_VERSION, "config": run.config.to_dict(), "epoch": epoch, "step": step,
             "world_size": run.ranks.world_size, "model": run.model.trainable_state_dict(),
             "optimizer": run.optimizer.state_dict(), "random_states": gather_objects(random_states(), run.ranks),
             "counters": dict(run.counters), "epoch_losses": list(epoch_losses),
             "scaler": run.scaler.state_dict() if run.scaler is not None else {},
             "objective_head": run.classifier.state_dict() if run.classifier is not None else {}}
    if run.ranks.is_main:
        save_checkpoint(run.checkpoint_path, state)


def _step(run: _Run, clips: dict, autocast: torch.autocast) -> tuple[float, bool, float]:
    """One optimisation step on this rank's share of a global batch (collated `clips`); returns the global batch's
    loss, whether it was finite, and the gradient norm before clipping. A step with a NaN/Inf loss or gradient norm
    changes nothing, on every rank: no update, and the BatchNorm running statistics are put back as they were."""
    config, device, model = run.config, run.device, run.model
    batch = training_batch(clips, device, config.data.image_size, config.data.augment, model.backbone.mean,
                           model.backbone.std)
    statistics = {name: buffer.clone() for name, buffer in model.named_buffers() if "running_" in name
                  or name.endswith("num_batches_tracked")}
    with autocast:
        outputs = run.step_module(batch).float()  # (b, V, T, E), or frame logits (b, V, T, C)
    loss, valid = objective_loss(run.config, outputs, batch)
    # Every rank's loss is weighted by its share of the global batch (valid frames for SCL), so DDP's gradient
    # average equals the gradient of the loss over the whole global batch.
    all_valid = sum_over_ranks(valid).clamp_min(1)
    run.optimizer.zero_grad(set_to_none=True)
    scaled = loss * valid / all_valid * run.ranks.world_size
    (run.scaler.scale(scaled) if run.scaler is not None else scaled).backward()
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.step_module.parameters(), config.train.grad_clip)
    global_loss = float(sum_over_ranks((loss * valid).detach()) / all_valid)
    norm = float(grad_norm)  # read after the loss has synced the device: no further wait
    finite = not any_rank(not (math.isfinite(global_loss) and math.isfinite(norm)), device)
    if finite:
        run.scaler.step(run.optimizer) if run.scaler is not None else run.optimizer.step()
    else:
        run.optimizer.zero_grad(set_to_none=True)
        buffers = dict(model.named_buffers())
        for name, value in statistics.items():
            buffers[name].copy_(value)
    if run.scaler is not None:
        run.scaler.update()  # a skipped fp16 step lowers the scale
    return global_loss, finite, norm


def _note_of(config: Config, line: str) -> None:
    """A note that names its run: several runs may share a terminal (the demo)."""
    note(f"{config.name}: {line}")


def _count_skipped(run: _Run, skipped: list[str], empty: bool) -> bool:
    """Count the batch's unreadable videos over all ranks, naming each once; returns whether any rank's share of
    the batch is `empty` (one reduction over the ranks for both)."""
    count, empty_shares = len(skipped), int(empty)
    if run.ranks.distributed:  # on the device: NCCL reduces GPU tensors only
        count, empty_shares = map(int, sum_over_ranks(torch.tensor([count, empty_shares], device=run.device)))
    run.counters["skipped_videos"] += count
    for reason in skipped:
        if reason not in run.warned:
            run.warned.add(reason)
            _note_of(run.config, f"skipping unreadable video: {reason}")  # every rank names its own
    return empty_shares > 0


def _count_finite(run: _Run, finite: bool, epoch: int, step: int) -> None:
    """Count a non-finite step; stop the run after `train.max_nonfinite_steps` of them in a row."""
    if finite:
        run.consecutive_nonfinite = 0
        return
    run.counters["nonfinite_steps"] += 1
    run.consecutive_nonfinite += 1
    if run.consecutive_nonfinite >= run.config.train.max_nonfinite_steps:
        raise MVFormerError(f"epoch {epoch} step {step}: loss or gradient not finite for "
                            f"{run.consecutive_nonfinite} consecutive steps; stopping ({run.checkpoint_path} "
                            f"holds the last good weights)")


def _train_epoch(run: _Run, epoch: int, first_step: int, epoch_losses: list[float], bar,
                 autocast: torch.autocast) -> float:
    """Train the steps of one epoch from `first_step` (appending to `epoch_losses`); returns the clips per second."""
    config, ranks = run.config, run.ranks
    per_rank = config.train.batch_size // ranks.world_size
    steps_per_epoch = len(run.train_set) // config.train.batch_size
    run.clips.epoch = epoch
    batches = epoch_batches(len(run.train_set), config.train.batch_size, config.train.seed, epoch)
    local = batches[first_step:, ranks.rank * per_rank:(ranks.rank + 1) * per_rank]  # (steps, per_rank)
    # Cached tokens are read from memory maps in this process: passing them through workers costs more.
    workers = 0 if run.cache is not None else config.data.num_workers
    # Workers hand batches to a pinning thread, so the copy to the GPU is asynchronous; without workers, pinning
    # would be one more copy in this process.
    pin = workers > 0 and run.device.type == "cuda"
    loader = DataLoader(run.clips, batch_sampler=local.tolist(), num_workers=workers, collate_fn=collate_clips,
                        pin_memory=pin, generator=torch.Generator())  # not the global RNG
    lr = config.train.lr * learning_rate_factor(epoch, config.train)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.model.train()
    clip_count, started, every_steps = 0, time.perf_counter(), config.train.checkpoint_every_steps
    steps, finite_steps, moved = 0, 0, False
    calibrating = 0  # fp16 steps skipped while the gradient scaler finds its scale (finite loss, overflowing grads)
    for step, batch in enumerate(loader, start=first_step):
        skipped = batch.pop("skipped")
        if _count_skipped(run, skipped, not batch):  # a rank has nothing left of its share: the step is skipped
            bar.update()
            continue
        global_loss, finite, grad_norm = _step(run, batch, autocast)
        steps, finite_steps = steps + 1, finite_steps + finite
        calibrating += not finite and run.scaler is not None and math.isfinite(global_loss)
        if finite:
            epoch_losses.append(global_loss)
            moved = moved or grad_norm > 0
        _count_finite(run, finite, epoch, step)
        clip_count += config.train.batch_size
        if every_steps and (step + 1) % every_steps == 0 and step + 1 < steps_per_epoch:
            _checkpoint(run, epoch, step + 1, epoch_losses, f"epoch {epoch} step {step}")
        rate = clip_count / (time.perf_counter() - started)
        bar.set_postfix(epoch=epoch, loss=f"{global_loss:.4f}", lr=f"{lr:.2e}", clips_s=f"{rate:.1f}",
                        skipped=run.counters["skipped_videos"], nonfinite=run.counters["nonfinite_steps"])
        bar.update()
    _check_learned(run, epoch, steps - calibrating, finite_steps, moved)
    return clip_count / max(time.perf_counter() - started, 1e-9)


def _check_learned(run: _Run, epoch: int, steps: int, finite_steps: int, moved: bool) -> None:
    """Stop a run that cannot learn, with one line, rather than let it finish without a word: every step of the
    epoch non-finite (nothing was updated), or every gradient exactly zero (the loss is constant). `steps` leaves
    out fp16 steps skipped by the gradient scaler while it calibrates: those are no sign of a broken loss."""
    if steps and not finite_steps:
        raise MVFormerError(f"epoch {epoch}: the loss or gradient of every step ({steps}) was NaN or Inf, so "
                            f"nothing was learned; check the objective's settings and train.lr ("
                            f"{run.checkpoint_path} holds the last good weights, if any)")
    if finite_steps and not moved:
        raise MVFormerError(f"epoch {epoch}: every gradient was exactly zero ({finite_steps} steps): the "
                            f"{run.config.train.objective} loss is constant under these settings, so nothing is "
                            f"learned; check the objective's settings")


def _autocast(config: Config, device: torch.device) -> torch.autocast:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.train.precision, torch.float32)
    return torch.autocast(device.type, dtype=dtype, enabled=config.train.precision != "fp32")


def train(config: Config, train_set: VideoDataset | None = None, val_set: VideoDataset | None = None,
          resume: bool = False, backbone=None) -> TrainResult:
    """Train `config` end to end; datasets and backbone may be passed in to share them between runs.

    Under torchrun every rank calls this; rank 0 alone logs, shows progress and writes checkpoints.
    """
    device = resolve_device(config.train.device)
    ranks = init_distributed(device)
    device = process_device(device, ranks)
    check_batch_divides(config.train.batch_size, ranks)
    run_dir = Path(config.train.output_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise MVFormerError(f"{run_dir}: train.output_dir exists and is not a folder")
    say = (lambda line: _note_of(config, line)) if ranks.is_main else silent
    seed_everything(config.train.seed)  # identical initial weights on every rank
    train_set, val_set = _open_data(config, train_set, val_set, say)
    check_batch_fits(len(train_set), config.train.batch_size)
    model = build_model(config, backbone).to(device)
    if ranks.distributed:
        synchronise_batch_norm(model, device)
    classifier = objective_head(config, train_set, ranks)
    if classifier is not None:
        classifier.to(device)
    trainable = [p for module in (model, classifier) if module is not None for p in module.parameters()
                 if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=config.train.lr, weight_decay=config.train.weight_decay)
    scaler = torch.amp.GradScaler(device.type) if config.train.precision == "fp16" else None
    eval_sets = _evaluation_sets(config, train_set, val_set, say)
    clips, cache = _open_clips(config, train_set, val_set, classifier is not None, say)
    run = _Run(config, ranks, device, model, optimizer, scaler, classifier,
               _step_module(config, model, classifier, ranks), train_set, clips, cache, eval_sets,
               run_dir / CHECKPOINT_NAME, MetricsLog(run_dir) if ranks.is_main else None, say)
    with run_folder_lock(run_dir, ranks.is_main):
        seed_everything(config.train.seed + ranks.rank)  # dropout differs between ranks, from one seed
        start_epoch, start_step, epoch_losses = _start(run, resume)
        _claim(run)
        final_metrics = _train_epochs(run, start_epoch, start_step, epoch_losses)
    return TrainResult(model.eval(), run_dir, final_metrics)


def _evaluate_and_log(run: _Run, epoch: int) -> dict | None:
    """Score the model after `epoch` and log the evaluation record; returns the mean metrics (None off rank 0)."""
    scores = _evaluate(run)
    if run.log is None:
        return None
    run.log.write(EvalRecord(epoch, scores["mean"], scores["time_only"]["mean"], scores["collapsed"], scores["health"],
                             scores["datasets"] if len(scores["datasets"]) > 1 else None))
    return scores["mean"]


def _final_evaluation_owed(run: _Run) -> bool:
    """Whether a finished run's log lacks the evaluation after its last epoch."""
    return read_log(run.checkpoint_path.parent).evaluation_after(run.config.train.epochs - 1) is None


def _train_epochs(run: _Run, start_epoch: int, start_step: int, epoch_losses: list[float]) -> dict | None:
    """Every epoch from (start_epoch, start_step) on: train, checkpoint, log, evaluate; returns the last metrics."""
    config, ranks = run.config, run.ranks
    autocast = _autocast(config, run.device)
    epochs, steps_per_epoch = config.train.epochs, len(run.train_set) // config.train.batch_size
    bar = progress_bar(total=epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch + start_step,
                       desc=config.name, unit="step", disable=not ranks.is_main or None)
    final_metrics = None
    for epoch in range(start_epoch, epochs):
        first_step = start_step if epoch == start_epoch else 0
        if first_step == 0:
            epoch_losses = []
        clips_per_s = _train_epoch(run, epoch, first_step, epoch_losses, bar, autocast)
        last = epoch == epochs - 1
        if last or (epoch + 1) % config.train.checkpoint_every == 0:
            _checkpoint(run, epoch + 1, 0, [], f"end of epoch {epoch}")
        if run.log is not None:
            run.log.write(EpochRecord(epoch, float(np.mean(epoch_losses)) if epoch_losses else float("nan"),
                                      run.optimizer.param_groups[0]["lr"], clips_per_s, **run.counters))
        if run.eval_sets and (last or (epoch + 1) % config.train.eval_every == 0):
            final_metrics = _evaluate_and_log(run, epoch)
    if start_epoch == epochs and run.eval_sets and any_rank(_final_evaluation_owed(run), run.device):
        final_metrics = _evaluate_and_log(run, epochs - 1)  # killed after the last checkpoint, before this
    bar.close()
    if run.log is not None:
        run.log.close()
    return final_metrics
