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

from mvformer.checkpoint import (
    CHECKPOINT_NAME,
    CHECKPOINT_VERSION,
    load_checkpoint,
    save_checkpoint,
)
from mvformer.config import Config, save_config
from mvformer.data.datasets import VideoDataset
from mvformer.data.formats import has_split, open_dataset
from mvformer.errors import MVFormerError
from mvformer.evaluation.embed import embed_split, score_embeddings
from mvformer.features.cache import FeatureCache, open_feature_cache
from mvformer.losses.scl import sequence_contrastive_loss
from mvformer.model.mvformer import MVFormer, build_model
from mvformer.progress import note, progress_bar, silent
from mvformer.runtime import (
    random_states,
    resolve_device,
    restore_random_states,
    seed_everything,
)
from mvformer.train.clips import (
    CachedTrainingClips,
    TrainingClips,
    augment_batch,
    collate_clips,
    epoch_batches,
)
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
from mvformer.train.log import MetricsLog


@dataclass
class TrainResult:
    model: MVFormer
    run_dir: Path
    final_metrics: dict | None


@dataclass
class _Run:
    """What one training process holds while it trains."""

    config: Config
    ranks: Ranks
    device: torch.device
    model: MVFormer
    optimizer: torch.optim.Optimizer
    train_set: VideoDataset
    val_set: VideoDataset | None
    checkpoint_path: Path
    say: Callable[[str], None]
    cache: FeatureCache | None = None
    clips: TrainingClips | CachedTrainingClips | None = None
    step_module: nn.Module | None = None
    log: MetricsLog | None = None
    counters: dict = field(default_factory=lambda: {"nonfinite_steps": 0, "skipped_videos": 0})
    consecutive_nonfinite: int = 0
    warned: set = field(default_factory=set)

    @property
    def scorable(self) -> bool:
        return self.val_set is not None and self.train_set.labelled and self.val_set.labelled


def learning_rate_factor(epoch: int, epochs: int, warmup_epochs: int) -> float:
    """Per-epoch schedule: linear warm-up over `warmup_epochs`, then cosine decay towards 0."""
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    progress = (epoch - warmup_epochs) / max(1, epochs - warmup_epochs)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class _TrainStep(nn.Module):
    """The differentiable part of one step, as one module so that DDP can wrap it: batch -> projected embeddings."""

    def __init__(self, model: MVFormer):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        """batch["frames"] normalised (B, 2, T, 3, S, S) or cached batch["patches"], batch["cls"]."""
        masks = batch["masks"].flatten(0, 1)  # (B * 2, T)
        if "patches" in batch:  # float16 tokens read from the feature cache
            embs = self.model.embed_features(batch["patches"].flatten(0, 1).float(),
                                             batch["cls"].flatten(0, 1).float(), masks, project=True)
        else:
            embs = self.model(batch["frames"].flatten(0, 1), masks, project=True)
        return embs.view(*batch["masks"].shape, -1)  # (B, 2, T, E)


def _open_data(config: Config, train_set: VideoDataset | None, val_set: VideoDataset | None,
               say: Callable[[str], None]) -> tuple[VideoDataset, VideoDataset | None]:
    """The training split and, when the dataset has one, the validation split."""
    def load(split: str) -> VideoDataset:
        return open_dataset(config.data.root, split, config.data.format, config.data.subset,
                            size=config.data.image_size, preload=config.data.preload)

    train_set = train_set or load("train")
    if val_set is None and has_split(config.data.root, config.data.format, "val"):
        val_set = load("val")
    if train_set.skipped:
        path, reason = train_set.skipped[0]
        say(f"left out {len(train_set.skipped)} unreadable videos of {train_set.root} (first: {path}: {reason})")
    return train_set, val_set


