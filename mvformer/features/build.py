"""`mvformer cache-features`: run the frozen backbone once over a dataset and write its tokens (cache.py describes
the folder). Files are written in chunks of whole videos with pwrite + fsync (a store through a memory map into a
sparse file on a full disk is a SIGBUS, not an error); the manifest marks each chunk once it is on disk, so a kill
loses at most the chunk in flight and a rerun resumes after the last complete one.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from mvformer.config import AugmentConfig, Config
from mvformer.data.datasets import VideoDataset, check_generic_root, check_root, has_generic_split
from mvformer.data.formats import open_dataset
from mvformer.data.transforms import augment_views, normalize, prepare_frames
from mvformer.errors import MVFormerError
from mvformer.files import check_apart, exclusive_claim
from mvformer.features.cache import (
    AUGMENTED_SPLIT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    backbone_fingerprint,
    bytes_per_frame,
    cache_dir,
    cache_identity,
    default_cache_dir,
    file_paths,
    identity_mismatch,
    plain_augment,
    read_manifest,
    video_difference,
    video_entries,
    write_manifest,
)
from mvformer.model.backbone import FrozenBackbone, build_backbone
from mvformer.progress import note as say
from mvformer.progress import progress_bar
from mvformer.runtime import resolve_device

DEFAULT_CHUNK_FRAMES = 512
MAX_COPIES = 1000  # augmented copies of the train split; each is a whole copy of its tokens on disk


def _human(num_bytes: float) -> str:
    """1000 -> '1000 B', 1536 -> '1.5 KiB'."""
    units, power = ("B", "KiB", "MiB", "GiB", "TiB"), 0
    while num_bytes >= 1024 and power < len(units) - 1:
        num_bytes, power = num_bytes / 1024, power + 1
    return f"{num_bytes:.0f} B" if power == 0 else f"{num_bytes:.1f} {units[power]}"


def _chunks(counts: Sequence[int], chunk_frames: int) -> list[list[int]]:
    """Consecutive whole videos [first, end) grouped until each group holds at least `chunk_frames` frames."""
    chunks, first, frames = [], 0, 0
    for index, count in enumerate(counts):
        frames += count
        if frames >= chunk_frames or index == len(counts) - 1:
            chunks.append([first, index + 1])
            first, frames = index + 1, 0
    return chunks


def copy_generator(seed: int, video_index: int, copy: int) -> torch.Generator:
    """The generator of augmented copy `copy` (>= 1) of video `video_index`: a function of these three only."""
    state = np.random.SeedSequence([seed % 2**64, video_index, copy]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def copy_frames(frames: np.ndarray, copy: int, backbone: FrozenBackbone, augment: AugmentConfig | None, seed: int,
                video_index: int, device: torch.device | str = "cpu", mode: str = "squash") -> torch.Tensor:
    """uint8 frames (L, H, W, 3) -> normalised (L, 3, S, S) of one cached copy.

    Copy 0 is exactly `prepare_frames` (the evaluation view under the config's frame mode); copy k >= 1 is one
    `augment_views` draw (one view: the same crop, flip and colours on every frame) from
    `copy_generator(seed, video_index, k)`.
    """
    video = torch.from_numpy(frames).to(device)  # (L, H, W, 3)
    if not copy:
        return prepare_frames(video, backbone.image_size, backbone.mean, backbone.std, mode)
    views = augment_views(video[None], copy_generator(seed, video_index, copy), backbone.image_size, augment)
    return normalize(views[0], backbone.mean, backbone.std)  # (L, 3, S, S)


def _split_layout(dataset: VideoDataset, chunk_frames: int, copies: int) -> dict:
    counts = [record.num_frames for record in dataset.records]
    offsets = np.concatenate([[0], np.cumsum(counts)]).tolist()
    videos = [dict(entry, offset=offset) for entry, offset in zip(video_entries(dataset), offsets)]
    chunks = _chunks(counts, chunk_frames)
    return {"videos": videos, "num_frames": offsets[-1], "chunks": chunks, "copies": copies,
            "complete": [0] * (copies + 1)}


def _fresh_manifest(config: Config, backbone: FrozenBackbone, copies: int, chunk_frames: int,
                    datasets: Mapping[str, VideoDataset]) -> dict:
    identity = cache_identity(config)
    return {
        "format": FORMAT_VERSION,
        "identity": identity,
        "backbone_fingerprint": backbone_fingerprint(identity["backbone_path"]),
        "mean": list(backbone.mean), "std": list(backbone.std),
        "patch_dim": backbone.patch_dim, "cls_dim": backbone.cls_dim, "grid": list(backbone.grid),
        "num_patches": backbone.num_patches,
        "dtype": "float16",
        "preprocessing": {
            "decode": (f"every frame squashed to {identity['image_size']}x{identity['image_size']} by the decoder"
                       if identity["frames"] == "squash" else "every frame at its native size"),
            "copy0": "mvformer.data.transforms.prepare_frames under data.frames, backbone mean/std",
            "copies": "mvformer.data.augment.augment_views(one view per video, augment, "
                      "mvformer.features.copy_generator(seed, video index, copy)), backbone mean/std",
            "augment": plain_augment(config.data.augment),
            "seed": config.train.seed,
        },
        "copies": copies,
        "chunk_frames": chunk_frames,
        "splits": {split: _split_layout(dataset, chunk_frames, copies if split == AUGMENTED_SPLIT else 0)
                   for split, dataset in datasets.items()},
    }


def _reconcile(folder: Path, old: dict, new: dict, copies: int, note: Callable[[str], None]) -> dict:
    """Carry the completed chunks of an existing cache into `new`; refuse to mix in tokens of another config."""
    reason = identity_mismatch(old, new["identity"])
    if reason is not None:
        raise MVFormerError(f"{folder}: holds the feature cache of another config ({reason}); delete it or choose "
                            f"another --out")
    if old["backbone_fingerprint"] != new["backbone_fingerprint"]:
        note(f"{folder}: the backbone weights changed since it was cached; caching everything again")
        return new
    same_augment = old["preprocessing"]["augment"] == new["preprocessing"]["augment"]
    if old["copies"] and copies and not same_augment:
        raise MVFormerError(f"{folder}: its augmented copies were made with other data.augment settings; "
                            f"delete it, choose another --out, or cache with the settings it was made with")
    merged = dict(new, chunk_frames=old["chunk_frames"], copies=max(old["copies"], copies),
                  preprocessing=old["preprocessing"] if old["copies"] else new["preprocessing"], splits={})
    for split, layout in new["splits"].items():
        split_copies = merged["copies"] if split == AUGMENTED_SPLIT else 0
        previous = old["splits"].get(split)
        difference = None if previous is None else video_difference(previous["videos"], layout["videos"])
        if previous is not None and difference is None:
            complete = previous["complete"] + [0] * (split_copies + 1 - len(previous["complete"]))
            merged["splits"][split] = dict(previous, copies=split_copies, complete=complete)
            continue
        if previous is not None:
            note(f"{folder}: {difference} since split {split} was cached; caching that split again")
        counts = [video["num_frames"] for video in layout["videos"]]
        merged["splits"][split] = dict(layout, chunks=_chunks(counts, merged["chunk_frames"]), copies=split_copies,
                                       complete=[0] * (split_copies + 1))
    for split in old["splits"].keys() - new["splits"].keys():
        merged["splits"][split] = old["splits"][split]  # a split not asked for this time stays as it was
    return merged


def _chunk_end_bytes(manifest: dict, layout: dict, chunk: int) -> tuple[int, int]:
    """End offset in bytes, in the patch file and the CLS file, of chunk `chunk` of a split."""
    end_video = layout["chunks"][chunk][1] - 1
    end_frame = layout["videos"][end_video]["offset"] + layout["videos"][end_video]["num_frames"]
    patch_bytes, cls_bytes = bytes_per_frame(manifest)
    return end_frame * patch_bytes, end_frame * cls_bytes


def _trust_files(folder: Path, manifest: dict) -> None:
    """Count as complete only chunks that the files on disk still hold whole (a file may be gone or cut short)."""
    for split, layout in manifest["splits"].items():
        for copy in range(layout["copies"] + 1):
            sizes = [path.stat().st_size if path.is_file() else 0 for path in file_paths(folder, split, copy)]
            complete = layout["complete"][copy]
            while complete and any(size < end for size, end in zip(sizes, _chunk_end_bytes(manifest, layout,
                                                                                             complete - 1))):
                complete -= 1
            layout["complete"][copy] = complete


def _bytes_to_write(manifest: dict, splits: Sequence[str]) -> tuple[int, int]:
    """(cache of `splits`, what their incomplete chunks still need), in bytes."""
    patch_bytes, cls_bytes = bytes_per_frame(manifest)
    total = remaining = 0
    for layout in (manifest["splits"][split] for split in splits):
        split_bytes = layout["num_frames"] * (patch_bytes + cls_bytes)
        for copy in range(layout["copies"] + 1):
            complete = layout["complete"][copy]
            done = sum(_chunk_end_bytes(manifest, layout, complete - 1)) if complete else 0
            total += split_bytes
            remaining += split_bytes - done
    return total, remaining


def _write_all(fd: int, array: np.ndarray, offset: int) -> None:
    """Write a contiguous array at byte `offset` of a file, however many pwrite calls it takes."""
    view = memoryview(np.ascontiguousarray(array)).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _fill_split(folder: Path, manifest: dict, split: str, dataset: VideoDataset, backbone: FrozenBackbone,
                device: torch.device, augment: AugmentConfig) -> None:
    """Compute and write every incomplete chunk of one split; the manifest marks each chunk once it is on disk."""
    layout = manifest["splits"][split]
    patch_bytes, cls_bytes = bytes_per_frame(manifest)
    seed = manifest["preprocessing"]["seed"]
    (folder / split).mkdir(exist_ok=True)
    descriptors = {}
    for copy in range(layout["copies"] + 1):
        for path, frame_bytes in zip(file_paths(folder, split, copy), (patch_bytes, cls_bytes)):
            descriptors[path] = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            os.ftruncate(descriptors[path], layout["num_frames"] * frame_bytes)  # sparse: costs no disk yet
    frames_per_chunk = [sum(video["num_frames"] for video in layout["videos"][first:end])
                        for first, end in layout["chunks"]]
    bar = progress_bar(total=sum(frames_per_chunk[min(layout["complete"]):]), desc=f"caching {split}", unit="frame")
    try:
        for chunk, (first, end) in enumerate(layout["chunks"]):
            pending = [copy for copy, complete in enumerate(layout["complete"]) if complete <= chunk]
            if not pending:
                continue
            for index in range(first, end):
                video = layout["videos"][index]
                frames = dataset.frames(index)  # (L, S, S, 3)
                if len(frames) != video["num_frames"]:
                    raise MVFormerError(f"{dataset.records[index].path}: decoded {len(frames)} frames, counted "
                                        f"{video['num_frames']} before; the file changed while it was being cached")
                for copy in pending:
                    patch_fd, cls_fd = (descriptors[path] for path in file_paths(folder, split, copy))
                    # A slice at a time bounds the float32 frames and tokens held; a copy's augmentation draw
                    # depends on its generator and the frame size only, so every slice gets the same one.
                    for start in range(0, len(frames), backbone.chunk_size):
                        inputs = copy_frames(frames[start:start + backbone.chunk_size], copy, backbone, augment, seed,
                                             index, device, manifest["identity"]["frames"])  # (f, 3, S, S)
                        patches, cls = backbone(inputs)  # (f, P, C), (f, C_cls)
                        patches, cls = patches.half(), cls.half()
                        if not (torch.isfinite(patches).all() and torch.isfinite(cls).all()):
                            raise MVFormerError(f"{dataset.records[index].path}: backbone tokens overflow float16, "
                                                f"so they cannot be cached")
                        row = video["offset"] + start
                        _write_all(patch_fd, patches.cpu().numpy(), row * patch_bytes)
                        _write_all(cls_fd, cls.cpu().numpy(), row * cls_bytes)
                bar.update(video["num_frames"])
            for copy in pending:
                for path in file_paths(folder, split, copy):
                    os.fsync(descriptors[path])
                layout["complete"][copy] = chunk + 1
            write_manifest(folder, manifest)
    finally:
        bar.close()
        for descriptor in descriptors.values():
            os.close(descriptor)


def _complete_chunks(manifest: dict) -> tuple[int, int]:
    """(complete, all) chunks over every split and copy."""
    layouts = manifest["splits"].values()
    return (sum(sum(layout["complete"]) for layout in layouts),
            sum(len(layout["chunks"]) * (layout["copies"] + 1) for layout in layouts))


def _open_splits(config: Config, splits: Sequence[str], note: Callable[[str], None]) -> dict[str, VideoDataset]:
    """The dataset's `splits` as the cache decodes them; a generic-layout split without a split file is skipped."""
    if config.data.format != "generic":
        return {split: open_dataset(config.data.root, split, config.data.format, config.data.subset,
                                    size=config.data.decode_size) for split in splits}
    root = check_generic_root(config.data.root)
    present = [split for split in splits if has_generic_split(root, split)]
    for split in sorted(set(splits) - set(present)):
        note(f"{root}: no splits/{split}.txt, so split {split} is not cached")
    if not present:
        raise MVFormerError(f"{root}: none of the splits {', '.join(splits)} exists (no splits/SPLIT.txt)")
    return {split: VideoDataset(root, split, size=config.data.decode_size) for split in present}


def _check_cache_folder(folder: Path, data_root: Path) -> None:
    """Refuse a cache folder that is a file, overlaps the dataset (an output is never one of the inputs), or is a
    non-empty folder holding no feature cache (nothing but a cache is ever written into)."""
    if folder.exists() and not folder.is_dir():
        raise MVFormerError(f"{folder}: exists and is not a folder, so it cannot hold a feature cache")
    check_apart(folder, data_root, "the feature cache", "the dataset root")
    if folder.is_dir() and not (folder / MANIFEST_NAME).is_file() and any(folder.iterdir()):
        raise MVFormerError(f"{folder}: is not empty and holds no feature cache ({MANIFEST_NAME} missing); choose "
                            f"another --out")


def cache_features(config: Config, out_dir: str | Path | None = None, copies: int = 0,
                   splits: Sequence[str] = ("train", "val"), note: Callable[[str], None] = say,
                   chunk_frames: int = DEFAULT_CHUNK_FRAMES, backbone: FrozenBackbone | None = None,
                   device: str | torch.device | None = None,
                   datasets: Mapping[str, VideoDataset] | None = None) -> Path:
    """Run the frozen backbone over the dataset's `splits` once and store the tokens; return the cache folder.

    out_dir: default `data.feature_cache` ("auto"/"none": the default folder). copies: augmented copies of every
    train frame besides copy 0. datasets: the splits already opened (decoded squashed to data.image_size), else
    the generic layout's splits are opened and those without a split file skipped. Resumes an interrupted cache;
    refuses to start when the disk cannot hold what remains to write, and refuses a folder that is a file, lies
    inside the dataset or holds it, or is not empty without holding a cache.
    """
    if not 0 <= copies <= MAX_COPIES:
        raise MVFormerError(f"--copies must be in [0, {MAX_COPIES}], got {copies}")
    if copies and not config.data.augment.enabled:
        raise MVFormerError("augmented copies need data.augment.enabled true (they would equal copy 0)")
    if chunk_frames < 1:
        raise MVFormerError(f"feature cache chunk_frames must be >= 1, got {chunk_frames}")
    if out_dir is not None and not str(out_dir).strip():
        raise MVFormerError("--out is empty: it must name the cache folder")
    folder = Path(out_dir) if out_dir is not None else cache_dir(config) or default_cache_dir(config)
    datasets = _open_splits(config, splits, note) if datasets is None else datasets
    _check_cache_folder(folder, check_root(config.data.root))
    for split, dataset in datasets.items():
        if dataset.size != config.data.decode_size:
            raise MVFormerError(f"{dataset.root}: split {split} is decoded at size {dataset.size}, the cache needs "
                                f"size {config.data.decode_size} (data.image_size, data.frames)")
    if device is None:
        device = resolve_device(config.train.device)
    device = torch.device(device)
    backbone = (backbone or build_backbone(config.backbone.name, config.backbone.blocks, path=config.backbone.path,
                                           image_size=config.data.image_size,
                                           chunk_size=config.backbone.chunk_size)).to(device)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_claim(folder.with_name(f".{folder.name}.lock"), str(folder)):  # one writer at a time
        _write_cache(folder, _fresh_manifest(config, backbone, copies, chunk_frames, datasets), copies, datasets,
                     backbone, device, config.data.augment, note)
    note(f"feature cache complete in {folder}")
    return folder


def _write_cache(folder: Path, manifest: dict, copies: int, datasets: Mapping[str, VideoDataset],
                 backbone: FrozenBackbone, device: torch.device, augment: AugmentConfig,
                 note: Callable[[str], None]) -> None:
    """Resume or start the cache in `folder` (held by this process): reconcile an existing manifest, check the
    disk, then fill every split chunk by chunk."""
    if (folder / MANIFEST_NAME).is_file():
        try:
            manifest = _reconcile(folder, read_manifest(folder), manifest, copies, note)
            _trust_files(folder, manifest)
        except (KeyError, TypeError, IndexError):
            raise MVFormerError(f"{folder / MANIFEST_NAME}: lacks fields a feature-cache manifest has; delete the "
                                f"folder to cache again") from None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        total, remaining = _bytes_to_write(manifest, list(datasets))
        free = shutil.disk_usage(folder).free
        frames = {split: manifest["splits"][split]["num_frames"] for split in datasets}
        note(f"feature cache {folder}: {_human(total)} ({', '.join(f'{s} {n} frames' for s, n in frames.items())}, "
             f"{manifest['copies']} augmented train copies), {_human(remaining)} to write, {_human(free)} free")
        if remaining > free:
            raise MVFormerError(f"{folder}: the feature cache needs {_human(remaining)} more but the disk has only "
                                f"{_human(free)} free")
        write_manifest(folder, manifest)
        for split, dataset in datasets.items():
            _fill_split(folder, manifest, split, dataset, backbone, device, augment)
    except OSError as error:
        done, count = _complete_chunks(manifest)
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise MVFormerError(f"{folder}: disk full while caching features; {done} of {count} chunks are complete "
                                f"and kept, free some space and rerun to resume") from None
        raise MVFormerError(f"{folder}: cannot write the feature cache ({error.strerror or error}); {done} of "
                            f"{count} chunks are complete, rerun to resume") from None


