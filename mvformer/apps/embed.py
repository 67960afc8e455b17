"""`mvformer embed`: per-frame embeddings of video files and frame folders, one .npy and one .json each."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mvformer.apps.videos import check_videos, embed_video_file, list_videos, load_app_model, model_inputs, output_name
from mvformer.errors import MVFormerError
from mvformer.files import atomic_paths, check_output_folder, check_outputs
from mvformer.progress import progress_bar


def embed_videos(checkpoint: str | Path, videos: Sequence[str | Path], out_dir: str | Path, overwrite: bool = False,
                 device: str = "auto", frames: str = "squash") -> list[Path]:
    """Embed video files, frame folders, or every video of the folders given; for each, write OUT/NAME.npy
    (float32 frames x E) and OUT/NAME.json (source, fps, frame count, model config). Returns the .npy paths.
    Every video is checked before the model runs, and the files are written together at the end, so a video that
    fails leaves no output of the others."""
    out_dir = Path(out_dir)
    paths = list_videos(videos)
    names: dict[str, Path] = {}
    for path in paths:
        name = output_name(path)
        if name in names:
            raise MVFormerError(f"{path}: another input ({names[name]}) is also named {name!r}; their embeddings "
                                f"would overwrite each other, so embed them into different folders")
        names[name] = path
    inputs = [*model_inputs(checkpoint), *map(Path, videos), *paths]
    check_output_folder(out_dir, inputs)
    targets = [out_dir / f"{name}{suffix}" for name in names for suffix in (".npy", ".json")]  # per video, in order
    check_outputs(targets, overwrite, inputs)
    check_videos(paths)
    model, torch_device = load_app_model(checkpoint, device)
    contents = []  # per video: the embeddings (L, E) and the JSON record
    for path in progress_bar(names.values(), desc="embedding", unit="video"):
        result = embed_video_file(model, path, torch_device, frames)
        info = {"source": str(path.resolve()), "checkpoint": str(Path(checkpoint).resolve()), "fps": result.fps,
                "num_frames": len(result.embeddings), "embedding_size": result.embeddings.shape[1],
                "frame_mode": frames, "image_size": model.config.data.image_size,
                "distance": "squared Euclidean on L2-normalised embeddings", "config": model.config.to_dict()}
        contents.append((result.embeddings, info))
    with atomic_paths(targets) as temporaries:
        for (embeddings, info), npy_path, json_path in zip(contents, temporaries[::2], temporaries[1::2]):
            np.save(npy_path, embeddings)
            json_path.write_text(json.dumps(info, indent=2) + "\n")
    return targets[::2]