def _start(run: _Run, resume: bool) -> tuple[int, int, list[float]]:
    """Resume from the run folder's checkpoint, or claim a fresh run folder; returns (epoch, step, epoch losses)."""
    config, ranks, path = run.config, run.ranks, run.checkpoint_path
    start = (0, 0, [])
    if resume:
        state = load_checkpoint(path)
        if state["version"] != CHECKPOINT_VERSION:
            raise MVFormerError(f"{path}: a version-{state['version']} checkpoint can be evaluated but not resumed")
        if state["config"] != config.to_dict():
            raise MVFormerError(f"{path}: was written with a different config; resume with the same one")
        if state["world_size"] != ranks.world_size:
            raise MVFormerError(f"{path}: was written by {state['world_size']} processes; resume it with the same "
                                f"number (got {ranks.world_size})")
        run.model.load_trainable_state_dict(state["model"], str(path))
        run.optimizer.load_state_dict(state["optimizer"])
        restore_random_states(state["random_states"][ranks.rank])
        run.counters.update(state["counters"])
        start = (state["epoch"], state["step"], list(state["epoch_losses"]))
    elif path.exists():
        raise MVFormerError(f"{path.parent}: already holds a checkpoint; pass --resume to continue it or choose "
                            f"another train.output_dir")
    if ranks.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_config(config, path.parent / "config.yaml")
        run.log = MetricsLog(path.parent)
    return start


def _open_clips(run: _Run) -> None:
    """Training clips from the feature cache when one matches the config, else decoded from the videos."""
    config = run.config
    opened = {"train": run.train_set, **({"val": run.val_set} if run.val_set is not None else {})}
    run.cache = open_feature_cache(config, tuple(opened), augmented=config.data.augment.enabled, datasets=opened,
                                   note=run.say)
    clip_args = (config.data.clip_len, config.data.max_stretch, config.train.seed)
    if run.cache is not None:
        run.clips = CachedTrainingClips(run.cache, "train", *clip_args, augmented=config.data.augment.enabled)
    else:
        run.clips = TrainingClips(run.train_set, *clip_args)


def _evaluate(run: _Run) -> dict | None:
    """Protocol metrics, the videos embedded by all ranks (each a share) and scored on rank 0 (None elsewhere)."""
    ranks, splits = run.ranks, []
    for split, dataset in (("train", run.train_set), ("val", run.val_set)):
        mine = list(range(ranks.rank, len(dataset), ranks.world_size))
        embs = embed_split(run.model, dataset, run.device, run.cache, split, f"embedding {split}", mine)
        shares = gather_objects(dict(zip(mine, embs)), ranks)
        splits.append([{k: v for share in shares for k, v in share.items()}[i] for i in range(len(dataset))])
    if not ranks.is_main:
        return None
    return score_embeddings(splits[0], run.train_set, splits[1], run.val_set, run.config.eval)


def _checkpoint(run: _Run, epoch: int, step: int, epoch_losses: list[float], where: str) -> None:
    """Write everything a resume needs to continue at (epoch, step) exactly; collective: every rank calls it.
    Weights that hold NaN or Inf are refused, so the last good checkpoint stays the latest."""
    if not all(torch.isfinite(value).all() for value in run.model.trainable_state_dict().values()
               if value.is_floating_point()):
        raise MVFormerError(f"{where}: the weights hold NaN or Inf; not writing a checkpoint over the last good one")
    state = {"version": CHECKPOINT_VERSION, "config": run.config.to_dict(), "epoch": epoch, "step": step,
             "world_size": run.ranks.world_size, "model": run.model.trainable_state_dict(),
             "optimizer": run.optimizer.state_dict(), "random_states": gather_objects(random_states(), run.ranks),
             "counters": dict(run.counters), "epoch_losses": list(epoch_losses)}
    if run.ranks.is_main:
        save_checkpoint(run.checkpoint_path, state)


def _step(run: _Run, batch: dict, autocast: torch.autocast) -> tuple[float, bool]:
    """One optimisation step on this rank's share of a global batch; returns the global batch's loss and whether
    it was finite (a step with a NaN/Inf loss or gradient norm changes nothing, on every rank)."""
    config, device = run.config, run.device
    batch = {key: value.to(device) for key, value in batch.items()}
    if "frames" in batch:
        batch["frames"] = augment_batch(batch.pop("frames"), batch.pop("augment_seed"), config.data.image_size,
                                        config.data.augment, run.model.backbone.mean, run.model.backbone.std)
    with autocast:
        embs = run.step_module(batch).float()  # (b, 2, T, E)
    loss = sequence_contrastive_loss(embs, batch["steps"], batch["seq_lens"], batch["masks"],
                                     config.loss.temperature, config.loss.variance)
    # Every rank's loss is weighted by its share of the global batch's valid frames, so DDP's gradient average
    # equals the gradient of the loss over the whole global batch.
    valid = batch["masks"].sum()
    all_valid = sum_over_ranks(valid)
    run.optimizer.zero_grad(set_to_none=True)
    (loss * valid / all_valid * run.ranks.world_size).backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.train.grad_clip)
    global_loss = float(sum_over_ranks((loss * valid).detach()) / all_valid)
    if any_rank(not (math.isfinite(global_loss) and torch.isfinite(grad_norm)), device):
        run.optimizer.zero_grad(set_to_none=True)
        return global_loss, False
    run.optimizer.step()
    return global_loss, True


