"""The demo's pictures: one of each own-video command, made on the demo's data with the model loaded once."""

from __future__ import annotations

from pathlib import Path

from mvformer import viz
from mvformer.apps.align import align_to_reference, write_alignment
from mvformer.apps.attention import attention_maps, write_attention
from mvformer.apps.progress import progress, write_progress
from mvformer.apps.retrieve import retrieve, write_retrieval
from mvformer.apps.videos import embed
from mvformer.checkpoint import Trained
from mvformer.data.datasets import VideoDataset
from mvformer.files import atomic_path


def write_demo_pictures(trained: Trained, data_root: str | Path, out_dir: str | Path) -> list[Path]:
    """One picture of each command, from a trained model on a labelled dataset (the demo's): embeddings.png,
    align.gif + align_cost.png, retrieve.png, attention_strip.png + attention.mp4, progress.png."""
    data_root, out_dir = Path(data_root), Path(out_dir)
    val = VideoDataset(data_root, "val")
    embedded = [embed(trained, record.path) for record in val.records]
    first, *others = embedded[:3]
    with atomic_path(out_dir / "embeddings.png") as temporary:
        viz.plot_embedding_trajectories([e.embeddings for e in embedded[:4]], [e.name for e in embedded[:4]],
                                        temporary)
    write_alignment(out_dir / "align.gif", first, align_to_reference(first, others), height=128, overwrite=True)
    write_retrieval(out_dir / "retrieve.png", first, len(first) // 2, retrieve(first, len(first) // 2, embedded, k=9),
                    overwrite=True)
    write_attention(out_dir, attention_maps(trained, first.source), overwrite=True, every=2)
    write_progress(out_dir / "progress.png", progress(trained, VideoDataset(data_root, "train"), first),
                   overwrite=True)
    return [out_dir / name for name in ("embeddings.png", "align.gif", "align_cost.png", "retrieve.png",
                                        "attention_strip.png", "attention.mp4", "progress.png")]
