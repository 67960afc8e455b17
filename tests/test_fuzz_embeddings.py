"""Property-style fuzz of evaluate-embeddings' arrays: whatever a .npz file holds (shapes, dtypes, NaN, Inf, huge
integers, negative or wrapping lengths, empty or object arrays), scoring gives a valid result (JSON-ready numbers in
range, or null) or an MVFormerError of one line naming the file, never another exception.

Each example starts from a well-formed dataset and breaks it in up to three ways, so both the checks and the
metrics behind them are reached."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mvformer.errors import MVFormerError
from mvformer.evaluation.embeddings_io import score_files

ODD_VALUES = {  # per kind of array, the values that break it, or nearly do
    "embs": [np.nan, np.inf, -np.inf, 1e300, -1e20, 1e15, 2.0**63, 0.0],
    "labels": [2**40, 2**63 - 1, 10_000, 9_999, 5, -2, -(2**63), -1, 0, np.nan],
    "lens": [0, -3, 2**62, 2**63 - 1, 1, 100, np.inf],
}
DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.uint8, np.uint64, np.bool_,
          np.complex64, np.str_, object]


@st.composite
def well_formed(draw):
    """Arrays of a dataset the metrics can score: per split, videos of 2..8 frames, labels 0..C-1 in order with
    some -1, every phase in every video."""
    num_classes = draw(st.integers(1, 3))
    dim = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in ("train", "val"):
        lengths = rng.integers(num_classes + 1, 9, size=draw(st.integers(1, 4)))  # (videos,)
        labels = [np.sort(np.concatenate([np.arange(num_classes), rng.integers(0, num_classes, n - num_classes)]))
                  for n in lengths]
        labels = [np.where((rng.random(len(v)) < 0.2) & (np.append(np.diff(v) != 0, True) == 0), -1, v)
                  for v in labels]  # a few unlabelled frames, never the last of a phase
        arrays[f"{split}_labels"] = np.concatenate(labels)
        arrays[f"{split}_lens"] = lengths.astype(np.int64)
        arrays[f"{split}_embs"] = rng.normal(size=(int(lengths.sum()), dim)).astype(np.float32)
    return arrays


def _cast(array: np.ndarray, dtype) -> np.ndarray:
    """`array` as `dtype` where NumPy can convert it (overflow allowed), else unchanged."""
    try:
        with np.errstate(all="ignore"):
            return array.astype(dtype)
    except (ValueError, TypeError, OverflowError):
        return array


@st.composite
def broken(draw):
    """A well-formed dataset with up to three things broken."""
    arrays = draw(well_formed())
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(sorted(arrays)))
        array = arrays[name]
        kind = draw(st.sampled_from(["value", "value", "value", "dtype", "shape", "empty", "drop", "resize",
                                     "objects", "special"]))
        if kind == "value" and array.size and array.dtype.kind in "fiub":
            array = array.astype(np.float64 if array.dtype.kind == "f" else object)
            array.flat[draw(st.integers(0, array.size - 1))] = draw(st.sampled_from(ODD_VALUES[name.split("_")[1]]))
            array = _cast(array, np.float64) if name.endswith("embs") else np.array(array.tolist())
        elif kind == "special" and name.endswith("lens"):  # int64 sum wraps around to the right frame count
            frames = len(arrays.get(name.replace("lens", "embs"), []))
            array = np.array([2**63 - 1, 2**63 - 1, frames + 2])
        elif kind == "special" and name.endswith("embs") and array.ndim == 2:  # no values per frame
            array = array[:, :0]
        elif kind == "special" and name.endswith("labels"):  # every frame unlabelled
            array = np.full_like(array, -1)
        elif kind == "dtype":
            array = _cast(array, draw(st.sampled_from(DTYPES)))
        elif kind == "shape":
            array = array.reshape(draw(st.sampled_from([(1, -1), (-1, 1), (-1,)])))
        elif kind == "empty":
            array = array[:0]
        elif kind == "drop":
            arrays.pop(name)
            continue
        elif kind == "resize":
            array = np.resize(array, (max(0, len(array) + draw(st.integers(-3, 3))), *array.shape[1:]))
        elif kind == "objects":
            array = np.array([array, "x"], dtype=object)
        arrays[name] = array
    return arrays


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _in_range(metrics: dict) -> bool:
    """Every score a finite number where one is defined (accuracy and AP in [0, 1], tau in [-1, 1]), or None."""
    values = [(task, value) for task, entry in metrics.items()
              for value in (entry.values() if isinstance(entry, dict) else [entry])]
    bounds = {"classification": (0, 1), "retrieval": (0, 1), "kendalls_tau": (-1, 1), "progression": (-np.inf, 1)}
    return all(value is None or (np.isfinite(value) and bounds[task][0] - 1e-9 <= value <= bounds[task][1] + 1e-9)
               for task, value in values)


@settings(max_examples=150, deadline=None, derandomize=True, database=None,  # the same examples on every run
          suppress_health_check=[HealthCheck.too_slow])
@given(arrays=broken())
def test_any_arrays_give_a_result_or_one_line(arrays, folder):
    path = folder / "fuzz.npz"
    np.savez(path, **arrays)
    try:
        result = score_files([path], fractions=(0.5, 1.0), ks=(1, 3), note=lambda line: None)
    except MVFormerError as error:
        message = str(error)
        assert "\n" not in message and message.startswith(str(path)), message
        return
    json.dumps(result, allow_nan=False)  # JSON-ready: no NaN or Inf
    assert _in_range(result["datasets"]["fuzz"]), result
