"""Frozen-feature cache: run the backbone once over a dataset, then train and evaluate from its stored tokens.

The backbone is frozen, so its tokens for a frame never change; computing them once turns every later epoch and
evaluation into a read. Layout of a cache folder:

    manifest.json                 what was cached and how (backbone, blocks, image size, preprocessing, videos),
                                  and which chunks are complete; rewritten atomically after every chunk
    SPLIT/copyK_patches.f16       float16 (frames of the split, P, C): patch tokens of copy K, videos back to back
    SPLIT/copyK_cls.f16           float16 (frames of the split, C_cls)

Copy 0 is the evaluation view of every frame (decoded squashed to S x S, as training and evaluation decode it,
then `prepare_frames`); copies 1..K of the train split are `augment_views` draws, one per (seed, video, copy),
standing in for the online augmentation. Files are written in chunks of whole videos with pwrite + fsync (a store
through a memory map into a sparse file on a full disk is a SIGBUS, not an error), read back through read-only
memory maps. A kill loses at most the chunk in flight; a rerun resumes after the last complete one.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mvformer.backbone import FrozenBackbone, build_backbone
from mvformer.config import Config
from mvformer.data.augment import AugmentConfig, augment_views, normalize
from mvformer.data.datasets import VideoDataset
from mvformer.data.formats import open_dataset
from mvformer.data.sampling import sample_views
from mvformer.data.video import IMAGE_SUFFIXES
from mvformer.errors import MVFormerError
from mvformer.model import MVFormer
from mvformer.progress import progress_bar

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
CACHE_DIR_VARIABLE = "MVFORMER_CACHE_DIR"
AUGMENTED_SPLIT = "train"  # only training reads augmented copies; other splits store copy 0 alone
DEFAULT_CHUNK_FRAMES = 512
DTYPE = np.float16
BYTES_PER_VALUE = np.dtype(DTYPE).itemsize
IDENTITY_NAMES = {  # manifest identity key -> config key
    "data_root": "data.root", "data_format": "data.format", "data_subset": "data.subset",
    "backbone_name": "backbone.name", "backbone_path": "backbone.path", "blocks": "backbone.blocks",
    "image_size": "data.image_size",
}


def _human(num_bytes: float) -> str:
    """1000 -> '1000 B', 1536 -> '1.5 KiB'."""
    units, power = ("B", "KiB", "MiB", "GiB", "TiB"), 0
    while num_bytes >= 1024 and power < len(units) - 1:
        num_bytes, power = num_bytes / 1024, power + 1
    return f"{num_bytes:.0f} B" if power == 0 else f"{num_bytes:.1f} {units[power]}"


def _identity(config: Config) -> dict:
    """What the cached tokens are a function of, as the config states it (paths absolute)."""
    path = config.backbone.path
    return {
        "data_root": str(Path(config.data.root).resolve()),
        "data_format": config.data.format,
        "data_subset": config.data.subset,
        "backbone_name": config.backbone.name,
        "backbone_path": str(Path(path).resolve()) if path else None,
        "blocks": list(config.backbone.blocks),
        "image_size": config.data.image_size,
    }


def _identity_mismatch(manifest: dict, identity: dict) -> str | None:
    """The first field of `_identity` on which a manifest differs, as one phrase; None when none does."""
    for key, wanted in identity.items():
        cached = manifest["identity"].get(key)
        if cached != wanted:
            return f"{IDENTITY_NAMES[key]} is {cached!r} in the cache but {wanted!r} in the config"
    return None


def _plain_augment(augment: AugmentConfig) -> dict:
    """Augmentation settings as JSON stores them (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(augment)))


def default_cache_dir(config: Config) -> Path:
    """$MVFORMER_CACHE_DIR (or ~/.cache/mvformer) / features / a short hash of the config's `_identity`."""
    base = Path(os.environ.get(CACHE_DIR_VARIABLE) or Path.home() / ".cache" / "mvformer")
    key = hashlib.sha256(json.dumps(_identity(config), sort_keys=True).encode()).hexdigest()[:16]
    return base / "features" / key


