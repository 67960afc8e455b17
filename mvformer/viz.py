"""Pictures: training curves, cost matrices with alignment paths, side-by-side videos, contact sheets,
attention overlays, progress curves.

Matplotlib draws the figures; videos are composed as uint8 arrays (T, H, W, 3) with numpy and torch, their
captions drawn with Pillow in matplotlib's own font. One convention everywhere: frame pairs are shown as distances,
dark = close; phases in one colour per phase (PHASE_COLOURS) wherever labels exist. Functions here write where
they are told and know nothing of models or checkpoints.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import av
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib import font_manager  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from mpl_toolkits.axes_grid1 import make_axes_locatable  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402  (Pillow ships with matplotlib)

from mvformer.errors import MVFormerError  # noqa: E402

# One colour per panel or entity token (matplotlib's tab10), uint8 RGB (10, 3).
COLOURS = np.rint(np.array(plt.get_cmap("tab10").colors) * 255).astype(np.uint8)
# One colour per phase (matplotlib's Set2, apart from the panels' tab10), uint8 RGB (8, 3); grey: unlabelled.
PHASE_COLOURS = np.rint(np.array(plt.get_cmap("Set2").colors) * 255).astype(np.uint8)
UNLABELLED_COLOUR = np.array([150, 150, 150], dtype=np.uint8)
BAR_BACKGROUND = np.array([40, 40, 40], dtype=np.uint8)
TEXT_COLOUR = (235, 235, 235)
FONT_FILE = font_manager.findfont("DejaVu Sans")  # the figures' font, shipped with matplotlib
DISTANCE_MAP = "magma"  # distances of frame pairs: dark = close
DISTANCE_LABEL = "distance (2 - 2 cos; dark = close)"
ATTENTION_MAP = "inferno"  # attention: dark = little, bright = much
ANIMATION_SUFFIXES = (".mp4", ".gif")
FRAME_RATES = (0.1, 1000.0)  # frames per second an animation may play at (a GIF frame lasts 1 ms to 10 s)


@dataclass(frozen=True)
class PhaseLabels:
    """The phase of every frame of one video, as the pictures draw it: hand labels, or labels that
    `mvformer label` transferred along alignments."""

    labels: np.ndarray  # int64 (L,), -1 where unlabelled
    names: list[str]  # phase names by index
    transferred: bool = False

    def name(self, frame: int) -> str:
        label = int(self.labels[frame])
        return self.names[label] if label >= 0 else "unlabelled"

    def colour(self, frame: int) -> tuple[int, int, int]:
        return tuple(int(c) for c in phase_colours(self.labels[frame:frame + 1])[0])


def phase_colours(labels: np.ndarray) -> np.ndarray:
    """uint8 (L, 3): each label's PHASE_COLOURS entry, UNLABELLED_COLOUR for -1."""
    labels = np.asarray(labels)
    return np.where((labels >= 0)[:, None], PHASE_COLOURS[np.maximum(labels, 0) % len(PHASE_COLOURS)],
                    UNLABELLED_COLOUR)


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


def even(value: float) -> int:
    """The nearest even integer >= 2 (H.264 wants even frame sizes)."""
    return max(2, 2 * round(value / 2))


MAX_DISPLAY_ASPECT = 8  # widest shown frame, in heights: a 3000x20 strip would be 28,800 px (x264 refuses it)


def display_width(height: int, width: int, display_height: int) -> int:
    """Width, even, of a (height, width) frame scaled to `display_height` with its aspect ratio kept, up to
    MAX_DISPLAY_ASPECT heights (a wider frame is squeezed to that)."""
    return even(min(width / height, MAX_DISPLAY_ASPECT) * display_height)


RESIZE_BATCH = 32  # frames resized at once: a batch of native frames in float32 is what bounds memory


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (T, H, W, 3) -> uint8 (T, height, width, 3), bilinear with antialiasing; for display only."""
    if frames.shape[1:3] == (height, width):
        return frames
    resized = np.empty((len(frames), height, width, 3), dtype=np.uint8)
    for start in range(0, len(frames), RESIZE_BATCH):
        images = torch.from_numpy(np.ascontiguousarray(frames[start:start + RESIZE_BATCH])).permute(0, 3, 1, 2)
        shrunk = F.interpolate(images.float(), size=(height, width), mode="bilinear", antialias=True,
                               align_corners=False)  # (t, 3, height, width)
        resized[start:start + RESIZE_BATCH] = shrunk.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return resized


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


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, columns) for `count` panels: as square as whole rows allow, wider than tall (screens are)."""
    rows = max(1, int(np.sqrt(count)))
    return rows, int(np.ceil(count / rows))


