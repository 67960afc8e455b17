"""Pictures of a run: training curves and frame-to-frame similarity with the alignment path."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402


def plot_training_curves(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    """One line per run: mean SCL loss per epoch."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in curves.items():
        epochs, losses = zip(*points)
        ax.plot(epochs, losses, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("SCL loss")
    ax.set_title("Training curves")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_alignment(query: np.ndarray, candidate: np.ndarray, path: Path, title: str = "") -> None:
    """Cosine similarity of every frame pair of two videos, (Lq, E) x (Lc, E), with each query frame's
    nearest candidate frame marked (the path Kendall's tau scores)."""
    similarity = query @ candidate.T  # (Lq, Lc)
    nearest = similarity.argmax(axis=1)
    fig, ax = plt.subplots(figsize=(5, 5))
    image = ax.imshow(similarity, cmap="viridis", origin="upper", aspect="auto")
    ax.plot(nearest, np.arange(len(nearest)), "w.", markersize=3, label="nearest neighbour")
    ax.set_xlabel("frame of video B")
    ax.set_ylabel("frame of video A")
    ax.set_title(title or "frame similarity")
    ax.legend(loc="lower left", fontsize=7)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