def cache_dir(config: Config) -> Path | None:
    """The folder `data.feature_cache` names: "auto" -> `default_cache_dir`, "none" -> None, else that path."""
    setting = config.data.feature_cache
    if setting == "none":
        return None
    return default_cache_dir(config) if setting == "auto" else Path(setting)


def _backbone_fingerprint(path: str | None) -> dict | None:
    """Sizes of the files of a weights folder, so that new weights in the same folder are noticed."""
    if not path or not Path(path).is_dir():
        return None
    return {entry.name: entry.stat().st_size for entry in sorted(Path(path).iterdir()) if entry.is_file()}


def _video_fingerprint(path: Path) -> int:
    """Byte size of a video file, or number of images of a frame folder: cheap, and changes when the video does."""
    if path.is_dir():
        return sum(1 for entry in path.iterdir() if entry.suffix.lower() in IMAGE_SUFFIXES)
    return path.stat().st_size if path.is_file() else -1


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
                video_index: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 frames (L, H, W, 3) -> normalised (L, 3, S, S) of one cached copy.

    Copy 0 is exactly `prepare_frames` (centre crop, resize); copy k >= 1 is one `augment_views` draw
    (one view: the same crop, flip and colours on every frame) from `copy_generator(seed, video_index, k)`.
    """
    video = torch.from_numpy(frames)[None].to(device)  # (1, L, H, W, 3)
    generator = copy_generator(seed, video_index, copy) if copy else None
    views = augment_views(video, generator, backbone.image_size, augment if copy else None)  # (1, L, 3, S, S)
    return normalize(views[0], backbone.mean, backbone.std)


def _video_entries(dataset: VideoDataset) -> list[dict]:
    """Name, path (relative to the dataset root when inside it), fingerprint and frame count of every video."""
    root = dataset.root.resolve()
    paths = [record.path.resolve() for record in dataset.records]
    return [{"name": record.name, "path": str(path.relative_to(root) if path.is_relative_to(root) else path),
             "fingerprint": _video_fingerprint(path), "num_frames": record.num_frames}
            for record, path in zip(dataset.records, paths)]


def _split_layout(dataset: VideoDataset, chunk_frames: int, copies: int) -> dict:
    counts = [record.num_frames for record in dataset.records]
    offsets = np.concatenate([[0], np.cumsum(counts)]).tolist()
    videos = [dict(entry, offset=offset) for entry, offset in zip(_video_entries(dataset), offsets)]
    chunks = _chunks(counts, chunk_frames)
    return {"videos": videos, "num_frames": offsets[-1], "chunks": chunks, "copies": copies,
            "complete": [0] * (copies + 1)}


def _file_paths(folder: Path, split: str, copy: int) -> tuple[Path, Path]:
    return folder / split / f"copy{copy}_patches.f16", folder / split / f"copy{copy}_cls.f16"


def _frame_bytes(manifest: dict) -> tuple[int, int]:
    """Bytes of one frame's patch tokens and of its CLS token."""
    return (manifest["num_patches"] * manifest["patch_dim"] * BYTES_PER_VALUE, manifest["cls_dim"] * BYTES_PER_VALUE)


