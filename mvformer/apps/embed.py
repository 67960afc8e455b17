"""`mvformer embed`: per-frame embeddings of video files and frame folders, one .npy and one .json each."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mvformer.apps.videos import embed_video_file, list_videos, output_name
from mvformer.checkpoint import load_model
from mvformer.errors import MVFormerError
from mvformer.files import atomic_path, check_outputs
from mvformer.progress import progress_bar


def embed_videos(checkpoint: str | Path, videos: Sequence[str | Path], out_dir: str | Path, overwrite: bool = False,
                 device: str = "auto", frames: str = "squash") -> list[Path]:
    """Embed video files, frame folders, or every video of the folders given; for each, write OUT/NAME.npy
    (float32 frames x E) and OUT/NAME.json (source, fps, frame count, model config). Returns the .npy paths."""
    out_dir = Path(out_dir)
    paths = list_videos(videos)
    names: dict[str, Path] = {}
    for path in paths:
        name = output_name(path)
        if name in names:
            raise MVFormerError(f"{path}: another input ({names[name]}) is also named {name!r}; their embeddings "
                                f"would overwrite each other, so embed them into different folders")
        names[name] = path
    check_outputs([out_dir / f"{name}{suffix}" for name in names for suffix in (".npy", ".json")], overwrite)
    model, torch_device = load_model(checkpoint, device)
    written = []
    for name, path in progress_bar(names.items(), desc="embedding", unit="video"):
        result = embed_video_file(model, path, torch_device, frames)
        with atomic_path(out_dir / f"{name}.npy") as temporary:
            np.save(temporary, result.embeddings)
        info = {"source": str(path.resolve()), "checkpoint": str(Path(checkpoint).resolve()), "fps": result.fps,
                "num_frames": len(result.embeddings), "embedding_size": result.embeddings.shape[1],
                "frame_mode": frames, "image_size": model.config.data.image_size,
                "distance": "squared Euclidean on L2-normalised embeddings", "config": model.config.to_dict()}
        with atomic_path(out_dir / f"{name}.json") as temporary:
            temporary.write_text(json.dumps(info, indent=2) + "\n")
        written.append(out_dir / f"{name}.npy")
    return written
