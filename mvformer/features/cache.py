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
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mvformer.config import AugmentConfig, Config
from mvformer.data.datasets import VideoDataset, split_names
from mvformer.data.video import IMAGE_SUFFIXES
from mvformer.errors import MVFormerError
from mvformer.files import write_text
from mvformer.hub import resolve
from mvformer.progress import note as say

FORMAT_VERSION = 2  # 2: the published 5 x 9 blur in augmented copies, data.frames in the identity
MANIFEST_NAME = "manifest.json"
CACHE_DIR_VARIABLE = "MVFORMER_CACHE_DIR"
AUGMENTED_SPLIT = "train"  # only training reads augmented copies; other splits store copy 0 alone
DTYPE = np.float16
BYTES_PER_VALUE = np.dtype(DTYPE).itemsize
IDENTITY_NAMES = {  # manifest identity key -> config key
    "data_root": "data.root", "data_format": "data.format", "data_subset": "data.subset",
    "backbone_name": "backbone.name", "backbone_path": "backbone.path", "blocks": "backbone.blocks",
    "image_size": "data.image_size", "frames": "data.frames",
}


def cache_identity(config: Config) -> dict:
    """What the cached tokens are a function of, as the config states it (paths absolute; a Hub id as its snapshot
    folder, which names the revision's commit, so that another revision is another cache)."""
    path = config.backbone.path
    return {
        "data_root": str(Path(config.data.root).resolve()),
        "data_format": config.data.format,
        "data_subset": config.data.subset,
        "backbone_name": config.backbone.name,
        "backbone_path": str(resolve(path).resolve()) if path else None,
        "blocks": list(config.backbone.blocks),
        "image_size": config.data.image_size,
        "frames": config.data.frames,
    }


def identity_mismatch(manifest: dict, identity: dict) -> str | None:
    """The first field of `cache_identity` on which a manifest differs, as one phrase; None when none does."""
    for key, wanted in identity.items():
        cached = manifest["identity"].get(key)
        if cached != wanted:
            return f"{IDENTITY_NAMES[key]} is {cached!r} in the cache but {wanted!r} in the config"
    return None


def plain_augment(augment: AugmentConfig) -> dict:
    """Augmentation settings as JSON stores them (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(augment)))


def default_cache_dir(config: Config) -> Path:
    """$MVFORMER_CACHE_DIR (or ~/.cache/mvformer) / features / a short hash of the config's `cache_identity`."""
    base = Path(os.environ.get(CACHE_DIR_VARIABLE) or Path.home() / ".cache" / "mvformer")
    key = hashlib.sha256(json.dumps(cache_identity(config), sort_keys=True).encode()).hexdigest()[:16]
    return base / "features" / key


def cache_dir(config: Config) -> Path | None:
    """The folder `data.feature_cache` names: "auto" -> `default_cache_dir`, "none" -> None, else that path."""
    setting = config.data.feature_cache
    if setting == "none":
        return None
    return default_cache_dir(config) if setting == "auto" else Path(setting)


