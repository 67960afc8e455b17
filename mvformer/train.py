"""The SCL training loop: two time-augmented views of each video, frozen backbone, trainable head.

One code path for one process and for torchrun (DDP): the global batch of `train.batch_size` videos is split
over the ranks, every random draw is a function of (seed, epoch, video) or saved in the checkpoint, and a
checkpoint records the step within the epoch, so a run killed at any moment resumes to the same weights.
"""

import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from mvformer.config import Config, config_from_dict, flatten_tree, save_config
from mvformer.data.augment import AugmentConfig, augment_views, normalize
from mvformer.data.datasets import VideoDataset
from mvformer.data.sampling import ClipViews, sample_views
from mvformer.distributed import (Ranks, any_rank, check_batch_divides, gather_objects, init_distributed,
                                  process_device, sum_over_ranks, synchronise_batch_norm)
from mvformer.errors import MVFormerError
from mvformer.evaluation.embed import embed_dataset, score_embeddings
from mvformer.features import CachedTrainingClips, FeatureCache, embed_cached_split, open_feature_cache
from mvformer.losses import sequence_contrastive_loss
from mvformer.model import MVFormer
from mvformer.progress import progress_bar

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 (epoch-boundary checkpoints) still loads as a model


class TrainingClips(Dataset):
    """Two views of each video: uint8 frames (2, T, H, W, 3), steps and masks (2, T), seq_lens (2,), and the seed
    of their augmentation (applied to whole batches on the training device by `augment_batch`).

    The draw of video i in epoch e (frames and augmentation) depends on (seed, e, i) only, so it is the same with
    any number of loader workers or ranks, and after a resume. A video that cannot be decoded gives
    {"skipped": reason} instead: training skips it and counts it.
    """

    def __init__(self, videos: VideoDataset, clip_len: int, max_stretch: float, seed: int):
        self.videos = videos
        self.clip_len = clip_len
        self.max_stretch = max_stretch
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.videos)

    def views(self, index: int) -> ClipViews:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return sample_views(self.videos.records[index].num_frames, self.clip_len, rng, max_stretch=self.max_stretch)

    def __getitem__(self, index: int) -> dict:
        views = self.views(index)
        needed, where = np.unique(views.indices, return_inverse=True)  # decode each frame once
        try:
            frames = self.videos.frames(index, needed)[where.reshape(views.indices.shape)]  # (2, T, H, W, 3)
        except MVFormerError as error:
            return {"skipped": str(error)}
        return {
            "frames": torch.from_numpy(frames),
            "augment_seed": torch.tensor(np.random.default_rng([self.seed, self.epoch, index, 1]).integers(2**63)),
            "steps": torch.from_numpy(views.steps),
            "masks": torch.from_numpy(views.masks),
            "seq_lens": torch.full((views.indices.shape[0],), views.seq_len, dtype=torch.int64),
        }