def read_manifest(folder: Path) -> dict:
    """The manifest of a cache folder; MVFormerError when it is missing, unreadable or of another format."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise MVFormerError(f"{folder}: no feature cache here ({MANIFEST_NAME} missing)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MVFormerError(f"{path}: unreadable feature-cache manifest ({type(error).__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        raise MVFormerError(f"{path}: not a feature-cache manifest of format {FORMAT_VERSION}")
    return manifest


def _write_manifest(folder: Path, manifest: dict) -> None:
    """Write, fsync, then rename: the manifest on disk is always a whole one."""
    path = folder / MANIFEST_NAME
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as handle:
        json.dump(manifest, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fresh_manifest(config: Config, backbone: FrozenBackbone, copies: int, chunk_frames: int,
                    datasets: Mapping[str, VideoDataset]) -> dict:
    identity = _identity(config)
    return {
        "format": FORMAT_VERSION,
        "identity": identity,
        "backbone_fingerprint": _backbone_fingerprint(identity["backbone_path"]),
        "mean": list(backbone.mean), "std": list(backbone.std),
        "patch_dim": backbone.patch_dim, "cls_dim": backbone.cls_dim, "grid": list(backbone.grid),
        "num_patches": backbone.num_patches,
        "dtype": "float16",
        "preprocessing": {
            "decode": f"every frame squashed to {identity['image_size']}x{identity['image_size']} by the decoder",
            "copy0": "mvformer.evaluation.embed.prepare_frames: centre square crop, resize, backbone mean/std",
            "copies": "mvformer.data.augment.augment_views(one view per video, augment, "
                      "mvformer.features.copy_generator(seed, video index, copy)), backbone mean/std",
            "augment": _plain_augment(config.data.augment),
            "seed": config.train.seed,
        },
        "copies": copies,
        "chunk_frames": chunk_frames,
        "splits": {split: _split_layout(dataset, chunk_frames, copies if split == AUGMENTED_SPLIT else 0)
                   for split, dataset in datasets.items()},
    }


VIDEO_KEYS = ("name", "path", "fingerprint", "num_frames")


def _same_videos(old: list[dict], new: list[dict]) -> bool:
    return [[v[k] for k in VIDEO_KEYS] for v in old] == [[v[k] for k in VIDEO_KEYS] for v in new]


def _reconcile(folder: Path, old: dict, new: dict, copies: int, note: Callable[[str], None]) -> dict:
    """Carry the completed chunks of an existing cache into `new`; refuse to mix in tokens of another config."""
    reason = _identity_mismatch(old, new["identity"])
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
        if previous is not None and _same_videos(previous["videos"], layout["videos"]):
            complete = previous["complete"] + [0] * (split_copies + 1 - len(previous["complete"]))
            merged["splits"][split] = dict(previous, copies=split_copies, complete=complete)
            continue
        if previous is not None:
            note(f"{folder}: the {split} videos changed since they were cached; caching that split again")
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
    patch_bytes, cls_bytes = _frame_bytes(manifest)
    return end_frame * patch_bytes, end_frame * cls_bytes


def _trust_files(folder: Path, manifest: dict) -> None:
    """Count as complete only chunks that the files on disk still hold whole (a file may be gone or cut short)."""
    for split, layout in manifest["splits"].items():
        for copy in range(layout["copies"] + 1):
            sizes = [path.stat().st_size if path.is_file() else 0 for path in _file_paths(folder, split, copy)]
            complete = layout["complete"][copy]
            while complete and any(size < end for size, end in zip(sizes, _chunk_end_bytes(manifest, layout,
                                                                                             complete - 1))):
                complete -= 1
            layout["complete"][copy] = complete


def _bytes_to_write(manifest: dict, splits: Sequence[str]) -> tuple[int, int]:
    """(cache of `splits`, what their incomplete chunks still need), in bytes."""
    patch_bytes, cls_bytes = _frame_bytes(manifest)
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
    patch_bytes, cls_bytes = _frame_bytes(manifest)
    seed = manifest["preprocessing"]["seed"]
    (folder / split).mkdir(exist_ok=True)
    descriptors = {}
    for copy in range(layout["copies"] + 1):
        for path, frame_bytes in zip(_file_paths(folder, split, copy), (patch_bytes, cls_bytes)):
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
                    patch_fd, cls_fd = (descriptors[path] for path in _file_paths(folder, split, copy))
                    # A slice at a time bounds the float32 frames and tokens held; a copy's augmentation draw
                    # depends on its generator and the frame size only, so every slice gets the same one.
                    for start in range(0, len(frames), backbone.chunk_size):
                        inputs = copy_frames(frames[start:start + backbone.chunk_size], copy, backbone, augment, seed,
                                             index, device)  # (f, 3, S, S)
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
                for path in _file_paths(folder, split, copy):
                    os.fsync(descriptors[path])
                layout["complete"][copy] = chunk + 1
            _write_manifest(folder, manifest)
    finally:
        bar.close()
        for descriptor in descriptors.values():
            os.close(descriptor)


def _complete_chunks(manifest: dict) -> tuple[int, int]:
    """(complete, all) chunks over every split and copy."""
    layouts = manifest["splits"].values()
    return (sum(sum(layout["complete"]) for layout in layouts),
            sum(len(layout["chunks"]) * (layout["copies"] + 1) for layout in layouts))


def cache_features(config: Config, out_dir: str | Path | None = None, copies: int = 0,
                   splits: Sequence[str] = ("train", "val"), note: Callable[[str], None] = print,
                   chunk_frames: int = DEFAULT_CHUNK_FRAMES, backbone: FrozenBackbone | None = None,
                   device: str | torch.device | None = None,
                   datasets: Mapping[str, VideoDataset] | None = None) -> Path:
    """Run the frozen backbone over the dataset's `splits` once and store the tokens; return the cache folder.

    out_dir: default `data.feature_cache` ("auto"/"none": the default folder). copies: augmented copies of every
    train frame besides copy 0. datasets: the splits already opened (decoded squashed to data.image_size), else
    the generic layout's splits are opened and those without a split file skipped. Resumes an interrupted cache;
    refuses to start when the disk cannot hold what remains to write.
    """
    if copies < 0:
        raise MVFormerError(f"--copies must be >= 0, got {copies}")
    if copies and not config.data.augment.enabled:
        raise MVFormerError("augmented copies need data.augment.enabled true (they would equal copy 0)")
    if chunk_frames < 1:
        raise MVFormerError(f"feature cache chunk_frames must be >= 1, got {chunk_frames}")
    root = Path(config.data.root)
    folder = Path(out_dir) if out_dir is not None else cache_dir(config) or default_cache_dir(config)
    if datasets is None and config.data.format != "generic":
        datasets = {split: open_dataset(root, split, config.data.format, config.data.subset,
                                        size=config.data.image_size) for split in splits}
    if datasets is None:
        present = [split for split in splits if (root / "splits" / f"{split}.txt").is_file()]
        for split in sorted(set(splits) - set(present)):
            note(f"{root}: no splits/{split}.txt, so split {split} is not cached")
        if not present:
            raise MVFormerError(f"{root}: none of the splits {', '.join(splits)} exists (no splits/SPLIT.txt)")
        datasets = {split: VideoDataset(root, split, size=config.data.image_size) for split in present}
    for split, dataset in datasets.items():
        if dataset.size != config.data.image_size:
            raise MVFormerError(f"{dataset.root}: split {split} is decoded at size {dataset.size}, the cache needs "
                                f"data.image_size {config.data.image_size}")
    if device is None:
        from mvformer.train import resolve_device  # train.py imports this module: resolve at call time
        device = resolve_device(config.train.device)
    device = torch.device(device)
    backbone = (backbone or build_backbone(config.backbone.name, config.backbone.blocks, path=config.backbone.path,
                                           image_size=config.data.image_size,
                                           chunk_size=config.backbone.chunk_size)).to(device)
    manifest = _fresh_manifest(config, backbone, copies, chunk_frames, datasets)
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
        _write_manifest(folder, manifest)
        for split, dataset in datasets.items():
            _fill_split(folder, manifest, split, dataset, backbone, device, config.data.augment)
    except OSError as error:
        done, count = _complete_chunks(manifest)
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise MVFormerError(f"{folder}: disk full while caching features; {done} of {count} chunks are complete "
                                f"and kept, free some space and rerun to resume") from None
        raise MVFormerError(f"{folder}: cannot write the feature cache ({error.strerror or error}); {done} of "
                            f"{count} chunks are complete, rerun to resume") from None
    note(f"feature cache complete in {folder}")
    return folder


@dataclass(frozen=True)
class CachedVideo:
    """One cached video: its name, frame count and first row in its split's files."""

    name: str
    num_frames: int
    offset: int


