"""mvformer from Python: objects in, typed results out, files only when asked (`write_*`).

    import mvformer.api as mv
    trained = mv.load("runs/demo/mv_former_seed0")      # a run folder, checkpoint, export or an export's Hub id
    clip = mv.embed(trained, "clip.mp4")                 # also a frame folder or uint8 frames (L, H, W, 3)
    (alignment,) = mv.align(clip, [mv.embed(trained, "other.mp4")])

Every command of the CLI is these calls plus its checks: load a model once, embed, compute, write. README.md's
"Python" section walks through them (and a test runs it).
"""

from mvformer.apps.align import Alignment, align_to_reference as align, write_alignment
from mvformer.apps.attention import AttentionMaps, attention_maps, write_attention
from mvformer.apps.embed import write_embeddings
from mvformer.apps.label import Labelled, label, score_labels, write_labelled
from mvformer.apps.progress import ProgressCurves, progress, write_progress
from mvformer.apps.report import build_report
from mvformer.apps.retrieve import Match, retrieve, write_retrieval
from mvformer.apps.videos import VideoEmbedding, embed
from mvformer.checkpoint import Trained, load_model as load
from mvformer.data.datasets import VideoDataset as dataset
from mvformer.evaluation.metrics import evaluate_embeddings as score
from mvformer.pretrained import save_pretrained

__all__ = [
    "Alignment", "AttentionMaps", "Labelled", "Match", "ProgressCurves", "Trained", "VideoEmbedding", "align",
    "attention_maps", "build_report", "dataset", "embed", "label", "load", "progress", "retrieve", "save_pretrained",
    "score", "score_labels", "write_alignment", "write_attention", "write_embeddings", "write_labelled",
    "write_progress", "write_retrieval",
]