def augment_batch(frames: torch.Tensor, seeds: torch.Tensor, out_size: int, augment: AugmentConfig,
                  mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 frames (B, V, T, H, W, 3) on the training device -> normalised (B, V, T, 3, S, S); video b's views
    are drawn from its own seed, so the result does not depend on how videos are batched or sharded."""
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    views = augment_views(frames.flatten(0, 1), generators, out_size, augment)  # (B * V, T, 3, S, S)
    return normalize(views, mean, std).view(*frames.shape[:2], *views.shape[1:])


def collate_clips(items: list[dict]) -> dict:
    """Stack the readable clips of a batch; "skipped" lists the reasons of those that were not."""
    readable = [item for item in items if "skipped" not in item]
    batch = {key: torch.stack([item[key] for item in readable]) for key in readable[0]} if readable else {}
    batch["skipped"] = [item["skipped"] for item in items if "skipped" in item]
    return batch


def epoch_batches(num_videos: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """The global batches of one epoch, (steps, batch_size) video indices: a fixed shuffle of (seed, epoch).

    The last incomplete batch is dropped so that every rank gets its share of every batch.
    """
    if num_videos < batch_size:
        raise MVFormerError(f"train.batch_size ({batch_size}) is larger than the training set ({num_videos} videos)")
    order = np.random.default_rng([seed, epoch, 2]).permutation(num_videos)
    steps = num_videos // batch_size
    return order[:steps * batch_size].reshape(steps, batch_size)


def learning_rate_factor(epoch: int, epochs: int, warmup_epochs: int) -> float:
    """Per-epoch schedule: linear warm-up over `warmup_epochs`, then cosine decay towards 0."""
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    progress = (epoch - warmup_epochs) / max(1, epochs - warmup_epochs)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MVFormerError("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def random_states() -> dict:
    """Every global random state this process uses (Python, NumPy, torch CPU and CUDA), checkpoint-safe types."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = torch.from_numpy(numpy_state["state"]["key"].astype(np.int64))
    return {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_random_states(states: dict) -> None:
    random.setstate(states["python"])
    numpy_state = dict(states["numpy"])
    numpy_state["state"] = dict(numpy_state["state"], key=numpy_state["state"]["key"].numpy().astype(np.uint32))
    np.random.set_state(numpy_state)
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: Path, state: dict) -> None:
    """Write to a temporary file beside `path`, then rename: a kill never leaves a half checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint (plain tensors and containers only, loaded with weights_only=True)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise MVFormerError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise MVFormerError(f"{path}: not a readable mvformer checkpoint ({type(error).__name__})") from None
    if not isinstance(state, dict) or state.get("version") not in READABLE_VERSIONS:
        raise MVFormerError(f"{path}: not an mvformer checkpoint of a version this mvformer reads "
                            f"({', '.join(map(str, READABLE_VERSIONS))})")
    return state


def model_from_checkpoint(path: str | Path, backbone=None) -> MVFormer:
    """Rebuild a trained model (frozen backbone from its config, head from the checkpoint)."""
    state = load_checkpoint(path)
    config = config_from_dict(state["config"], f"{path} (stored config)")
    model = MVFormer(config, backbone)
    try:
        model.load_trainable_state_dict(state["model"])
    except (ValueError, RuntimeError) as error:  # missing keys, or tensors of other shapes
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]
        raise MVFormerError(f"{path}: weights do not fit the stored config ({detail})") from None
    return model.eval()


class MetricsLog:
    """metrics.jsonl, always written; TensorBoard scalars as well when tensorboard is installed."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "metrics.jsonl"
        self.path.touch()
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            self.tensorboard = None

    def write(self, record: dict) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for key, value in flatten_tree(record, "/").items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.tensorboard.add_scalar(key, value, record["epoch"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class TrainResult:
    model: MVFormer
    run_dir: Path
    final_metrics: dict | None


def _load_split(config: Config, split: str) -> VideoDataset:
    from mvformer.data.formats import open_dataset
    return open_dataset(config.data.root, split, config.data.format, config.data.subset,
                        size=config.data.image_size, preload=config.data.preload)


def _has_split(config: Config, split: str) -> bool:
    """Whether the dataset has `split` (only the generic layout can lack one)."""
    return config.data.format != "generic" or (Path(config.data.root) / "splits" / f"{split}.txt").is_file()


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


def _evaluate(model: MVFormer, train_set: VideoDataset, val_set: VideoDataset, config: Config, device: torch.device,
              ranks: Ranks, cache: FeatureCache | None) -> dict | None:
    """Protocol metrics, the videos embedded by all ranks (each a share) and scored on rank 0 (None elsewhere)."""
    splits = []
    for split, dataset in (("train", train_set), ("val", val_set)):
        mine = list(range(ranks.rank, len(dataset), ranks.world_size))
        desc = f"embedding {split}"
        if cache is None:
            embs = embed_dataset(model, dataset, device, desc, indices=mine)
        else:
            embs = embed_cached_split(model, cache, split, device, desc=desc, indices=mine)
        shares = gather_objects(dict(zip(mine, embs)), ranks)
        splits.append([{k: v for share in shares for k, v in share.items()}[i] for i in range(len(dataset))])
    if not ranks.is_main:
        return None
    return score_embeddings(splits[0], train_set, splits[1], val_set, config.eval)


def _checkpoint_state(config: Config, model: MVFormer, optimizer: torch.optim.Optimizer, epoch: int, step: int,
                      counters: dict, epoch_losses: list[float], ranks: Ranks) -> dict:
    """Everything a resume needs to continue at (epoch, step) exactly; collective: every rank calls it."""
    return {"version": CHECKPOINT_VERSION, "config": config.to_dict(), "epoch": epoch, "step": step,
            "world_size": ranks.world_size, "model": model.trainable_state_dict(),
            "optimizer": optimizer.state_dict(), "random_states": gather_objects(random_states(), ranks),
            "counters": dict(counters), "epoch_losses": list(epoch_losses)}


def _check_finite_weights(model: MVFormer, where: str) -> None:
    """Refuse to checkpoint weights that hold NaN or Inf (the last good checkpoint stays the latest)."""
    if not all(torch.isfinite(value).all() for value in model.trainable_state_dict().values()
               if value.is_floating_point()):
        raise MVFormerError(f"{where}: the weights hold NaN or Inf; not writing a checkpoint over the last good one")


def _step(model: MVFormer, step_module: nn.Module, optimizer: torch.optim.Optimizer, batch: dict, config: Config,
          device: torch.device, ranks: Ranks, autocast: torch.autocast) -> tuple[float, bool]:
    """One optimisation step on this rank's share of a global batch (`step_module`: `model` as DDP sees it);
    returns the global batch's loss and whether it was finite (a step with a NaN/Inf loss or gradient norm changes
    nothing, on every rank)."""
    batch = {key: value.to(device) for key, value in batch.items()}
    if "frames" in batch:
        batch["frames"] = augment_batch(batch.pop("frames"), batch.pop("augment_seed"), config.data.image_size,
                                        config.data.augment, model.backbone.mean, model.backbone.std)
    with autocast:
        embs = step_module(batch).float()  # (b, 2, T, E)
    loss = sequence_contrastive_loss(embs, batch["steps"], batch["seq_lens"], batch["masks"],
                                     config.loss.temperature, config.loss.variance)
    # Every rank's loss is weighted by its share of the global batch's valid frames, so DDP's gradient average
    # equals the gradient of the loss over the whole global batch.
    valid = batch["masks"].sum()
    all_valid = sum_over_ranks(valid)
    optimizer.zero_grad(set_to_none=True)
    (loss * valid / all_valid * ranks.world_size).backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
    global_loss = float(sum_over_ranks((loss * valid).detach()) / all_valid)
    if any_rank(not (math.isfinite(global_loss) and torch.isfinite(grad_norm)), device):
        optimizer.zero_grad(set_to_none=True)
        return global_loss, False
    optimizer.step()
    return global_loss, True


def train(config: Config, train_set: VideoDataset | None = None, val_set: VideoDataset | None = None,
          resume: bool = False, backbone=None) -> TrainResult:
    """Train `config` end to end; datasets and backbone may be passed in to share them between runs.

    Under torchrun every rank calls this; rank 0 alone logs, shows progress and writes checkpoints.
    """
    device = resolve_device(config.train.device)
    ranks = init_distributed(device)
    device = process_device(device, ranks)
    per_rank = check_batch_divides(config.train.batch_size, ranks)
    seed_everything(config.train.seed)  # identical initial weights on every rank
    train_set = train_set or _load_split(config, "train")
    if val_set is None and _has_split(config, "val"):
        val_set = _load_split(config, "val")
    scorable = val_set is not None and train_set.labelled and val_set.labelled
    if train_set.skipped and ranks.is_main:
        path, reason = train_set.skipped[0]
        print(f"mvformer: left out {len(train_set.skipped)} unreadable videos of {train_set.root} "
              f"(first: {path}: {reason})", file=sys.stderr)
    model = MVFormer(config, backbone).to(device)
    if ranks.distributed:
        synchronise_batch_norm(model, device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                 lr=config.train.lr, weight_decay=config.train.weight_decay)

    run_dir = Path(config.train.output_dir)
    checkpoint_path = run_dir / CHECKPOINT_NAME
    start_epoch, start_step, epoch_losses = 0, 0, []
    counters = {"nonfinite_steps": 0, "skipped_videos": 0}
    seed_everything(config.train.seed + ranks.rank)  # dropout differs between ranks, from one seed
    if resume:
        state = load_checkpoint(checkpoint_path)
        if state["version"] != CHECKPOINT_VERSION:
            raise MVFormerError(f"{checkpoint_path}: a version-{state['version']} checkpoint can be evaluated but "
                                f"not resumed")
        if state["config"] != config.to_dict():
            raise MVFormerError(f"{checkpoint_path}: was written with a different config; resume with the same one")
        if state["world_size"] != ranks.world_size:
            raise MVFormerError(f"{checkpoint_path}: was written by {state['world_size']} processes; resume it with "
                                f"the same number (got {ranks.world_size})")
        model.load_trainable_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restore_random_states(state["random_states"][ranks.rank])
        start_epoch, start_step = state["epoch"], state["step"]
        counters.update(state["counters"])
        epoch_losses = list(state["epoch_losses"])
    elif checkpoint_path.exists():
        raise MVFormerError(f"{run_dir}: already holds a checkpoint; pass --resume to continue it or choose "
                            f"another train.output_dir")
    if ranks.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    log = MetricsLog(run_dir) if ranks.is_main else None

    opened = {"train": train_set, **({"val": val_set} if val_set is not None else {})}
    cache = open_feature_cache(config, tuple(opened), augmented=config.data.augment.enabled, datasets=opened,
                               note=lambda line: print(f"mvformer: {line}", file=sys.stderr) if ranks.is_main else None)
    if cache is not None:
        clips = CachedTrainingClips(cache, "train", config.data.clip_len, config.data.max_stretch, config.train.seed,
                                    augmented=config.data.augment.enabled)
    else:
        clips = TrainingClips(train_set, config.data.clip_len, config.data.max_stretch, config.train.seed)
    step_module = _TrainStep(model)
    if ranks.distributed:
        step_module = DistributedDataParallel(step_module, find_unused_parameters=config.model.zero_visual_input)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.train.precision == "bf16")
    epochs, steps_per_epoch = config.train.epochs, len(train_set) // config.train.batch_size
    every_steps = config.train.checkpoint_every_steps
    bar = progress_bar(total=epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch + start_step,
                       desc=config.name, unit="step", disable=not ranks.is_main or None)
    final_metrics, consecutive_nonfinite, warned = None, 0, set()
    for epoch in range(start_epoch, epochs):
        clips.epoch = epoch
        first_step = start_step if epoch == start_epoch else 0
        if first_step == 0:
            epoch_losses = []
        batches = epoch_batches(len(train_set), config.train.batch_size, config.train.seed, epoch)
        local = batches[first_step:, ranks.rank * per_rank:(ranks.rank + 1) * per_rank]  # (steps, per_rank)
        # Cached tokens are read from memory maps in this process: passing them through workers costs more.
        loader = DataLoader(clips, batch_sampler=local.tolist(), num_workers=0 if cache is not None else config.data.num_workers,
                            collate_fn=collate_clips, generator=torch.Generator())  # not the global RNG
        lr = config.train.lr * learning_rate_factor(epoch, epochs, config.train.warmup_epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        clip_count, started = 0, time.perf_counter()
        for step, batch in enumerate(loader, start=first_step):
            skipped = batch.pop("skipped")
            counters["skipped_videos"] += int(sum_over_ranks(torch.tensor(len(skipped))))
            for reason in skipped:
                if reason not in warned:
                    warned.add(reason)
                    print(f"mvformer: skipping unreadable video: {reason}", file=sys.stderr)
            if any_rank(not batch, device):  # a rank has nothing left of its share: the step is skipped
                bar.update()
                continue
            global_loss, finite = _step(model, step_module, optimizer, batch, config, device, ranks, autocast)
            if finite:
                consecutive_nonfinite = 0
                epoch_losses.append(global_loss)
            else:
                counters["nonfinite_steps"] += 1
                consecutive_nonfinite += 1
                if consecutive_nonfinite >= config.train.max_nonfinite_steps:
                    raise MVFormerError(f"epoch {epoch} step {step}: loss or gradient not finite for "
                                        f"{consecutive_nonfinite} consecutive steps; stopping ({checkpoint_path} "
                                        f"holds the last good weights)")
            clip_count += config.train.batch_size
            if every_steps and (step + 1) % every_steps == 0 and step + 1 < steps_per_epoch:
                _check_finite_weights(model, f"epoch {epoch} step {step}")
                state = _checkpoint_state(config, model, optimizer, epoch, step + 1, counters, epoch_losses, ranks)
                if ranks.is_main:
                    save_checkpoint(checkpoint_path, state)
            rate = clip_count / (time.perf_counter() - started)
            bar.set_postfix(epoch=epoch, loss=f"{global_loss:.4f}", lr=f"{lr:.2e}", clips_s=f"{rate:.1f}",
                            skipped=counters["skipped_videos"], nonfinite=counters["nonfinite_steps"])
            bar.update()
        last = epoch == epochs - 1
        if last or (epoch + 1) % config.train.checkpoint_every == 0:
            _check_finite_weights(model, f"end of epoch {epoch}")
            state = _checkpoint_state(config, model, optimizer, epoch + 1, 0, counters, [], ranks)
            if ranks.is_main:
                save_checkpoint(checkpoint_path, state)
        if log is not None:
            log.write({"epoch": epoch, "loss": float(np.mean(epoch_losses)) if epoch_losses else float("nan"),
                       "lr": lr, "clips_per_s": clip_count / max(time.perf_counter() - started, 1e-9), **counters})
        if scorable and (last or (epoch + 1) % config.train.eval_every == 0):
            final_metrics = _evaluate(model, train_set, val_set, config, device, ranks, cache)
            if log is not None:
                log.write({"epoch": epoch, "eval": final_metrics})
    bar.close()
    if log is not None:
        log.close()
    return TrainResult(model.eval(), run_dir, final_metrics)