def _stat_fingerprint(path: Path) -> list[int]:
    """[size, modification time in ns] of a file (symbolic links followed)."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def backbone_fingerprint(path: str | None) -> dict | None:
    """Size and modification time of the weights file, or of each file of a weights folder, so that new weights
    at the same path are noticed even when they have the same size (same architecture); None without a path."""
    if not path or not Path(path).exists():
        return None
    files = sorted(entry for entry in Path(path).iterdir() if entry.is_file()) if Path(path).is_dir() else [Path(path)]
    return {entry.name: _stat_fingerprint(entry) for entry in files}


def video_fingerprint(path: Path) -> str | None:
    """Size and modification time (ns) of a video file, or of every image of a frame folder (hashed together):
    cheap, and changes when any file of the video is replaced or rewritten; None when the path is gone."""
    try:
        if path.is_dir():
            images = sorted((entry.name, *_stat_fingerprint(Path(entry.path))) for entry in os.scandir(path)
                            if not entry.name.startswith(".") and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES)
            digest = hashlib.sha256(json.dumps(images).encode()).hexdigest()[:16]
            return f"{len(images)} images, sizes and mtimes {digest}"
        size, mtime_ns = _stat_fingerprint(path)
        return f"{size} bytes, mtime_ns {mtime_ns}"
    except OSError:
        return None


def video_entries(dataset: VideoDataset) -> list[dict]:
    """Name, path (relative to the dataset root when inside it), fingerprint and frame count of every video."""
    root = dataset.root.resolve()
    paths = [record.path.resolve() for record in dataset.records]
    return [{"name": record.name, "path": str(path.relative_to(root) if path.is_relative_to(root) else path),
             "fingerprint": video_fingerprint(path), "num_frames": record.num_frames}
            for record, path in zip(dataset.records, paths)]


def file_paths(folder: Path, split: str, copy: int) -> tuple[Path, Path]:
    return folder / split / f"copy{copy}_patches.f16", folder / split / f"copy{copy}_cls.f16"


def bytes_per_frame(manifest: dict) -> tuple[int, int]:
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


def write_manifest(folder: Path, manifest: dict) -> None:
    """Write, fsync, then rename: the manifest on disk is always a whole one."""
    write_text(folder / MANIFEST_NAME, json.dumps(manifest, indent=1), fsync=True)


VIDEO_KEYS = ("name", "path", "fingerprint", "num_frames")


def video_difference(old: list[dict], new: list[dict]) -> str | None:
    """How two lists of `video_entries` first differ, as a phrase; None when they agree."""
    if [video["name"] for video in old] != [video["name"] for video in new]:
        return "the list of videos differs"
    for cached, current in zip(old, new):
        changed = [key for key in VIDEO_KEYS[1:] if cached[key] != current[key]]
        if changed:
            what = "files (size or modification time)" if changed == ["fingerprint"] else " and ".join(changed)
            return f"the {what} of video {current['name']} changed"
    return None


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
            for path, shape in zip(file_paths(self.folder, split, copy), shapes):
                if not path.is_file() or path.stat().st_size != int(np.prod(shape)) * BYTES_PER_VALUE:
                    raise MVFormerError(f"{path}: feature-cache file missing or of the wrong size; rerun "
                                        f"cache-features to repair it")
                maps.append(np.memmap(path, dtype=DTYPE, mode="r", shape=shape))
            self._maps[split, copy] = tuple(maps)
        return self._maps[split, copy]

    def features(self, split: str, video_index: int, frame_indices: Sequence[int] | np.ndarray | None = None,
                 copy: int = 0,
                 out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch tokens (T, P, C) and CLS (T, C_cls), float16, of frames `frame_indices` (default all) of a video.

        Only the asked-for frames are read from disk. The video must lie in a complete chunk of that copy. `out`:
        contiguous float16 tensors of those shapes to read into (and return), so that a caller assembling a clip
        copies no token twice.
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
        if out is not None:
            for source, target in zip((patches, cls), out):  # "clip": unbuffered; every row was checked above
                np.take(source, rows, axis=0, out=target.numpy(), mode="clip")
            return out
        return torch.from_numpy(np.asarray(patches[rows])), torch.from_numpy(np.asarray(cls[rows]))


def load_feature_cache(folder: str | Path) -> FeatureCache:
    """A cache folder as it is, complete or not, whatever config it was made with."""
    return FeatureCache(folder)


def _mismatch(folder: Path, manifest: dict, config: Config, splits: Sequence[str], augmented: bool,
              datasets: Mapping[str, VideoDataset]) -> str | None:
    """Why a cache cannot stand in for the backbone under `config`, or None when it can."""
    identity = cache_identity(config)
    reason = identity_mismatch(manifest, identity)
    if reason is not None:
        return reason
    if manifest["backbone_fingerprint"] != backbone_fingerprint(identity["backbone_path"]):
        return "the backbone weights changed since it was cached"
    root = Path(identity["data_root"])
    for split in splits:
        layout = manifest["splits"].get(split)
        names = split_names(root, split) if config.data.format == "generic" else None
        if layout is None:
            if split in datasets or names is not None:
                return f"split {split} is not cached"
            continue  # the dataset has no such split
        if split in datasets:
            difference = video_difference(layout["videos"], video_entries(datasets[split]))
            if difference is not None:
                return f"{difference} since split {split} was cached"
        elif names is not None and [video["name"] for video in layout["videos"]] != names:
            return f"splits/{split}.txt lists other videos than the cache"
        changed = next((video["name"] for video in layout["videos"]
                        if video_fingerprint(root / video["path"]) != video["fingerprint"]), None)
        if changed is not None:
            return f"the files (size or modification time) of video {changed} changed since it was cached"
        copies = layout["copies"] if split == AUGMENTED_SPLIT and augmented else 0
        if not all(c == len(layout["chunks"]) for c in layout["complete"][:copies + 1]):
            return f"split {split} is only partly cached (rerun cache-features to finish it)"
        for copy in range(copies + 1):
            for path, frame_bytes in zip(file_paths(folder, split, copy), bytes_per_frame(manifest)):
                if not path.is_file() or path.stat().st_size != layout["num_frames"] * frame_bytes:
                    return f"{path.name} of split {split} is missing or cut short (rerun cache-features to repair it)"
    if augmented and AUGMENTED_SPLIT in splits:
        if not manifest["copies"]:
            return "it holds no augmented copies but data.augment is enabled (cache-features --copies K)"
        if manifest["preprocessing"]["augment"] != plain_augment(config.data.augment):
            return "its augmented copies were made with other data.augment settings"
    return None


def open_feature_cache(config: Config, splits: Sequence[str] = ("train", "val"), augmented: bool = False,
                       note: Callable[[str], None] = say,
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


