"""`mvformer embed`: per-frame embeddings of video files and frame folders, one .npy and one .json each.

The library call is `apps.videos.embed` (one video in, a `VideoEmbedding` out); `write_embeddings` saves several;
`embed_command` is the command: every check first, the model loaded once, the files written together at the end.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mvformer.apps.videos import VideoEmbedding, check_videos, embed, list_videos, load_app_model, output_name
from mvformer.checkpoint import Trained, source_files
from mvformer.errors import MVFormerError
from mvformer.files import atomic_paths, check_output_folder, check_outputs
from mvformer.progress import progress_bar


def embedding_outputs(out_dir: Path, names: Sequence[str]) -> list[Path]:
    """OUT/NAME.npy and OUT/NAME.json per video, in order."""
    return [out_dir / f"{name}{suffix}" for name in names for suffix in (".npy", ".json")]


def _named(paths: Sequence[Path]) -> list[str]:
    """Each video's output name, refusing two of one name (their files would overwrite each other)."""
    names: dict[str, Path] = {}
    for path in paths:
        name = output_name(path)
        if name in names:
            raise MVFormerError(f"{path}: another input ({names[name]}) is also named {name!r}; their embeddings "
                                f"would overwrite each other, so embed them into different folders")
        names[name] = path
    return list(names)


def write_embeddings(out_dir: str | Path, embedded: Sequence[VideoEmbedding], trained: Trained,
                     frames: str = "squash", overwrite: bool = False) -> list[Path]:
    """OUT/NAME.npy (float32 frames x E) and OUT/NAME.json (source, fps, frame count, model config) for each
    video, written together (all or none); returns the .npy paths."""
    out_dir = Path(out_dir)
    targets = embedding_outputs(out_dir, [item.name for item in embedded])
    inputs = [*trained.inputs, *(item.source for item in embedded if item.source is not None)]
    check_output_folder(out_dir, inputs)
    check_outputs(targets, overwrite, inputs)
    with atomic_paths(targets) as temporaries:
        for item, npy_path, json_path in zip(embedded, temporaries[::2], temporaries[1::2]):
            info = {"source": str(item.source.resolve()) if item.source is not None else None,
                    "checkpoint": str(trained.source), "fps": item.fps, "num_frames": len(item),
                    "embedding_size": item.embeddings.shape[1], "frame_mode": frames,
                    "image_size": trained.model.image_size,
                    "distance": "squared Euclidean on L2-normalised embeddings", "config": trained.config.to_dict()}
            np.save(npy_path, item.embeddings)
            json_path.write_text(json.dumps(info, indent=2) + "\n")
    return targets[::2]


def embed_command(checkpoint: str | Path, videos: Sequence[str | Path], out_dir: str | Path,
                  overwrite: bool = False, device: str = "auto", frames: str = "squash") -> list[Path]:
    """`mvformer embed`: embed video files, frame folders, or every video of the folders given, into OUT. Every
    video and output is checked before the model runs, so a video that fails leaves no output of the others."""
    out_dir = Path(out_dir)
    paths = list_videos(videos)
    inputs = [*source_files(checkpoint), *map(Path, videos), *paths]
    check_output_folder(out_dir, inputs)
    check_outputs(embedding_outputs(out_dir, _named(paths)), overwrite, inputs)
    check_videos(paths)
    trained = load_app_model(checkpoint, device)
    embedded = [embed(trained, path, frames) for path in progress_bar(paths, desc="embedding", unit="video")]
    return write_embeddings(out_dir, embedded, trained, frames, overwrite)
