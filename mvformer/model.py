"""MV-Former: frozen backbone -> entity tokens per frame -> joint temporal encoder -> one embedding per frame.

The same class is the late-fusion (CARL-style) baseline and the fixed-width baseline: only the
pooler changes (`model.pooling`), everything after it is shared.
"""

import torch
import torch.nn.functional as F
from torch import nn

from mvformer.backbone import FrozenBackbone, build_backbone
from mvformer.config import Config, ModelConfig
from mvformer.pooling import build_pooling
from mvformer.temporal import TemporalEncoder


def fc_stack(in_dim: int, widths: list[int], dropout: float) -> nn.Sequential:
    """Dropout + Linear + BatchNorm + ReLU per layer, as in the published embedder."""
    layers = []
    for width in widths:
        layers += [nn.Dropout(dropout), nn.Linear(in_dim, width), nn.BatchNorm1d(width), nn.ReLU()]
        in_dim = width
    return nn.Sequential(*layers)


class ProjectionHead(nn.Module):
    """SCL projection: Linear(E, 128) + BatchNorm + ReLU + Linear(128, E); used only for the loss."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, embs: torch.Tensor) -> torch.Tensor:
        return self.net(embs.flatten(0, -2)).view_as(embs)


class EmbeddingHead(nn.Module):
    """Everything after the backbone: pooling, FC layers, hidden projection, temporal encoder, reduction."""

    def __init__(self, cfg: ModelConfig, patch_dim: int, cls_dim: int, train_len: int):
        super().__init__()
        self.cfg = cfg
        self.pooling = build_pooling(cfg.pooling, patch_dim, cls_dim, cfg.num_tokens, cfg.pool_dim)
        self.num_tokens = self.pooling.num_tokens
        token_ids = torch.eye(self.num_tokens)  # (N, N) one-hot ids
        self.register_buffer("token_ids", token_ids, persistent=False)
        id_width = self.num_tokens if cfg.token_id != "none" else 0
        fc_in = self.pooling.out_dim + (id_width if cfg.token_id == "pooling" else 0)
        self.fc = fc_stack(fc_in, cfg.fc_layers, cfg.dropout)
        fc_out = cfg.fc_layers[-1] if cfg.fc_layers else fc_in
        self.to_hidden = nn.Linear(fc_out + (id_width if cfg.token_id == "encoder" else 0), cfg.hidden_size)
        self.encoder = TemporalEncoder(cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.ff_dim, cfg.dropout,
                                       train_len, cfg.time_encoding)
        if cfg.token_reduction == "linear":
            self.reduce = nn.Linear(self.num_tokens * cfg.hidden_size, cfg.hidden_size)
        self.embed = nn.Linear(cfg.hidden_size, cfg.embedding_size)

    def _with_token_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        ids = self.token_ids.to(tokens.dtype).expand(*tokens.shape[:-2], -1, -1)  # (..., N, N)
        return torch.cat([tokens, ids], dim=-1)

    def pooled_tokens(self, patches: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """patches (B, T, P, C), cls (B, T, C_cls) -> entity tokens (B, T, N, D); frame by frame."""
        if self.cfg.zero_visual_input:
            patches, cls = torch.zeros_like(patches), torch.zeros_like(cls)
        batch, frames = patches.shape[:2]
        tokens = self.pooling(patches.flatten(0, 1), cls.flatten(0, 1))  # (B * T, N, D)
        return tokens.view(batch, frames, self.num_tokens, -1)

    def encode_tokens(self, tokens: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Entity tokens (B, T, N, D), masks (B, T) -> frame embeddings (B, T, E), not normalised."""
        if self.cfg.token_id == "pooling":
            tokens = self._with_token_ids(tokens)
        batch, frames, num_tokens, width = tokens.shape
        tokens = self.fc(tokens.reshape(-1, width)).view(batch, frames, num_tokens, -1)
        if self.cfg.token_id == "encoder":
            tokens = self._with_token_ids(tokens)
        hidden = self.encoder(self.to_hidden(tokens), masks)  # (B, T, N, H)
        reduction = self.cfg.token_reduction
        if reduction == "first":
            frame_tokens = hidden[:, :, 0]
        elif reduction == "mean":
            frame_tokens = hidden.mean(dim=2)
        elif reduction == "max":
            frame_tokens = hidden.amax(dim=2)
        else:
            frame_tokens = self.reduce(hidden.flatten(2))  # (B, T, N * H) -> (B, T, H)
        return self.embed(frame_tokens)  # (B, T, E)

    def forward(self, patches: torch.Tensor, cls: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """patches (B, T, P, C), cls (B, T, C_cls), masks (B, T) -> frame embeddings (B, T, E), not normalised."""
        return self.encode_tokens(self.pooled_tokens(patches, cls), masks)


class MVFormer(nn.Module):
    """Frozen backbone + trainable head; `forward` maps frames to L2-normalised frame embeddings."""

    def __init__(self, config: Config, backbone: FrozenBackbone | None = None):
        super().__init__()
        self.config = config
        self.backbone = backbone or build_backbone(
            config.backbone.name, config.backbone.blocks, path=config.backbone.path,
            image_size=config.data.image_size, chunk_size=config.backbone.chunk_size)
        self.head = EmbeddingHead(config.model, self.backbone.patch_dim, self.backbone.cls_dim, config.data.clip_len)
        self.projection = ProjectionHead(config.model.embedding_size, config.model.projection_size)

    def features(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (B, T, 3, S, S) normalised -> patch tokens (B, T, P, C), CLS (B, T, C_cls); no gradient."""
        batch, length = frames.shape[:2]
        patches, cls = self.backbone(frames.flatten(0, 1))
        return patches.view(batch, length, *patches.shape[1:]), cls.view(batch, length, -1)

    def embed_features(self, patches: torch.Tensor, cls: torch.Tensor, masks: torch.Tensor | None = None,
                       project: bool = False) -> torch.Tensor:
        """Backbone features -> (B, T, E) L2-normalised embeddings (through the SCL projection if `project`)."""
        embs = self.head(patches, cls, masks)
        if project:
            embs = self.projection(embs)
        return F.normalize(embs, dim=-1)

    def forward(self, frames: torch.Tensor, masks: torch.Tensor | None = None, project: bool = False) -> torch.Tensor:
        """frames (B, T, 3, S, S) normalised, masks (B, T) -> (B, T, E) L2-normalised embeddings."""
        patches, cls = self.features(frames)
        return self.embed_features(patches, cls, masks, project)

    @torch.no_grad()
    def embed_video(self, frames: torch.Tensor, chunk_size: int = 256) -> torch.Tensor:
        """A whole video, frames (L, 3, S, S) normalised -> (L, E) L2-normalised embeddings.

        Backbone and pooling run chunk by chunk, so only the small entity tokens of the whole video are
        held at once; the temporal encoder then sees every frame, its time encoding interpolated over
        the training length (PROTOCOL.md).
        """
        tokens = []
        for start in range(0, frames.shape[0], chunk_size):
            patches, cls = self.features(frames[None, start:start + chunk_size])
            tokens.append(self.head.pooled_tokens(patches, cls))  # (1, chunk, N, D)
        embs = self.head.encode_tokens(torch.cat(tokens, dim=1))
        return F.normalize(embs, dim=-1)[0]

    def trainable_state_dict(self) -> dict:
        """Weights of the head and projection only: the frozen backbone is rebuilt from its config."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def load_trainable_state_dict(self, state: dict) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise ValueError(f"weights do not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})")

    def save_pretrained(self, directory, metrics: dict | None = None, data: str | None = None,
                        overwrite: bool = False):
        """Write config.json, model.safetensors and a README.md model card to `directory` (no pickle)."""
        from mvformer.pretrained import save_pretrained
        return save_pretrained(self, directory, metrics=metrics, data=data, overwrite=overwrite)

    @classmethod
    def from_pretrained(cls, directory, backbone: FrozenBackbone | None = None) -> "MVFormer":
        """A model written by `save_pretrained`, in eval mode; the backbone is rebuilt from the config."""
        from mvformer.pretrained import load_pretrained
        return load_pretrained(directory, backbone)
