"""Whether frame embeddings still tell frames apart: their spread over frames, a collapse verdict, and which
metrics cannot mean anything when they do not.

Spread of frames x_1..x_N (rows of all videos pooled):
- per-dimension standard deviation over frames, (D,);
- relative spread: the root-mean-square distance of the frames to their mean frame, divided by their
  root-mean-square norm; scale-free, in [0, 1] (0: every frame embeds alike; near 1: frames spread around the origin);
- effective rank (Roy and Vetterli, 2007): exp of the entropy of the normalised singular values of the centred
  frames; 1 for frames along one line, D for frames spread evenly in all D directions, 0 for identical frames
  (singular values at rounding level, below RANK_RTOL of the frames' norm, count as 0).

Verdict: `collapsed` when the relative spread is below COLLAPSE_SPREAD (frames nearly constant: they lie within about
1% of their norm from their mean) or the effective rank is below MIN_EFFECTIVE_RANK (frames along one line at most, so
nothing but a single scalar such as time separates them).

Metrics that cannot mean anything: a progression R^2 below R2_FLOOR (the regression's squared error exceeds twice
that of predicting the mean target: what a near-singular fit on collapsed embeddings gives, e.g. R^2 = -15993), and
Kendall's tau or AP@K that came out undefined (None).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

COLLAPSE_SPREAD = 1e-2
MIN_EFFECTIVE_RANK = 2.0
R2_FLOOR = -1.0
RANK_RTOL = 1e-10  # singular values below this fraction of the frames' norm (times sqrt N) count as 0


@dataclass(frozen=True)
class Spread:
    """How much the frame embeddings vary, and the verdict."""

    frames: int
    dimension_std: np.ndarray  # float64 (D,)
    relative_spread: float
    effective_rank: float
    collapsed: bool
    reason: str | None  # why collapsed, one phrase; None when not

    def to_dict(self) -> dict:
        """JSON-ready summary (per-dimension std as its minimum, median and maximum)."""
        return {"collapsed": self.collapsed, "reason": self.reason, "frames": self.frames,
                "dimensions": len(self.dimension_std), "relative_spread": self.relative_spread,
                "effective_rank": self.effective_rank, "dimension_std_min": float(self.dimension_std.min()),
                "dimension_std_median": float(np.median(self.dimension_std)),
                "dimension_std_max": float(self.dimension_std.max())}


def effective_rank(singular_values: np.ndarray) -> float:
    """exp(entropy of p), p = singular values / their sum; 0 when all are 0."""
    total = singular_values.sum()
    if total <= 0:
        return 0.0
    p = singular_values[singular_values > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def embedding_spread(embeddings: np.ndarray | Sequence[np.ndarray]) -> Spread:
    """Spread and verdict of frame embeddings: one (N, D) array, or a list of per-video (L, D) arrays pooled."""
    frames = np.concatenate(embeddings) if isinstance(embeddings, (list, tuple)) else np.asarray(embeddings)
    frames = frames.astype(np.float64, copy=False)  # (N, D)
    centred = frames - frames.mean(axis=0)
    rms_norm = np.sqrt(np.mean(np.einsum("nd,nd->n", frames, frames)))
    relative = float(np.sqrt(np.mean(np.einsum("nd,nd->n", centred, centred))) / rms_norm) if rms_norm > 0 else 0.0
    eigenvalues = np.linalg.eigvalsh(centred.T @ centred)  # (D,): squared singular values of the centred frames
    rounding = len(frames) * (RANK_RTOL * rms_norm) ** 2  # what rounding alone leaves in a constant set of frames
    rank = effective_rank(np.sqrt(np.where(eigenvalues > rounding, eigenvalues, 0.0)))
    reason = None
    if relative < COLLAPSE_SPREAD:
        reason = f"every frame embeds nearly alike (spread {relative:.2g} of the norm, below {COLLAPSE_SPREAD:g})"
    elif rank < MIN_EFFECTIVE_RANK:
        reason = f"frames vary along one direction only (effective rank {rank:.2f}, below {MIN_EFFECTIVE_RANK:g})"
    return Spread(len(frames), frames.std(axis=0), relative, rank, reason is not None, reason)


def unreliable_metrics(metrics: dict) -> dict[str, str]:
    """Metrics of an `evaluate_embeddings` dict that cannot mean anything, as {"task" or "task@key": why}."""
    marks = {}
    for fraction, r2 in (metrics.get("progression") or {}).items():
        if r2 is not None and r2 < R2_FLOOR:
            marks[f"progression@{fraction}"] = f"R^2 {r2:.2f} is far below 0: worse than predicting the mean"
    if "kendalls_tau" in metrics and metrics["kendalls_tau"] is None:
        marks["kendalls_tau"] = "undefined: every pair of videos gives a constant match, or too few videos"
    for k, precision in (metrics.get("retrieval") or {}).items():
        if precision is None:
            marks[f"retrieval@{k}"] = "undefined: fewer than two videos"
    return marks


def health_record(metrics: dict, spread: Spread) -> dict:
    """What metrics.json records beside the metrics: {"collapsed", "spread": Spread.to_dict(), "unreliable":
    unreliable_metrics(metrics)}."""
    return {"collapsed": spread.collapsed, "spread": spread.to_dict(), "unreliable": unreliable_metrics(metrics)}


def warning_line(spread: Spread, unreliable: dict[str, str] | None = None) -> str | None:
    """One line for the user when the embeddings collapsed or a metric is meaningless; None when all is well."""
    parts = []
    if spread.collapsed:
        parts.append(f"the embeddings collapsed: {spread.reason}")
    if unreliable:
        parts.append("; ".join(f"{key} cannot be read as a score ({why})" for key, why in unreliable.items()))
    return "warning: " + "; ".join(parts) if parts else None


def shown_value(value: float | None, key: str, unreliable: dict[str, str]) -> str:
    """A table cell: the value to 4 places, 'n/a' when None, marked '(meaningless)' when `key` is unreliable."""
    text = "n/a" if value is None else f"{value:.4f}"
    return f"{text} (meaningless)" if key in unreliable and value is not None else text
