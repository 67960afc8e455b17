"""Aligning two sequences of frame embeddings: the cost matrix, dynamic time warping, nearest neighbours."""

from __future__ import annotations

import typing

import numpy as np

from mvformer.config import AlignMethod
from mvformer.errors import MVFormerError

ALIGN_METHODS: tuple[str, ...] = typing.get_args(AlignMethod)


def cost_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances of L2-normalised embeddings a (La, E) and b (Lb, E): (La, Lb), float64."""
    return np.clip(2.0 - 2.0 * (a.astype(np.float64) @ b.astype(np.float64).T), 0.0, None)


def nearest_neighbour_path(costs: np.ndarray) -> np.ndarray:
    """Each reference frame i matched to its nearest frame: (La, 2) pairs (i, argmin_j costs[i, j])."""
    return np.stack([np.arange(len(costs)), costs.argmin(axis=1)], axis=1)


def dtw_path(costs: np.ndarray) -> np.ndarray:
    """The monotone path from (0, 0) to (La - 1, Lb - 1), steps (1, 0), (0, 1), (1, 1), of least total cost:
    (K, 2) pairs. The accumulated cost is filled one anti-diagonal at a time (a vector operation each)."""
    rows, cols = costs.shape
    total = np.full((rows + 1, cols + 1), np.inf)  # total[i, j]: best cost of a path ending at cell (i-1, j-1)
    total[0, 0] = 0.0
    for diagonal in range(2, rows + cols + 1):  # cells with i + j = diagonal (1-based)
        i = np.arange(max(1, diagonal - cols), min(rows, diagonal - 1) + 1)
        j = diagonal - i
        best = np.minimum(np.minimum(total[i - 1, j - 1], total[i - 1, j]), total[i, j - 1])
        total[i, j] = costs[i - 1, j - 1] + best
    path = [(rows, cols)]
    while path[-1] != (1, 1):  # walk back through the cheapest predecessor, the diagonal first on ties
        i, j = path[-1]
        path.append(min(((i - 1, j - 1), (i - 1, j), (i, j - 1)), key=lambda cell: total[cell]))
    return np.array(path[::-1], dtype=np.int64) - 1


def check_method(method: str) -> None:
    if method not in ALIGN_METHODS:
        raise MVFormerError(f"alignment method {method!r}: choose one of {', '.join(ALIGN_METHODS)}")


def align(reference: np.ndarray, other: np.ndarray, method: str = "dtw") -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (La, E), (Lb, E) -> costs (La, Lb) and the alignment path (K, 2) by `method` (dtw | nn)."""
    check_method(method)
    costs = cost_matrix(reference, other)
    return costs, dtw_path(costs) if method == "dtw" else nearest_neighbour_path(costs)