def tile_videos(panels: list[np.ndarray]) -> np.ndarray:
    """Videos of one shape (T, H, W, 3) in the grid of `grid_shape`, row by row; a short last row is centred on
    the caption grey, so no cell is left empty: (T, rows * H, cols * W, 3)."""
    rows, cols = grid_shape(len(panels))
    num_frames, height, width = panels[0].shape[:3]
    grid = np.empty((num_frames, rows * height, cols * width, 3), dtype=np.uint8)
    grid[:] = BAR_BACKGROUND
    for index, panel in enumerate(panels):
        row, col = divmod(index, cols)
        left = (cols - min(cols, len(panels) - row * cols)) * width // 2 + col * width
        grid[:, row * height:(row + 1) * height, left:left + width] = panel
    return grid


Line = tuple[tuple[str, tuple[int, int, int]], ...]  # one line of a caption: (text, RGB colour) pieces


def caption_line_height(video_height: int) -> int:
    """Pixels, even, of one caption line under a video `video_height` pixels high: readable at any size."""
    return even(max(14, video_height / 10))


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(FONT_FILE, size)


@lru_cache(maxsize=1024)
def _caption_line(pieces: Line, width: int, line_height: int) -> np.ndarray:
    """One line of coloured text on BAR_BACKGROUND, cut with an ellipsis where too long: uint8 (line_height, width,
    3). Cached: lines repeat across a video's frames (a name, a phase) where whole captions do not (frame numbers)."""
    font = _font(max(8, round(line_height * 0.7)))
    image = Image.new("RGB", (width, line_height), tuple(int(c) for c in BAR_BACKGROUND))
    draw = ImageDraw.Draw(image)
    x = margin = line_height // 3
    for text, colour in pieces:
        room = width - margin - x
        while text and draw.textlength(text, font=font) > room:
            text = text[:-2] + "…" if len(text) > 1 else ""
        draw.text((x, 0.5 * line_height), text, fill=colour, font=font, anchor="lm")
        x += draw.textlength(text, font=font)
    return np.asarray(image)


def caption(lines: tuple[Line, ...], width: int, line_height: int) -> np.ndarray:
    """Lines of coloured text, one under the other: uint8 (lines * line_height, width, 3)."""
    return np.concatenate([_caption_line(pieces, width, line_height) for pieces in lines])


def add_captions(frames: np.ndarray, captions: Sequence[tuple[Line, ...]]) -> np.ndarray:
    """frames uint8 (T, H, W, 3), one caption (the same number of lines each) per frame -> (T, H + lines *
    caption_line_height(H), W, 3), each caption under its frame."""
    height, width = frames.shape[1:3]
    bands = np.stack([caption(lines, width, caption_line_height(height)) for lines in captions])  # (T, h, W, 3)
    return np.concatenate([frames, bands], axis=1)


