"""The demo dataset: a jug pours liquid into a cup, in four phases defined by how the entities relate.

Each frame's phase follows from the state of the scene (where the jug is, its tilt, the liquid stream, the
cup's fill), never from time: phase durations, idle stretches included, vary over ~100x, so relative time
t/L alone predicts the phase for only about half the frames. Distractor, background, sizes, positions,
mirroring and camera jitter vary per video, so a representation has to find the entities and their relation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvformer.data.datasets import write_split
from mvformer.data.video import write_video
from mvformer.errors import MVFormerError
from mvformer.files import output_folder, write_text

phase_names = ("approach", "tilt", "pour", "return")

# Motion segments of each phase (idle stretches go between them). The approach is the jug travelling to
# above the cup, the tilt rotates it, the pour shows a stream and fills the cup, the return untilts the jug
# and travels it back; an idle keeps the state the previous segment left, hence the phase of that state.
_PHASE_SEGMENTS = (
    ("idle", "approach", "idle"),
    ("tilt", "idle"),
    ("pour",),
    ("idle", "untilt", "idle", "travel_back", "idle"),
)
_MIN_MOTION_FRAMES = 1
_MIN_FRAMES = _MIN_MOTION_FRAMES * sum(kind != "idle" for kinds in _PHASE_SEGMENTS for kind in kinds)
_PHASE_DURATION_SPAN = 120.0  # phase weights are log-uniform over [1, 120]
_SEGMENT_DURATION_SPAN = 20.0  # within a phase, segment weights are log-uniform over [1, 20]

_JUG_RGB = np.array([225, 85, 35], dtype=np.float32)
_CUP_RGB = np.array([40, 90, 215], dtype=np.float32)
_LIQUID_RGB = np.array([250, 222, 40], dtype=np.float32)
_DISTRACTOR_RGBS = np.array(
    [[40, 175, 60], [190, 60, 200], [235, 235, 235], [35, 35, 40], [120, 70, 170]], dtype=np.float32
)

_UNIT = 64.0  # scene geometry is laid out in a 64 x 64 frame, then sampled at the requested size
_CUP_WALL = 2.5


@dataclass(frozen=True)
class _Timeline:
    """Per-frame scene state, each (T,): jug centre and tilt (radians), cup fill in [0, 1], stream on/off."""

    labels: np.ndarray
    jug_x: np.ndarray
    jug_y: np.ndarray
    tilt: np.ndarray
    fill: np.ndarray
    stream: np.ndarray


def _log_uniform(rng: np.random.Generator, span: float, count: int) -> np.ndarray:
    return np.exp(rng.uniform(0.0, np.log(span), count))


def _allocate(total: int, weights: np.ndarray, minimums: np.ndarray) -> np.ndarray:
    """Split `total` frames in proportion to `weights`, each part at least its minimum (largest remainder)."""
    share = minimums + (total - minimums.sum()) * weights / weights.sum()
    counts = np.floor(share).astype(np.int64)
    leftover = total - counts.sum()
    counts[np.argsort(counts - share)[:leftover]] += 1
    return counts


def _smooth_progress(num_frames: int) -> np.ndarray:
    """Eased progress (num_frames,) that starts moving on the first frame and arrives on the last."""
    x = np.arange(1, num_frames + 1) / num_frames
    return x * x * (3.0 - 2.0 * x)


def _timeline(rng: np.random.Generator, num_frames: int, start: tuple[float, float], pour_at: tuple[float, float],
              max_tilt: float) -> _Timeline:
    """Draw segment durations and play the segments to per-frame scene states."""
    phase_minimums = np.array([_MIN_MOTION_FRAMES * sum(k != "idle" for k in kinds) for kinds in _PHASE_SEGMENTS])
    phase_frames = _allocate(num_frames, _log_uniform(rng, _PHASE_DURATION_SPAN, 4), phase_minimums)
    jug_x, jug_y, tilt, fill = start[0], start[1], 0.0, 0.0
    columns: dict[str, list[np.ndarray]] = {name: [] for name in ("labels", "jug_x", "jug_y", "tilt", "fill", "stream")}
    pour_shape = _log_uniform(rng, 4.0, 1)[0] ** rng.choice([-1.0, 1.0])  # fill = progress ** pour_shape
    lift = rng.uniform(0.0, 8.0)  # the jug travels along an arc this many units high
    for phase, (kinds, frames) in enumerate(zip(_PHASE_SEGMENTS, phase_frames)):
        minimums = np.array([0 if kind == "idle" else _MIN_MOTION_FRAMES for kind in kinds])
        counts = _allocate(int(frames), _log_uniform(rng, _SEGMENT_DURATION_SPAN, len(kinds)), minimums)
        for kind, count in zip(kinds, counts):
            if count == 0:
                continue
            ones = np.ones(count)
            progress = _smooth_progress(count)
            if kind in ("approach", "travel_back"):
                target = pour_at if kind == "approach" else start
                xs = jug_x + (target[0] - jug_x) * progress
                ys = jug_y + (target[1] - jug_y) * progress - lift * np.sin(np.pi * progress)
                segment = (xs, ys, tilt * ones, fill * ones)
            elif kind in ("tilt", "untilt"):
                goal = max_tilt if kind == "tilt" else 0.0
                segment = (jug_x * ones, jug_y * ones, tilt + (goal - tilt) * progress, fill * ones)
            elif kind == "pour":
                filled = (np.arange(1, count + 1) / count) ** pour_shape
                segment = (jug_x * ones, jug_y * ones, tilt * ones, filled)
            else:
                segment = (jug_x * ones, jug_y * ones, tilt * ones, fill * ones)
            for name, values in zip(("jug_x", "jug_y", "tilt", "fill"), segment):
                columns[name].append(values)
            columns["stream"].append(np.full(count, kind == "pour"))
            columns["labels"].append(np.full(count, phase, dtype=np.int64))
            jug_x, jug_y, tilt, fill = segment[0][-1], segment[1][-1], segment[2][-1], segment[3][-1]
    return _Timeline(**{name: np.concatenate(parts) for name, parts in columns.items()})


def _box_coverage(u: np.ndarray, v: np.ndarray, half_u: float, half_v: float, pixel: float) -> np.ndarray:
    """Anti-aliased coverage of an axis-aligned box centred at 0 in local coordinates u, v (scene units)."""
    distance = np.maximum(np.abs(u) - half_u, np.abs(v) - half_v)
    return np.clip(0.5 - distance / pixel, 0.0, 1.0)


def _composite(canvas: np.ndarray, coverage: np.ndarray, rgb: np.ndarray) -> None:
    """Paint `rgb` over canvas (T, H, W, 3) with per-pixel opacity `coverage` (T, H, W), in place."""
    alpha = coverage[..., None]
    canvas *= 1.0 - alpha
    canvas += alpha * rgb


def _camera_grid(rng: np.random.Generator, size: int, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Scene coordinates of the pixel centres, x (T, 1, W) and y (T, H, 1), under camera jitter: a smooth sway
    plus a little shake, at most 2 units, that moves the whole scene."""
    sway = rng.uniform(0.0, 1.5, 2)[:, None] * np.sin(
        2 * np.pi * rng.uniform(0.01, 0.08, 2)[:, None] * np.arange(num_frames) + rng.uniform(0, 2 * np.pi, 2)[:, None]
    )
    shift = np.clip(sway + rng.normal(0.0, 0.25, sway.shape), -2.0, 2.0).astype(np.float32)  # (2, T)
    centres = (np.arange(size, dtype=np.float32) + 0.5) * (_UNIT / size)
    return centres[None, None, :] - shift[0][:, None, None], centres[None, :, None] - shift[1][:, None, None]


