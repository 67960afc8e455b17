"""The SCL training loop: two time-augmented views of each video, frozen backbone, trainable head."""

import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mvformer.config import Config, config_from_dict, save_config
from mvformer.data.augment import augment_views, normalize
from mvformer.data.datasets import VideoDataset
from mvformer.data.sampling import sample_views
from mvformer.errors import MVFormerError
from mvformer.evaluation.embed import evaluate_model
from mvformer.losses import sequence_contrastive_loss
from mvformer.model import MVFormer
from mvformer.progress import progress_bar

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_VERSION = 1


class TrainingClips(Dataset):
    """Two views of each video: uint8 frames (2, T, H, W, 3), steps and masks (2, T), seq_lens (2,).

    The draw of video i in epoch e depends on (seed, e, i) only, so it is the same with any number of
    loader workers and after a resume.
    """

    def __init__(self, videos: VideoDataset, clip_len: int, max_stretch: float, seed: int):
        self.videos = videos
        self.clip_len = clip_len
        self.max_stretch = max_stretch
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict:
        record = self.videos.records[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        views = sample_views(record.num_frames, self.clip_len, rng, max_stretch=self.max_stretch)
        needed, where = np.unique(views.indices, return_inverse=True)  # decode each frame once
        frames = self.videos.frames(index, needed)[where.reshape(views.indices.shape)]  # (2, T, H, W, 3)
        return {
            "frames": torch.from_numpy(frames),
            "steps": torch.from_numpy(views.steps),
            "masks": torch.from_numpy(views.masks),
            "seq_lens": torch.full((views.indices.shape[0],), views.seq_len, dtype=torch.int64),
        }


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
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise MVFormerError(f"{path}: not an mvformer checkpoint of version {CHECKPOINT_VERSION}")
    return state


def model_from_checkpoint(path: str | Path, backbone=None) -> MVFormer:
    """Rebuild a trained model (frozen backbone from its config, head from the checkpoint)."""
    state = load_checkpoint(path)
    config = config_from_dict(state["config"], f"{path} (stored config)")
    model = MVFormer(config, backbone)
    try:
        model.load_trainable_state_dict(state["model"])
    except (ValueError, RuntimeError) as error:  # missing keys, or tensors of other shapes
        raise MVFormerError(f"{path}: {str(error).splitlines()[0]}") from None
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
            for key, value in _flatten_scalars(record).items():
                self.tensorboard.add_scalar(key, value, record["epoch"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _flatten_scalars(record: dict, prefix: str = "") -> dict:
    scalars = {}
    for key, value in record.items():
        if isinstance(value, dict):
            scalars.update(_flatten_scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and key != "epoch":
            scalars[prefix + key] = value
    return scalars


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class TrainResult:
    model: MVFormer
    run_dir: Path
    final_metrics: dict | None


def _load_split(config: Config, split: str) -> VideoDataset:
    return VideoDataset(config.data.root, split, size=config.data.image_size, preload=config.data.preload)


def train(config: Config, train_set: VideoDataset | None = None, val_set: VideoDataset | None = None,
          resume: bool = False, backbone=None) -> TrainResult:
    """Train `config` end to end; datasets and backbone may be passed in to share them between runs."""
    seed_everything(config.train.seed)
    device = resolve_device(config.train.device)
    train_set = train_set or _load_split(config, "train")
    if val_set is None and (Path(config.data.root) / "splits" / "val.txt").is_file():
        val_set = _load_split(config, "val")
    scorable = val_set is not None and all(r.labels is not None for r in train_set.records + val_set.records)
    model = MVFormer(config, backbone).to(device)

    run_dir = Path(config.train.output_dir)
    checkpoint_path = run_dir / CHECKPOINT_NAME
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                 lr=config.train.lr, weight_decay=config.train.weight_decay)
    start_epoch = 0
    if resume:
        state = load_checkpoint(checkpoint_path)
        if state["config"] != config.to_dict():
            raise MVFormerError(f"{checkpoint_path}: was written with a different config; resume with the same one")
        model.load_trainable_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch = state["epoch"] + 1
    elif checkpoint_path.exists():
        raise MVFormerError(f"{run_dir}: already holds a checkpoint; pass --resume to continue it or choose "
                            f"another train.output_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    log = MetricsLog(run_dir)

    clips = TrainingClips(train_set, config.data.clip_len, config.data.max_stretch, config.train.seed)
    loader_generator = torch.Generator().manual_seed(config.train.seed)
    loader = DataLoader(clips, batch_size=config.train.batch_size, shuffle=True, drop_last=False,
                        num_workers=config.data.num_workers, generator=loader_generator,
                        persistent_workers=config.data.num_workers > 0)
    augment = config.data.augment if config.data.augment.enabled else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.train.precision == "bf16")
    epochs = config.train.epochs
    bar = progress_bar(total=(epochs - start_epoch) * len(loader), desc=config.name, unit="step")
    final_metrics = None
    for epoch in range(start_epoch, epochs):
        clips.epoch = epoch
        loader_generator.manual_seed(config.train.seed * 100003 + epoch)
        lr = config.train.lr * learning_rate_factor(epoch, epochs, config.train.warmup_epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        losses, clip_count, started = [], 0, time.perf_counter()
        for step, batch in enumerate(loader):
            batch_size, views, length = batch["frames"].shape[:3]
            augment_seed = hash((config.train.seed, epoch, step)) % 2**63  # tuples of ints hash the same in every run
            augment_rng = torch.Generator().manual_seed(augment_seed)
            frames = augment_views(batch["frames"].flatten(0, 1), augment_rng, config.data.image_size, augment)
            frames = normalize(frames, model.backbone.mean, model.backbone.std).to(device)  # (B * 2, T, 3, S, S)
            masks = batch["masks"].to(device)
            with autocast:
                embs = model(frames, masks.flatten(0, 1), project=True)  # (B * 2, T, E)
            embs = embs.float().view(batch_size, views, length, -1)
            loss = sequence_contrastive_loss(embs, batch["steps"].to(device), batch["seq_lens"].to(device), masks,
                                             config.loss.temperature, config.loss.variance)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
            optimizer.step()
            losses.append(loss.item())
            clip_count += batch_size
            rate = clip_count / (time.perf_counter() - started)
            bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}", clips_s=f"{rate:.1f}")
            bar.update()
        log.write({"epoch": epoch, "loss": float(np.mean(losses)), "lr": lr,
                   "clips_per_s": clip_count / (time.perf_counter() - started)})
        last = epoch == epochs - 1
        if last or (epoch + 1) % config.train.checkpoint_every == 0:
            save_checkpoint(checkpoint_path, {
                "version": CHECKPOINT_VERSION, "config": config.to_dict(), "epoch": epoch,
                "model": model.trainable_state_dict(), "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state()})
        if scorable and (last or (epoch + 1) % config.train.eval_every == 0):
            final_metrics = evaluate_model(model, train_set, val_set, config.eval, device)
            log.write({"epoch": epoch, "eval": final_metrics})
    bar.close()
    log.close()
    return TrainResult(model.eval(), run_dir, final_metrics)