def colour_table(name: str) -> np.ndarray:
    """uint8 (256, 3) RGB of a matplotlib colour map."""
    return np.rint(plt.get_cmap(name)(np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def overlay_attention(images: np.ndarray, maps: np.ndarray, scale: float, strength: float = 0.6) -> np.ndarray:
    """Each token's attention map as heat over its frame, on one fixed scale for every frame and token.

    images uint8 (F, H, W, 3), maps (F, N, gh, gw) each summing to one over the patch grid -> uint8 (F, N, H, W,
    3). A patch's weight times the number of patches (1 = attention spread evenly) is mapped from [0, scale]
    through ATTENTION_MAP (dark = little attention), upsampled bilinearly to the frame (the grid covers the frame
    the model saw) and blended over it with `strength` (in 256ths, integer arithmetic).
    """
    height, width = images.shape[1:3]
    weights = torch.from_numpy(np.ascontiguousarray(maps)).float()  # (F, N, gh, gw)
    weights = weights * (maps.shape[2] * maps.shape[3] / scale)  # 0..1 on the scale
    weights = F.interpolate(weights, size=(height, width), mode="bilinear", align_corners=False).clamp(0, 1)
    heat = colour_table(ATTENTION_MAP)[(weights * 255).round().to(torch.uint8).numpy()]  # (F, N, H, W, 3)
    alpha = round(strength * 256)
    blended = images[:, None].astype(np.uint16) * (256 - alpha) + heat.astype(np.uint16) * alpha + 128
    return (blended >> 8).astype(np.uint8)


def attention_scale_label(patches: int) -> str:
    return f"attention x {patches} patches (1 = even)"


def colourbar_image(height: int, scale: float, label: str, cmap: str = ATTENTION_MAP) -> np.ndarray:
    """A labelled vertical colour bar for [0, scale] on BAR_BACKGROUND, to stand beside video frames: uint8
    (height, width, 3), width even."""
    dpi = 100
    width = even(max(64, height * 0.36))
    fig = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor=BAR_BACKGROUND / 255)
    bar = fig.add_axes((0.12, 0.06, 0.2, 0.88))
    font = max(5.0, min(8.0, height / 30))
    colourbar = fig.colorbar(plt.cm.ScalarMappable(Normalize(0, scale), cmap), cax=bar)
    colourbar.set_label(label, color=np.array(TEXT_COLOUR) / 255, fontsize=font)
    bar.tick_params(colors=np.array(TEXT_COLOUR) / 255, labelsize=font)
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return pixels


def check_frame_rate(fps: float, what: str = "frame rate") -> None:
    """An animation's frames per second must be a number in FRAME_RATES; `what` names its source in the error."""
    low, high = FRAME_RATES
    if not low <= fps <= high:  # NaN fails too
        raise MVFormerError(f"{what} {fps}: an animation plays at {low:g} to {high:g} frames per second")


class AnimationWriter:
    """An animation written a batch of frames at a time. .mp4: H.264 for viewing, streamed to disk (bounded
    memory): yuv420p, `crf` 23 (small files; these are pictures, not data), no B-frames and a keyframe every
    `keyframe_interval` frames (frame-exact seeking), the index first (+faststart: browsers start playing at
    once). .gif (through Pillow, endlessly looping) holds every frame, in 256 colours, until closed, and is many
    times larger."""

    def __init__(self, path: str | Path, fps: float | Fraction, crf: int = 23, keyframe_interval: int = 250):
        self.path = Path(path)
        check_frame_rate(float(fps), f"{self.path}: frame rate")
        self.rate = Fraction(fps).limit_denominator(1001)
        self.crf, self.keyframe_interval = crf, keyframe_interval
        self.count = 0
        self.gif_frames: list[Image.Image] = []
        self.container, self.stream = None, None
        suffix = self.path.suffix.lower()
        if suffix not in ANIMATION_SUFFIXES:
            raise MVFormerError(f"{self.path}: cannot write an animation here; the name must end in .mp4 or .gif")
        if suffix == ".mp4":
            self.container = self._ffmpeg(lambda: av.open(str(self.path), mode="w",
                                                          options={"movflags": "+faststart"}))

    def _ffmpeg(self, step):
        try:
            return step()
        except av.FFmpegError as error:
            raise MVFormerError(f"{self.path}: cannot write video ({getattr(error, 'strerror', None) or error})") \
                from None

    def _open_stream(self, height: int, width: int) -> None:
        if height % 2 or width % 2:
            raise MVFormerError(f"{self.path}: cannot write video (H.264 needs an even height and width; got "
                                f"{height} x {width})")
        self.stream = self.container.add_stream("libx264", rate=self.rate)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.stream.options = {"crf": str(self.crf), "preset": "veryfast",
                               "x264-params": f"keyint={self.keyframe_interval}:bframes=0"}

    def write(self, frames: np.ndarray) -> None:
        """uint8 (T, H, W, 3), every batch of one size."""
        self.count += len(frames)
        if self.container is None:  # a palette per frame by fast octree quantisation (Pillow's default is ~20x slower)
            self.gif_frames += [Image.fromarray(np.ascontiguousarray(frame)).quantize(
                method=Image.Quantize.FASTOCTREE) for frame in frames]
            return
        if self.stream is None:
            self._open_stream(*frames.shape[1:3])
        for rgb in frames:
            packets = self._ffmpeg(lambda: self.stream.encode(av.VideoFrame.from_ndarray(
                np.ascontiguousarray(rgb), format="rgb24")))
            self.container.mux(packets)

    def close(self) -> None:
        if self.container is None:
            first, *rest = self.gif_frames
            first.save(self.path, format="GIF", save_all=True, append_images=rest,
                       duration=round(1000 / float(self.rate)), loop=0)
            return
        if self.stream is not None:
            self._ffmpeg(lambda: self.container.mux(self.stream.encode(None)))
        self.container.close()

    def __enter__(self) -> "AnimationWriter":
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is None:
            self.close()
        elif self.container is not None:
            self.container.close()


def save_animation(frames: np.ndarray, path: Path, fps: float) -> None:
    """uint8 (T, H, W, 3) as an .mp4 or .gif (AnimationWriter)."""
    with AnimationWriter(path, fps) as writer:
        writer.write(frames)


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _phase_strip(ax: plt.Axes, phases: PhaseLabels, vertical: bool) -> None:
    """A video's phases as a strip of colours along the frame axis of `ax` (one cell per frame, so that it lines up
    with an image of one cell per frame beside it)."""
    colours = phase_colours(phases.labels)
    ax.imshow(colours[:, None] if vertical else colours[None], aspect="auto", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _phase_legend(fig: plt.Figure, phases: Sequence[PhaseLabels | None]) -> bool:
    """One legend entry per phase of the labels shown, under the figure; False when nothing is labelled."""
    shown = [p for p in phases if p is not None]
    if not shown:
        return False
    present = np.unique(np.concatenate([p.labels for p in shown]))
    names = shown[0].names
    handles = [Patch(color=phase_colours(np.array([label]))[0] / 255,
                     label=names[label] if 0 <= label < len(names) else "unlabelled") for label in present]
    kinds = sorted({"transferred labels" if p.transferred else "labels" for p in shown})
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=7, frameon=False,
               title=f"phases ({' and '.join(kinds)})", title_fontsize=7)
    return True


def plot_cost_matrices(costs: list[np.ndarray], paths: list[np.ndarray], names: list[str], reference: str,
                       path: Path, path_label: str = "alignment path", reference_phases: PhaseLabels | None = None,
                       phases: Sequence[PhaseLabels | None] | None = None) -> None:
    """One panel per video: distances (La, Lb) of the reference's frames to its frames (dark = close), a path
    (K, 2) of (reference frame, frame) pairs on top; where labelled, the video's phases in a strip above and the
    reference's in a strip on the right."""
    phases = list(phases) if phases is not None else [None] * len(costs)
    fig, axes = plt.subplots(1, len(costs), figsize=(4.6 * len(costs), 4.8), squeeze=False)
    for ax, cost, steps, name, own in zip(axes[0], costs, paths, names, phases):
        image = ax.imshow(cost, cmap=DISTANCE_MAP, origin="upper", aspect="auto", interpolation="nearest")
        ax.plot(steps[:, 1], steps[:, 0], color="cyan", linewidth=1.2, label=path_label)
        ax.set_xlabel(f"frame of {name}")
        ax.set_ylabel(f"frame of {reference}")
        ax.legend(loc="lower left", fontsize=7)
        divider = make_axes_locatable(ax)
        top = ax
        if own is not None:
            top = divider.append_axes("top", size="4%", pad=0.04)
            _phase_strip(top, own, vertical=False)
        if reference_phases is not None:
            _phase_strip(divider.append_axes("right", size="4%", pad=0.04), reference_phases, vertical=True)
        fig.colorbar(image, cax=divider.append_axes("right", size="5%", pad=0.1), label=DISTANCE_LABEL)
        top.set_title(f"{reference} vs {name}", fontsize=9)
    labelled = _phase_legend(fig, [reference_phases, *phases])
    fig.tight_layout(rect=(0, 0.1 if labelled else 0, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


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


def plot_attention_strip(images: np.ndarray, overlays: np.ndarray, titles: list[str], scale: float, patches: int,
                         path: Path, gap: int = 4) -> None:
    """Columns: frames, each titled (frame number, phase); rows: the frame, then each entity token's attention on
    it; beside them the colour bar of `overlay_attention`'s scale. Drawn as one mosaic image, so every frame keeps
    its aspect ratio.

    images uint8 (K, H, W, 3), overlays uint8 (K, N, H, W, 3) from `overlay_attention` with `scale`.
    """
    count, num_tokens, height, width = overlays.shape[:4]
    tiles = np.concatenate([images[:, None], overlays], axis=1)  # (K, N + 1, H, W, 3)
    tiles = np.pad(tiles, ((0, 0), (0, 0), (0, gap), (0, gap), (0, 0)), constant_values=255)
    mosaic = tiles.transpose(1, 2, 0, 3, 4).reshape((num_tokens + 1) * (height + gap), count * (width + gap), 3)
    mosaic = mosaic[:-gap, :-gap]  # rows: frame, token 0, ...; columns: the frames
    shown_width = min(mosaic.shape[1], 1800) / 120  # inches at the saved dpi
    fig, ax = plt.subplots(figsize=(shown_width + 2.0, shown_width * mosaic.shape[0] / mosaic.shape[1] + 0.9))
    ax.imshow(mosaic)
    ax.set_xticks((np.arange(count) + 0.5) * (width + gap) - gap / 2, titles, fontsize=7)
    ax.xaxis.tick_top()
    ax.set_yticks((np.arange(num_tokens + 1) + 0.5) * (height + gap) - gap / 2,
                  ["frame", *(f"token {token}" for token in range(num_tokens))], fontsize=8)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    fig.colorbar(plt.cm.ScalarMappable(Normalize(0, scale), ATTENTION_MAP), ax=ax, fraction=0.03, pad=0.01,
                 label=attention_scale_label(patches))
    _save(fig, path)


def plot_progress(predictions: np.ndarray, times: np.ndarray, boundaries: list[str], path: Path, xlabel: str,
                  title: str, truth: np.ndarray | None = None, phases: PhaseLabels | None = None) -> None:
    """Predicted phase progression (L, C - 1) over time (L,): each curve crosses 0 when its phase ends. Where the
    video is labelled: the targets its labels give, (L, C - 1) dashed in the same colour (NaN where unlabelled),
    and its phases as bands behind."""
    fig, ax = plt.subplots(figsize=(9.5, 4))
    handles = []
    if phases is not None:
        edges = np.append(times, 2 * times[-1] - times[-2])  # (L + 1,): frame t spans edges[t] to edges[t + 1]
        starts = np.flatnonzero(np.diff(phases.labels, prepend=-2))  # first frame of each run of one label
        stops = np.append(starts[1:], len(times))
        colours = phase_colours(phases.labels[starts]) / 255
        for start, stop, colour in zip(starts, stops, colours):
            ax.axvspan(edges[start], edges[stop], color=colour, alpha=0.35, linewidth=0)
        present = np.unique(phases.labels)
        handles += [Patch(color=colour / 255, alpha=0.35, label=phases.names[label] if label >= 0 else "unlabelled")
                    for label, colour in zip(present, phase_colours(present))]
    for column, boundary in enumerate(boundaries):
        handles += ax.plot(times, predictions[:, column], color=f"C{column}", label=f"{boundary}, predicted")
        if truth is not None:
            handles += ax.plot(times, truth[:, column], color=f"C{column}", linestyle="--",
                               label=f"{boundary}, from the labels")
    ax.axhline(0.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("(t - phase end) / length")
    ax.set_title(title, fontsize=9)
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
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
        dots = ax.scatter(points[:, 0], points[:, 1], c=np.linspace(0, 1, len(points)), cmap="viridis", s=8)
    fig.colorbar(dots, ax=ax, label="time through the video (0 = first frame, 1 = last)")
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    ax.set_title("frame embeddings over time")
    ax.legend(fontsize=7)
    _save(fig, path)
