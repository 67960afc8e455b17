"""Training objectives, each a pure function of embeddings and their frame positions."""

from mvformer.losses.scl import sequence_contrastive_loss
from mvformer.losses.tcc import tcc_loss
from mvformer.losses.tcn import tcn_loss

__all__ = ["sequence_contrastive_loss", "tcc_loss", "tcn_loss"]