class FeatureCache:
    """Read access to a cache folder: tokens of any frames of any cached video, as float16 tensors."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.patch_dim, self.cls_dim = self.manifest["patch_dim"], self.manifest["cls_dim"]
        self.num_patches = self.manifest["num_patches"]
        self.grid = tuple(self.manifest["grid"])
        self.image_size = self.manifest["identity"]["image_size"]
        self._maps: dict[tuple[str, int], tuple[np.memmap, np.memmap]] = {}

    def __getstate__(self) -> dict:
        """Loader workers reopen the memory maps rather than receive pickled copies of whole files."""
        return dict(self.__dict__, _maps={})

    @property
    def num_copies(self) -> int:
        """Augmented copies of the train split (copy 0, the plain frames, not counted)."""
        return self.manifest["copies"]

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def _layout(self, split: str) -> dict:
        if split not in self.manifest["splits"]:
            raise MVFormerError(f"{self.folder}: split {split!r} is not cached (cached: {', '.join(self.splits)})")
        return self.manifest["splits"][split]

    def records(self, split: str) -> list[CachedVideo]:
        """The videos of a split, in split-file order."""
        return [CachedVideo(v["name"], v["num_frames"], v["offset"]) for v in self._layout(split)["videos"]]

    def _memmaps(self, split: str, copy: int) -> tuple[np.memmap, np.memmap]:
        if (split, copy) not in self._maps:
            layout = self._layout(split)
            shapes = ((layout["num_frames"], self.num_patches, self.patch_dim), (layout["num_frames"], self.cls_dim))
            maps = []
            for path, shape in zip(_file_paths(self.folder, split, copy), shapes):
                if not path.is_file() or path.stat().st_size != int(np.prod(shape)) * BYTES_PER_VALUE:
                    raise MVFormerError(f"{path}: feature-cache file missing or of the wrong size; rerun "
                                        f"cache-features to repair it")
                maps.append(np.memmap(path, dtype=DTYPE, mode="r", shape=shape))
            self._maps[split, copy] = tuple(maps)
        return self._maps[split, copy]

    def features(self, split: str, video_index: int, frame_indices: Sequence[int] | np.ndarray | None = None,
                 copy: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch tokens (T, P, C) and CLS (T, C_cls), float16, of frames `frame_indices` (default all) of a video.

        Only the asked-for frames are read from disk. The video must lie in a complete chunk of that copy.
        """
        layout = self._layout(split)
        if not 0 <= video_index < len(layout["videos"]):
            raise MVFormerError(f"{self.folder}: split {split} has {len(layout['videos'])} videos, no {video_index}")
        if not 0 <= copy <= layout["copies"]:
            raise MVFormerError(f"{self.folder}: split {split} has copies 0..{layout['copies']}, not {copy}")
        video = layout["videos"][video_index]
        complete = layout["complete"][copy]
        if complete == 0 or video_index >= layout["chunks"][complete - 1][1]:
            raise MVFormerError(f"{self.folder}: video {video['name']} (copy {copy}) is not cached yet; rerun "
                                f"cache-features to finish the cache")
        if frame_indices is None:
            rows = np.arange(video["num_frames"])
        else:
            rows = np.asarray(frame_indices, dtype=np.int64)
            if rows.size and (rows.min() < 0 or rows.max() >= video["num_frames"]):
                raise MVFormerError(f"{self.folder}: video {video['name']} has {video['num_frames']} frames; "
                                    f"frame index out of range")
        patches, cls = self._memmaps(split, copy)
        rows = rows + video["offset"]
        return torch.from_numpy(np.asarray(patches[rows])), torch.from_numpy(np.asarray(cls[rows]))


