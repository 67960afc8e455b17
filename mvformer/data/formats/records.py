"""What the benchmark readers share: the restricted unpickler, and records checked before any video is opened."""

from __future__ import annotations

import _compat_pickle
import importlib
import io
import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mvformer.data.datasets import check_name, inside_root, relative_inside
from mvformer.errors import MVFormerError

Skipped = list[tuple[Path, str]]


def _load_storage(data: bytes):
    """A torch storage inside a pickle, read back by torch's weights-only loader (never arbitrary code)."""
    return torch.load(io.BytesIO(data), weights_only=True)


_ALLOWED_GLOBALS = {
    ("builtins", "set"), ("builtins", "frozenset"), ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how protocols 0-2 store bytes
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("torch._utils", "_rebuild_tensor_v2"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers, numbers, strings, numpy arrays and torch tensors; refuses every other class."""

    def __init__(self, file, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))  # Python 2 names
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if module.startswith(("numpy.core.", "numpy._core.")):  # numpy < 2 writes numpy.core, numpy >= 2 numpy._core
            module = "numpy._core" + module[module.index(".", len("numpy.")):]
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _load_storage
        if (module, name) not in _ALLOWED_GLOBALS:
            raise MVFormerError(f"{self.path}: refusing to unpickle {module}.{name} (a dataset pickle may hold only "
                                f"lists, dicts, strings, numbers, numpy arrays and tensors)")
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError:  # numpy < 2 has no numpy._core
            return getattr(importlib.import_module(module.replace("numpy._core", "numpy.core")), name)


def load_pickle(path: str | Path, root: Path | None = None):
    """The object of a dataset pickle, refusing any class but containers, numbers, strings, arrays and tensors;
    with `root`, the pickle must resolve inside that dataset root."""
    path = Path(path)
    if root is not None:
        inside_root(root, path, str(root))
    if not path.is_file():
        raise MVFormerError(f"{path}: no such pickle file")
    try:
        with open(path, "rb") as file:
            return _RestrictedUnpickler(file, path).load()
    except MVFormerError:
        raise
    except Exception as error:  # an untrusted file: any failure is the file's fault
        raise MVFormerError(f"{path}: cannot read pickle ({type(error).__name__}: {error})") from None


@dataclass(frozen=True)
class Entry:
    """One video as its layout describes it: frames and labels are checked against each other later."""

    name: str
    path: Path
    labels: np.ndarray | None  # int64 (frames,), -1 = unlabelled
    length: int | None  # frame count the layout records
    source: str  # where labels and length come from, for error messages
    group: str | None = None  # the Penn Action action


def as_labels(values, source: str, num_classes: int | None) -> np.ndarray:
    """Frame labels as int64 (frames,): integer-valued, -1 (unlabelled) up to num_classes - 1."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise MVFormerError(f"{source}: frame labels must be a 1-D array of integers, found {array.dtype} "
                            f"{array.shape}")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array) & (array == np.round(array))):
        raise MVFormerError(f"{source}: frame labels must be whole numbers")
    labels = array.astype(np.int64)
    upper = num_classes - 1 if num_classes is not None else np.iinfo(np.int64).max
    bad = labels[(labels < -1) | (labels > upper)]
    if len(bad):
        allowed = f"[-1, {upper}]" if num_classes is not None else ">= -1"
        raise MVFormerError(f"{source}: frame label {bad[0]} is not in {allowed}")
    return labels


def as_count(value, source: str) -> int:
    """A frame count stored as int, numpy integer, integral float or 0-d tensor."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating)) and float(value).is_integer()):
        return int(value)
    raise MVFormerError(f"{source}: seq_len must be a whole number, found {value!r}")


def video_file(root: Path, relative, source: str) -> Path:
    """ROOT/relative for the video file a record names: relative, inside ROOT, existing."""
    path = relative_inside(root, relative, source, "video_file")
    if not path.exists():
        raise MVFormerError(f"{source}: names video {relative} but {path} does not exist")
    return path


def record_entries(records, root: Path, pickle_path: Path, num_classes: int | None,
                    indices: Iterable[int] | None = None) -> list[Entry]:
    """Entries of CARL-style records {"name", "video_file", "frame_label", "seq_len"}."""
    if not isinstance(records, list):
        raise MVFormerError(f"{pickle_path}: expected a list of video records, found {type(records).__name__}")
    if not records:
        raise MVFormerError(f"{pickle_path}: holds no video records (an empty split)")
    entries = []
    for i in range(len(records)) if indices is None else indices:
        record = records[i]
        source = f"{pickle_path} record {i}"
        if not isinstance(record, dict):
            raise MVFormerError(f"{source}: expected a dict, found {type(record).__name__}")
        missing = [key for key in ("name", "video_file", "frame_label", "seq_len") if key not in record]
        if missing:
            raise MVFormerError(f"{source}: has no {', '.join(map(repr, missing))} "
                                f"(keys: {', '.join(map(str, record))})")
        name = check_name(record["name"], source)
        source = f"{pickle_path} record {i} ({name})"
        path = video_file(root, record["video_file"], source)
        labels = as_labels(record["frame_label"], source, num_classes)
        entries.append(Entry(name, path, labels, as_count(record["seq_len"], source), source))
    return entries
