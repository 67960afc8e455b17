"""Pictures: training curves, similarity and cost matrices with alignment paths, side-by-side videos,
contact sheets, attention overlays, progress curves.

Matplotlib draws the figures; videos are composed as uint8 arrays (T, H, W, 3) with numpy and torch.
Functions here write where they are told and know nothing of models or checkpoints.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mvformer.data.video import write_video  # noqa: E402
from mvformer.errors import MVFormerError  # noqa: E402

# One colour per panel or entity token (matplotlib's tab10), uint8 RGB (10, 3).
COLOURS = np.rint(np.array(plt.get_cmap("tab10").colors) * 255).astype(np.uint8)
BAR_BACKGROUND = np.array([40, 40, 40], dtype=np.uint8)
ANIMATION_SUFFIXES = (".mp4", ".gif")
FRAME_RATES = (0.1, 1000.0)  # frames per second an animation may play at (a GIF frame lasts 1 ms to 10 s)


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


def even(value: float) -> int:
    """The nearest even integer >= 2 (H.264 wants even frame sizes)."""
    return max(2, 2 * round(value / 2))


def display_width(height: int, width: int, display_height: int) -> int:
    """Width, even, of a (height, width) frame scaled to `display_height` with its aspect ratio kept."""
    return even(width * display_height / height)


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (T, H, W, 3) -> uint8 (T, height, width, 3), bilinear with antialiasing; for display only."""
    if frames.shape[1:3] == (height, width):
        return frames
    images = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    resized = F.interpolate(images, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def letterbox(frames: np.ndarray, width: int) -> np.ndarray:
    """uint8 (T, H, w, 3) -> (T, H, width, 3), centred on black (width >= w)."""
    left = (width - frames.shape[2]) // 2
    return np.pad(frames, ((0, 0), (0, 0), (left, width - frames.shape[2] - left), (0, 0)))


def draw_progress_bars(frames: np.ndarray, fractions: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """A copy of frames (T, H, W, 3) with a bar along the bottom filled to fractions (T,) in [0, 1]."""
    _, height, width, _ = frames.shape
    thickness = max(2, height // 24)
    filled = np.arange(width)[None, :] < np.rint(np.clip(fractions, 0, 1)[:, None] * width)  # (T, W)
    bars = np.where(filled[..., None], colour, BAR_BACKGROUND)  # (T, W, 3)
    marked = frames.copy()
    marked[:, height - thickness:] = bars[:, None]
    return marked


def tile_videos(panels: list[np.ndarray]) -> np.ndarray:
    """Videos of one shape (T, H, W, 3) in a near-square grid, row by row: (T, rows * H, cols * W, 3)."""
    cols = int(np.ceil(np.sqrt(len(panels))))
    rows = int(np.ceil(len(panels) / cols))
    stacked = np.stack(panels + [np.zeros_like(panels[0])] * (rows * cols - len(panels)))  # (rows*cols, T, H, W, 3)
    num_frames, height, width = stacked.shape[1:4]
    grid = stacked.reshape(rows, cols, num_frames, height, width, 3).transpose(2, 0, 3, 1, 4, 5)  # (T, r, H, c, W, 3)
    return np.ascontiguousarray(grid.reshape(num_frames, rows * height, cols * width, 3))


def overlay_attention(images: np.ndarray, maps: np.ndarray, strength: float = 0.7) -> np.ndarray:
    """Each token's attention map blended over its frame in the token's colour.

    images uint8 (F, S, S, 3), maps (F, N, gh, gw) -> uint8 (F, N, S, S, 3). Each map is stretched to [0, 1]
    and upsampled bilinearly to the frame, so the brightest colour marks where that token looks most.
    """
    size = images.shape[1]
    weights = torch.from_numpy(np.ascontiguousarray(maps)).float()  # (F, N, gh, gw)
    low, high = weights.amin(dim=(2, 3), keepdim=True), weights.amax(dim=(2, 3), keepdim=True)
    weights = (weights - low) / (high - low).clamp_min(1e-12)  # 0 where the token looks least, 1 where most
    alpha = F.interpolate(weights, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    alpha = strength * alpha.numpy()[..., None]  # (F, N, S, S, 1)
    colours = COLOURS[np.arange(maps.shape[1]) % len(COLOURS)].astype(np.float32)  # (N, 3)
    blended = images[:, None].astype(np.float32) * (1 - alpha) + colours[None, :, None, None, :] * alpha
    return np.rint(blended).astype(np.uint8)


def check_frame_rate(fps: float, what: str = "frame rate") -> None:
    """An animation's frames per second must be a number in FRAME_RATES; `what` names its source in the error."""
    low, high = FRAME_RATES
    if not low <= fps <= high:  # NaN fails too
        raise MVFormerError(f"{what} {fps}: an animation plays at {low:g} to {high:g} frames per second")


def save_animation(frames: np.ndarray, path: Path, fps: float) -> None:
    """uint8 (T, H, W, 3) as an H.264 .mp4 (even sizes) or an endlessly looping .gif (through Pillow)."""
    path = Path(path)
    check_frame_rate(fps, f"{path}: frame rate")
    if path.suffix.lower() == ".mp4":
        write_video(path, frames, fps)
        return
    if path.suffix.lower() != ".gif":
        raise MVFormerError(f"{path}: cannot write an animation here; the name must end in .mp4 or .gif")
    from PIL import Image  # Pillow ships with matplotlib
    images = [Image.fromarray(np.ascontiguousarray(frame)) for frame in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_cost_matrices(costs: list[np.ndarray], paths: list[np.ndarray], titles: list[str], path: Path) -> None:
    """One panel per aligned video: distances (La, Lb) of reference frames to its frames, path (K, 2) on top."""
    fig, axes = plt.subplots(1, len(costs), figsize=(4.2 * len(costs), 4), squeeze=False)
    for ax, cost, steps, title in zip(axes[0], costs, paths, titles):
        image = ax.imshow(cost, cmap="magma", origin="upper", aspect="auto", interpolation="nearest")
        ax.plot(steps[:, 1], steps[:, 0], color="cyan", linewidth=1.2, label="alignment path")
        ax.set_xlabel(f"frame of {title}")
        ax.set_ylabel("frame of the reference")
        ax.set_title(title, fontsize=9)
        ax.legend(loc="lower left", fontsize=7)
        fig.colorbar(image, ax=ax, fraction=0.046, label="distance")
    _save(fig, path)


def plot_contact_sheet(query: np.ndarray, query_title: str, images: list[np.ndarray], titles: list[str],
                       path: Path) -> None:
    """The query frame (red title) followed by its matches, each (H, W, 3) uint8, in rows of five."""
    count = len(images) + 1
    cols = min(count, 5)
    rows = int(np.ceil(count / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.5 * cols, 2.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for index, (ax, image, title) in enumerate(zip(axes.flat, [query, *images], [query_title, *titles])):
        ax.imshow(image)
        ax.set_title(title, fontsize=8, color="tab:red" if index == 0 else "black")
    _save(fig, path)


def plot_attention_strip(images: np.ndarray, overlays: np.ndarray, frame_numbers: list[int], path: Path) -> None:
    """Columns: frames; rows: the frame, then each entity token's attention on it.

    images uint8 (K, S, S, 3), overlays uint8 (K, N, S, S, 3) from `overlay_attention`.
    """
    count, num_tokens = overlays.shape[:2]
    fig, axes = plt.subplots(num_tokens + 1, count, figsize=(1.6 * count + 0.6, 1.6 * (num_tokens + 1)),
                             squeeze=False)
    for col, frame in enumerate(frame_numbers):
        axes[0, col].set_title(f"frame {frame}", fontsize=8)
        for row in range(num_tokens + 1):
            ax = axes[row, col]
            ax.imshow(images[col] if row == 0 else overlays[col, row - 1])
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("frame", fontsize=8)
    for token in range(num_tokens):
        axes[token + 1, 0].set_ylabel(f"token {token}", fontsize=8, color=COLOURS[token % len(COLOURS)] / 255)
    _save(fig, path)


def plot_progress(predictions: np.ndarray, times: np.ndarray, labels: list[str], path: Path, xlabel: str,
                  title: str = "") -> None:
    """Predicted phase progression (L, C - 1) over time (L,): each curve crosses 0 when its phase ends."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for column, label in enumerate(labels):
        ax.plot(times, predictions[:, column], label=label)
    ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("(t - phase end) / length")
    ax.set_title(title or "predicted phase progression")
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_embedding_trajectories(embeddings: list[np.ndarray], names: list[str], path: Path) -> None:
    """Frame embeddings of several videos, each (L, E), on their first two principal components: one line per
    video, dots coloured from start (dark) to end (yellow), so that matching phases show as nearby stretches."""
    stacked = np.concatenate(embeddings).astype(np.float64)  # (sum L, E)
    centre = stacked.mean(axis=0)
    _, _, components = np.linalg.svd(stacked - centre, full_matrices=False)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for embs, name in zip(embeddings, names):
        points = (embs - centre) @ components[:2].T  # (L, 2)
        ax.plot(points[:, 0], points[:, 1], linewidth=0.8, alpha=0.6, label=name)
        ax.scatter(points[:, 0], points[:, 1], c=np.linspace(0, 1, len(points)), cmap="viridis", s=8)
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    ax.set_title("frame embeddings over time")
    ax.legend(fontsize=7)
    _save(fig, path)