def load_feature_cache(folder: str | Path) -> FeatureCache:
    """A cache folder as it is, complete or not, whatever config it was made with."""
    return FeatureCache(folder)


def _split_names(root: Path, split: str) -> list[str] | None:
    path = root / "splits" / f"{split}.txt"
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]


def _mismatch(folder: Path, manifest: dict, config: Config, splits: Sequence[str], augmented: bool,
              datasets: Mapping[str, VideoDataset]) -> str | None:
    """Why a cache cannot stand in for the backbone under `config`, or None when it can."""
    identity = _identity(config)
    reason = _identity_mismatch(manifest, identity)
    if reason is not None:
        return reason
    if manifest["backbone_fingerprint"] != _backbone_fingerprint(identity["backbone_path"]):
        return "the backbone weights changed since it was cached"
    root = Path(identity["data_root"])
    for split in splits:
        layout = manifest["splits"].get(split)
        names = _split_names(root, split) if config.data.format == "generic" else None
        if layout is None:
            if split in datasets or names is not None:
                return f"split {split} is not cached"
            continue  # the dataset has no such split
        if split in datasets:
            if not _same_videos(layout["videos"], _video_entries(datasets[split])):
                return f"the {split} videos (names, files or frame counts) differ from those cached"
        elif names is not None and [video["name"] for video in layout["videos"]] != names:
            return f"splits/{split}.txt lists other videos than the cache"
        changed = next((video["name"] for video in layout["videos"]
                        if _video_fingerprint(root / video["path"]) != video["fingerprint"]), None)
        if changed is not None:
            return f"video {changed} changed since it was cached"
        copies = layout["copies"] if split == AUGMENTED_SPLIT and augmented else 0
        if not all(c == len(layout["chunks"]) for c in layout["complete"][:copies + 1]):
            return f"split {split} is only partly cached (rerun cache-features to finish it)"
        for copy in range(copies + 1):
            for path, frame_bytes in zip(_file_paths(folder, split, copy), _frame_bytes(manifest)):
                if not path.is_file() or path.stat().st_size != layout["num_frames"] * frame_bytes:
                    return f"{path.name} of split {split} is missing or cut short (rerun cache-features to repair it)"
    if augmented and AUGMENTED_SPLIT in splits:
        if not manifest["copies"]:
            return "it holds no augmented copies but data.augment is enabled (cache-features --copies K)"
        if manifest["preprocessing"]["augment"] != _plain_augment(config.data.augment):
            return "its augmented copies were made with other data.augment settings"
    return None