def _background(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """A desaturated base colour, a linear luminance gradient and low-frequency ripples: float (T, H, W, 3)."""
    base = rng.uniform(70.0, 190.0) + rng.uniform(-20.0, 20.0, 3)
    angle = rng.uniform(0, 2 * np.pi)
    luminance = rng.uniform(-30.0, 30.0) * ((np.cos(angle) * xs + np.sin(angle) * ys) / _UNIT - 0.5)
    for _ in range(3):
        wave_angle, frequency = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 2.0) * 2 * np.pi / _UNIT
        wave = np.cos(wave_angle) * xs + np.sin(wave_angle) * ys
        luminance = luminance + rng.uniform(3.0, 8.0) * np.sin(frequency * wave + rng.uniform(0, 2 * np.pi))
    return (base + luminance[..., None]).astype(np.float32)


def _add_distractor(rng: np.random.Generator, canvas: np.ndarray, xs: np.ndarray, ys: np.ndarray, num_frames: int,
                    pixel: float) -> None:
    """A random shape drifting on a smooth random path, behind the entities (drawn into `canvas`)."""
    time = np.arange(num_frames, dtype=np.float32)[:, None, None]  # (T, 1, 1)
    radius = rng.uniform(3.0, 5.5)
    cycles = rng.uniform(0.3, 1.5, 2) / num_frames
    path_x = rng.uniform(10, 54) + rng.uniform(5, 20) * np.sin(2 * np.pi * cycles[0] * time + rng.uniform(0, 2 * np.pi))
    path_y = rng.uniform(10, 54) + rng.uniform(5, 20) * np.sin(2 * np.pi * cycles[1] * time + rng.uniform(0, 2 * np.pi))
    du, dv = xs - path_x, ys - path_y
    if rng.random() < 0.5:
        distractor = np.clip(0.5 - (np.sqrt(du * du + dv * dv) - radius) / pixel, 0.0, 1.0)
    else:
        distractor = _box_coverage(du, dv, radius * 0.85, radius * 0.85, pixel)
    _composite(canvas, distractor, _DISTRACTOR_RGBS[rng.integers(len(_DISTRACTOR_RGBS))])


