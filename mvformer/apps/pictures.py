"""The demo's pictures: one of each own-video command, made on the demo's data."""

from __future__ import annotations

from pathlib import Path

from mvformer import viz
from mvformer.apps.align import align_videos
from mvformer.apps.attention import attention_video
from mvformer.apps.progress import progress_against_reference
from mvformer.apps.retrieve import retrieve_frames
from mvformer.apps.videos import embed_video_file
from mvformer.checkpoint import load_model
from mvformer.data.datasets import VideoDataset
from mvformer.files import atomic_path


def write_demo_pictures(checkpoint: str | Path, data_root: str | Path, out_dir: str | Path,
                        device: str = "auto") -> list[Path]:
    """One picture of each command, from a trained run on a labelled dataset (the demo's): embeddings.png,
    align.gif + align_cost.png, retrieve.png, attention_strip.png + attention.gif, progress.png."""
    data_root, out_dir = Path(data_root), Path(out_dir)
    val = VideoDataset(data_root, "val")
    first, *others = [r.path for r in val.records[:3]]
    model, torch_device = load_model(checkpoint, device)
    embs = [embed_video_file(model, r.path, torch_device).embeddings for r in val.records[:4]]
    with atomic_path(out_dir / "embeddings.png") as temporary:
        viz.plot_embedding_trajectories(embs, [r.name for r in val.records[:4]], temporary)
    align_videos(checkpoint, first, others, out_dir / "align.gif", overwrite=True, device=device, height=128)
    retrieve_frames(checkpoint, first, len(embs[0]) // 2, [r.path for r in val.records], out_dir / "retrieve.png", k=9,
                    skip_query_video=True, overwrite=True, device=device)
    attention_video(checkpoint, first, out_dir, overwrite=True, device=device, every=2)
    progress_against_reference(checkpoint, data_root, first, out_dir / "progress.png", overwrite=True, device=device)
    return [out_dir / name for name in ("embeddings.png", "align.gif", "align_cost.png", "retrieve.png",
                                        "attention_strip.png", "attention.gif", "progress.png")]