def open_feature_cache(config: Config, splits: Sequence[str] = ("train", "val"), augmented: bool = False,
                       note: Callable[[str], None] = print,
                       datasets: Mapping[str, VideoDataset] | None = None) -> FeatureCache | None:
    """The cache `data.feature_cache` names if it holds exactly what the backbone would compute under `config`.

    augmented: the caller trains with data.augment enabled and needs the augmented train copies.
    datasets: the caller's opened splits, checked video by video against the cache (else the split files).
    Returns None (and says why through `note`, except when "auto" finds no cache at all) when there is no
    usable cache; says "using feature cache at DIR" when there is.
    """
    folder = cache_dir(config)
    if folder is None:
        return None
    if not (folder / MANIFEST_NAME).is_file():
        if config.data.feature_cache != "auto":
            note(f"no feature cache at {folder} ({MANIFEST_NAME} missing); computing features")
        return None
    try:
        manifest = read_manifest(folder)
        reason = _mismatch(folder, manifest, config, splits, augmented, datasets or {})
    except MVFormerError as error:
        reason = str(error)
    except (KeyError, TypeError, IndexError):
        reason = f"{MANIFEST_NAME} lacks fields it should have"
    if reason is not None:
        note(f"feature cache at {folder} not used: {reason}")
        return None
    note(f"using feature cache at {folder}")
    return FeatureCache(folder)