def _render_video(rng: np.random.Generator, size: int, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """One random pouring video: uint8 frames (T, size, size, 3) and phase labels (T,)."""
    pixel = _UNIT / size

    cup_scale = rng.uniform(0.8, 1.2, 2)
    cup_half_w, cup_h = 8.0 * cup_scale[0], 16.0 * cup_scale[1]
    cup_x, cup_bottom = rng.uniform(38.0, 50.0), rng.uniform(54.0, 60.0)
    cup_top = cup_bottom - cup_h
    jug_scale = rng.uniform(0.8, 1.2)
    jug_half_w, jug_half_h, nub = 5.0 * jug_scale, 10.0 * jug_scale, 4.0 * jug_scale
    max_tilt = np.deg2rad(rng.uniform(90.0, 110.0))
    tip_u, tip_v = jug_half_w + nub, -jug_half_h  # spout tip in the jug's own (upright) coordinates
    tip_dx = tip_u * np.cos(max_tilt) - tip_v * np.sin(max_tilt)
    tip_dy = tip_u * np.sin(max_tilt) + tip_v * np.cos(max_tilt)
    pour_at = (cup_x - tip_dx, cup_top - tip_dy - rng.uniform(3.0, 8.0))
    start = (rng.uniform(9.0, 18.0), rng.uniform(14.0, 46.0))
    timeline = _timeline(rng, num_frames, start, pour_at, max_tilt)

    xs, ys = _camera_grid(rng, size, num_frames)  # (T, 1, W), (T, H, 1)
    canvas = _background(rng, xs, ys)  # (T, H, W, 3)
    _add_distractor(rng, canvas, xs, ys, num_frames, pixel)

    # Cup: a U shape (outer box minus an inner box open at the top), liquid rising inside it.
    inner_half_w = cup_half_w - _CUP_WALL
    inner_bottom = cup_bottom - _CUP_WALL
    cup_du, cup_v = xs - cup_x, ys - (cup_bottom - cup_h / 2)
    outer = _box_coverage(cup_du, cup_v, cup_half_w, cup_h / 2, pixel)
    inner = _box_coverage(cup_du, ys - (inner_bottom - cup_h / 2), inner_half_w, cup_h / 2, pixel)
    _composite(canvas, np.clip(outer - inner, 0.0, 1.0), _CUP_RGB * rng.uniform(0.85, 1.1))
    surface = inner_bottom - (cup_h - _CUP_WALL) * timeline.fill[:, None, None]  # (T, 1, 1)
    liquid_height = (inner_bottom - surface) / 2
    liquid = _box_coverage(cup_du, ys - (inner_bottom + surface) / 2, inner_half_w, liquid_height, pixel)
    _composite(canvas, liquid * (timeline.fill > 0)[:, None, None], _LIQUID_RGB)

    # Jug: a tall body with a spout nub at its top corner and a handle, rotated about its centre (clockwise on screen).
    jug_x, jug_y = timeline.jug_x[:, None, None], timeline.jug_y[:, None, None]
    cos, sin = np.cos(timeline.tilt)[:, None, None], np.sin(timeline.tilt)[:, None, None]
    u = (xs - jug_x) * cos + (ys - jug_y) * sin  # screen -> jug coordinates (inverse rotation)
    v = -(xs - jug_x) * sin + (ys - jug_y) * cos
    body = _box_coverage(u, v, jug_half_w, jug_half_h, pixel)
    spout = _box_coverage(u - (jug_half_w + nub / 2), v - (-jug_half_h + 1.5), nub / 2 + 0.5, 1.5, pixel)
    jug_rgb = _JUG_RGB * rng.uniform(0.85, 1.1)
    handle = _box_coverage(u + jug_half_w + 1.25, v, 1.75, 0.4 * jug_half_h, pixel)
    _composite(canvas, np.maximum(np.maximum(body, spout), handle), jug_rgb)

    # Stream: a thin column of liquid from the spout tip down to the liquid surface, while pouring.
    tip_x = jug_x + tip_u * cos - tip_v * sin
    tip_y = jug_y + tip_u * sin + tip_v * cos
    stream = _box_coverage(xs - tip_x, ys - (tip_y + surface) / 2, 0.9, np.abs(surface - tip_y) / 2, pixel)
    _composite(canvas, stream * timeline.stream[:, None, None], _LIQUID_RGB)

    frames = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        frames = frames[:, :, ::-1]  # mirror: the jug comes from the right
    return np.ascontiguousarray(frames), timeline.labels


MAX_SIZE = 512  # pixels: the renderer holds several float32 (T, size, size, 3) arrays
MAX_VIDEOS = 100_000
_DATASET_ENTRIES = {"videos", "labels", "splits", "classes.txt"}  # what a generic-layout dataset holds


def _not_a_dataset(root: Path) -> str | None:
    """Why `root` is not a dataset that --overwrite may replace (it holds more than a generic-layout dataset:
    never delete a user's other files), or None."""
    foreign = sorted(entry.name for entry in root.iterdir() if entry.name not in _DATASET_ENTRIES)
    return f"it holds {foreign[0]}, which is not part of a dataset" if foreign else None


def _write_dataset(root: Path, num_train: int, num_val: int, size: int, min_frames: int, max_frames: int,
                   seed: int, fps: float) -> None:
    """Render every video and write the generic layout into the (new, empty) folder `root`."""
    for folder in ("videos", "labels"):
        (root / folder).mkdir()
    write_text(root / "classes.txt", "".join(f"{name}\n" for name in phase_names))
    names = [f"pour_{index:03d}" for index in range(num_train + num_val)]
    for index, name in enumerate(names):
        rng = np.random.default_rng([seed, index])
        num_frames = int(rng.integers(min_frames, max_frames + 1))
        frames, labels = _render_video(rng, size, num_frames)
        write_video(root / "videos" / f"{name}.mp4", frames, fps=fps)
        rows = "".join(f"{frame},{phase_names[label]}\n" for frame, label in enumerate(labels))
        write_text(root / "labels" / f"{name}.csv", "frame,label\n" + rows)
    write_split(root, "train", names[:num_train])
    write_split(root, "val", names[num_train:])


def generate_pouring_dataset(root: str | Path, num_train: int = 48, num_val: int = 24, size: int = 64,
                             min_frames: int = 48, max_frames: int = 96, seed: int = 0, fps: float = 25,
                             overwrite: bool = False) -> Path:
    """Write the pouring demo dataset in the generic layout (videos/, labels/, classes.txt, splits/) under root.

    Deterministic: video i depends only on (seed, i), so the same arguments give identical frames and labels.
    Labels are the class names of `phase_names`, one row per frame, non-decreasing within a video.
    root must be missing or empty, or hold a dataset and `overwrite` be given (`files.output_folder`: staged beside
    root and moved into place once complete, so a failure leaves root as it was).
    """
    if min_frames < _MIN_FRAMES or max_frames < min_frames:
        raise MVFormerError(f"pouring dataset: need {_MIN_FRAMES} <= min_frames <= max_frames, "
                            f"got {min_frames} and {max_frames}")
    if size < 16 or size > MAX_SIZE or size % 2:
        raise MVFormerError(f"pouring dataset: size must be an even number of pixels in [16, {MAX_SIZE}], got {size}")
    if not (1 <= num_train <= MAX_VIDEOS and 1 <= num_val <= MAX_VIDEOS):
        raise MVFormerError(f"pouring dataset: need 1 to {MAX_VIDEOS} train and val videos, got {num_train}, "
                            f"{num_val}")
    if not 0 <= seed < 2**63:
        raise MVFormerError(f"pouring dataset: seed must be in [0, 2**63), got {seed}")
    if not (math.isfinite(fps) and 0 < fps <= 1000):
        raise MVFormerError(f"pouring dataset: fps must be in (0, 1000], got {fps}")
    if not str(root).strip():
        raise MVFormerError("pouring dataset: the destination folder is not set")
    root = Path(root)
    with output_folder(root.absolute(), _not_a_dataset, overwrite) as staging:
        _write_dataset(staging, num_train, num_val, size, min_frames, max_frames, seed, fps)
    return root