def _count_skipped(run: _Run, skipped: list[str]) -> None:
    """Count the batch's unreadable videos over all ranks; name each once."""
    run.counters["skipped_videos"] += int(sum_over_ranks(torch.tensor(len(skipped))))
    for reason in skipped:
        if reason not in run.warned:
            run.warned.add(reason)
            note(f"skipping unreadable video: {reason}")


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
    loader = DataLoader(run.clips, batch_sampler=local.tolist(), num_workers=workers, collate_fn=collate_clips,
                        generator=torch.Generator())  # not the global RNG
    lr = config.train.lr * learning_rate_factor(epoch, config.train.epochs, config.train.warmup_epochs)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    run.model.train()
    clip_count, started, every_steps = 0, time.perf_counter(), config.train.checkpoint_every_steps
    for step, batch in enumerate(loader, start=first_step):
        _count_skipped(run, batch.pop("skipped"))
        if any_rank(not batch, run.device):  # a rank has nothing left of its share: the step is skipped
            bar.update()
            continue
        global_loss, finite = _step(run, batch, autocast)
        if finite:
            epoch_losses.append(global_loss)
        _count_finite(run, finite, epoch, step)
        clip_count += config.train.batch_size
        if every_steps and (step + 1) % every_steps == 0 and step + 1 < steps_per_epoch:
            _checkpoint(run, epoch, step + 1, epoch_losses, f"epoch {epoch} step {step}")
        rate = clip_count / (time.perf_counter() - started)
        bar.set_postfix(epoch=epoch, loss=f"{global_loss:.4f}", lr=f"{lr:.2e}", clips_s=f"{rate:.1f}",
                        skipped=run.counters["skipped_videos"], nonfinite=run.counters["nonfinite_steps"])
        bar.update()
    return clip_count / max(time.perf_counter() - started, 1e-9)


def train(config: Config, train_set: VideoDataset | None = None, val_set: VideoDataset | None = None,
          resume: bool = False, backbone=None) -> TrainResult:
    """Train `config` end to end; datasets and backbone may be passed in to share them between runs.

    Under torchrun every rank calls this; rank 0 alone logs, shows progress and writes checkpoints.
    """
    device = resolve_device(config.train.device)
    ranks = init_distributed(device)
    device = process_device(device, ranks)
    check_batch_divides(config.train.batch_size, ranks)
    say = note if ranks.is_main else silent
    seed_everything(config.train.seed)  # identical initial weights on every rank
    train_set, val_set = _open_data(config, train_set, val_set, say)
    model = build_model(config, backbone).to(device)
    if ranks.distributed:
        synchronise_batch_norm(model, device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                 lr=config.train.lr, weight_decay=config.train.weight_decay)
    run = _Run(config, ranks, device, model, optimizer, train_set, val_set,
               Path(config.train.output_dir) / CHECKPOINT_NAME, say)
    seed_everything(config.train.seed + ranks.rank)  # dropout differs between ranks, from one seed
    start_epoch, start_step, epoch_losses = _start(run, resume)
    _open_clips(run)
    run.step_module = _TrainStep(model)
    if ranks.distributed:
        run.step_module = DistributedDataParallel(run.step_module, find_unused_parameters=config.model.zero_visual_input)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.train.precision == "bf16")
    epochs, steps_per_epoch = config.train.epochs, len(train_set) // config.train.batch_size
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
            run.log.write({"epoch": epoch, "loss": float(np.mean(epoch_losses)) if epoch_losses else float("nan"),
                           "lr": run.optimizer.param_groups[0]["lr"], "clips_per_s": clips_per_s, **run.counters})
        if run.scorable and (last or (epoch + 1) % config.train.eval_every == 0):
            final_metrics = _evaluate(run)
            if run.log is not None:
                run.log.write({"epoch": epoch, "eval": final_metrics})
    bar.close()
    if run.log is not None:
        run.log.close()
    return TrainResult(model.eval(), run.checkpoint_path.parent, final_metrics)