class CachedTrainingClips(Dataset):
    """`mvformer.train.TrainingClips` from cached tokens: the same views of video i in epoch e, for any seed.

    Each item: patches (2, T, P, C) and cls (2, T, C_cls) float16, steps and masks (2, T), seq_lens (2,).
    Each view reads one augmented copy drawn after the views from the same generator (distinct copies for the
    two views when there are enough, as two online draws would differ); copy 0 when the cache has no copies or
    `augmented` is False.
    """

    def __init__(self, cache: FeatureCache, split: str, clip_len: int, max_stretch: float, seed: int,
                 augmented: bool = True):
        self.cache = cache
        self.split = split
        self.videos = cache.records(split)
        self.clip_len = clip_len
        self.max_stretch = max_stretch
        self.seed = seed
        self.num_copies = cache.num_copies if augmented and split == AUGMENTED_SPLIT else 0
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.videos)

    def _draw_copies(self, rng: np.random.Generator, num_views: int) -> np.ndarray:
        if self.num_copies == 0:
            return np.zeros(num_views, dtype=np.int64)
        if self.num_copies >= num_views:
            return rng.choice(self.num_copies, size=num_views, replace=False) + 1
        return rng.integers(1, self.num_copies + 1, size=num_views)

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        views = sample_views(self.videos[index].num_frames, self.clip_len, rng, max_stretch=self.max_stretch)
        copies = self._draw_copies(rng, len(views.indices))
        patches, cls = zip(*(self.cache.features(self.split, index, indices, int(copy))
                             for indices, copy in zip(views.indices, copies)))
        return {
            "patches": torch.stack(patches),  # (2, T, P, C)
            "cls": torch.stack(cls),  # (2, T, C_cls)
            "steps": torch.from_numpy(views.steps),
            "masks": torch.from_numpy(views.masks),
            "seq_lens": torch.full((views.indices.shape[0],), views.seq_len, dtype=torch.int64),
        }


@torch.no_grad()
def embed_cached_split(model: MVFormer, cache: FeatureCache, split: str, device: torch.device,
                       chunk_size: int = 256, desc: str | None = None,
                       indices: Sequence[int] | None = None) -> list[np.ndarray]:
    """One (L, E) float32 array of L2-normalised embeddings per video of a cached split (or of `indices`), in order.

    `MVFormer.embed_video` with the backbone replaced by cache reads: pooling chunk by chunk, then the
    temporal encoder over the whole video.
    """
    if (model.backbone.patch_dim, model.backbone.cls_dim) != (cache.patch_dim, cache.cls_dim):
        raise MVFormerError(f"{cache.folder}: cached tokens have {cache.patch_dim}/{cache.cls_dim} channels, the "
                            f"model expects {model.backbone.patch_dim}/{model.backbone.cls_dim}")
    was_training = model.training
    model.eval()
    dtype = model.head.embed.weight.dtype
    embeddings = []
    videos = cache.records(split)
    wanted = range(len(videos)) if indices is None else indices
    for index in progress_bar(wanted, desc=desc or f"embedding {split} (cached)", leave=False, unit="video"):
        tokens = []
        for start in range(0, videos[index].num_frames, chunk_size):
            rows = np.arange(start, min(start + chunk_size, videos[index].num_frames))
            patches, cls = cache.features(split, index, rows)  # (t, P, C), (t, C_cls)
            tokens.append(model.head.pooled_tokens(patches.to(device, dtype)[None], cls.to(device, dtype)[None]))
        embs = model.head.encode_tokens(torch.cat(tokens, dim=1))  # (1, L, E)
        embeddings.append(F.normalize(embs, dim=-1)[0].float().cpu().numpy())
    model.train(was_training)
    return embeddings
