"""MV-Former: frozen backbone -> entity tokens per frame -> joint temporal encoder -> one embedding per frame.

The same class is the late-fusion (CARL-style) baseline and the fixed-width baseline: only the
pooler changes (`model.pooling`), everything after it is shared.
"""

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mvformer.config import RANGES, BackboneConfig, Config, DataConfig, EvalConfig, ModelConfig
from mvformer.data.transforms import prepare_frames
from mvformer.errors import MVFormerError
from mvformer.model.backbone import FrozenBackbone, build_backbone
from mvformer.model.pooling import build_pooling
from mvformer.model.temporal import TemporalEncoder
from mvformer.model.weights import first_nonfinite


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
    """Frozen backbone + trainable head; `forward` maps frames to L2-normalised frame embeddings.

    The model knows its own input and architecture only: the square `image_size`, how frames are fitted to it
    (`frame_mode`), `train_len`, the clip length its time encoding was trained over, `max_encoder_frames`, the
    longest stretch of a video the temporal encoder sees at once at evaluation, and its `model_cfg` and
    `backbone_cfg`. The run around it (data, training, evaluation settings) stays outside: `build_model` makes one
    from a run's `Config`, `checkpoint.load_model` returns the two together.
    """

    def __init__(self, model_cfg: ModelConfig, backbone_cfg: BackboneConfig, image_size: int, train_len: int,
                 backbone: FrozenBackbone | None = None, frame_mode: str = "squash",
                 max_encoder_frames: int | None = None):
        super().__init__()
        self.model_cfg, self.backbone_cfg = model_cfg, backbone_cfg
        self.image_size = image_size
        self.train_len = train_len
        self.frame_mode = frame_mode
        self.max_encoder_frames = max_encoder_frames
        self.backbone = backbone or build_backbone(backbone_cfg.name, backbone_cfg.blocks, path=backbone_cfg.path,
                                                   image_size=image_size, chunk_size=backbone_cfg.chunk_size)
        self.head = EmbeddingHead(model_cfg, self.backbone.patch_dim, self.backbone.cls_dim, train_len)
        self.projection = ProjectionHead(model_cfg.embedding_size, model_cfg.projection_size)

    def as_config(self, name: str = "mvformer") -> Config:
        """A configuration that rebuilds this model (its architecture and input; every other setting the
        default): what an export of a model built without a run stores."""
        data = DataConfig(image_size=self.image_size, clip_len=self.train_len, frames=self.frame_mode)
        never_chunked = RANGES["eval.frames_per_batch"][1]  # max_encoder_frames None: the whole video at once
        evaluation = EvalConfig(frames_per_batch=self.max_encoder_frames or never_chunked)
        return Config(name=name, backbone=self.backbone_cfg, model=self.model_cfg, data=data, eval=evaluation)

    def prepare(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 frames (L, H, W, 3) -> the normalised model input (L, 3, S, S) on the model's device."""
        device = next(self.head.parameters()).device
        frames = torch.as_tensor(frames).to(device)  # uint8 crosses to the GPU: a quarter of the float bytes
        return prepare_frames(frames, self.image_size, self.backbone.mean, self.backbone.std, self.frame_mode)

    def features(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (B, T, 3, S, S) normalised -> patch tokens (B, T, P, C), CLS (B, T, C_cls); no gradient."""
        batch, length = frames.shape[:2]
        patches, cls = self.backbone(frames.flatten(0, 1))
        return patches.view(batch, length, *patches.shape[1:]), cls.view(batch, length, -1)

    def embed_features(self, patches: torch.Tensor, cls: torch.Tensor, masks: torch.Tensor | None = None,
                       project: bool = False, normalize: bool = True) -> torch.Tensor:
        """Backbone features -> (B, T, E) embeddings: through the SCL projection if `project`, L2-normalised if
        `normalize` (TCC and the supervised objective train on the head's raw output, as published)."""
        embs = self.head(patches, cls, masks)
        if project:
            embs = self.projection(embs)
        return F.normalize(embs, dim=-1) if normalize else embs

    def forward(self, frames: torch.Tensor, masks: torch.Tensor | None = None, project: bool = False,
                normalize: bool = True) -> torch.Tensor:
        """frames (B, T, 3, S, S) normalised, masks (B, T) -> (B, T, E) embeddings (see `embed_features`)."""
        patches, cls = self.features(frames)
        return self.embed_features(patches, cls, masks, project, normalize)

    @torch.no_grad()
    def pool_chunks(self, chunks: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Backbone features of consecutive chunks of one video, patches (t, P, C) and CLS (t, C_cls) each ->
        the whole video's entity tokens (1, L, N, D). Pooling runs chunk by chunk, so only the small entity tokens
        of the whole video are ever held at once."""
        dtype, device = self.head.embed.weight.dtype, self.head.embed.weight.device
        tokens = [self.head.pooled_tokens(patches.to(device, dtype)[None], cls.to(device, dtype)[None])
                  for patches, cls in chunks]  # (1, t, N, D) each
        if not tokens:
            raise ValueError("pool_chunks needs at least one chunk of frames")
        return torch.cat(tokens, dim=1)

    @torch.no_grad()
    def encode_pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """A whole video's entity tokens (1, L, N, D) -> (L, E) float32 L2-normalised embeddings: the temporal
        encoder sees every frame, its time encoding interpolated over the training length (PROTOCOL.md). A video
        longer than `max_encoder_frames` goes through it as ceil(L / max) equal chunks (the last one shorter), each
        on its own with its own time encoding, as the published evaluation does."""
        length = tokens.shape[1]
        num_chunks = math.ceil(length / self.max_encoder_frames) if self.max_encoder_frames else 1
        chunks = tokens.split(math.ceil(length / num_chunks), dim=1)  # (1, <= max, N, D) each
        embs = torch.cat([self.head.encode_tokens(chunk) for chunk in chunks], dim=1)  # (1, L, E)
        return F.normalize(embs, dim=-1)[0].float()

    def embed_token_chunks(self, chunks: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The one whole-video embedding, used for videos (`embed_video`), the feature cache and the own-video
        commands alike: backbone features of consecutive chunks -> (L, E) L2-normalised embeddings."""
        return self.encode_pooled(self.pool_chunks(chunks))

    def embed_video(self, frames: torch.Tensor, chunk_size: int = 256) -> torch.Tensor:
        """A whole video, frames (L, 3, S, S) normalised -> (L, E) L2-normalised embeddings, chunk by chunk."""
        return self.embed_token_chunks(
            tuple(part[0] for part in self.features(frames[None, start:start + chunk_size]))
            for start in range(0, frames.shape[0], chunk_size))

    def trainable_state_dict(self) -> dict:
        """Weights of the head and projection only: the frozen backbone is rebuilt from its config."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def load_trainable_state_dict(self, state: dict, source: str = "weights") -> None:
        """Load head weights, or one MVFormerError naming `source` and the first missing, unexpected, misshapen,
        non-floating (where the model holds floats) or non-finite tensor: the one check of whether stored weights
        fit a config and can be used, run before anything is computed from them."""
        expected = self.trainable_state_dict()
        missing = [key for key in expected if key not in state]
        unexpected = [key for key in state if key not in expected]
        if missing or unexpected:
            raise MVFormerError(f"{source}: weights do not fit the stored config ({len(missing)} missing, e.g. "
                                f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})")
        for key, value in expected.items():
            if not isinstance(state[key], torch.Tensor) or state[key].shape != value.shape:
                shape = tuple(state[key].shape) if isinstance(state[key], torch.Tensor) else type(state[key]).__name__
                raise MVFormerError(f"{source}: weights do not fit the stored config ('{key}' has shape {shape}, "
                                    f"the config builds {tuple(value.shape)})")
            if value.is_floating_point() and not state[key].is_floating_point():
                raise MVFormerError(f"{source}: weight '{key}' is {state[key].dtype}, not floating point; the "
                                    f"model's weights are {value.dtype}")
        nonfinite = first_nonfinite({key: state[key] for key in expected})
        if nonfinite is not None:
            raise MVFormerError(f"{source}: the weights hold NaN or Inf (first: '{nonfinite}'); they cannot be used")
        self.load_state_dict(state, strict=False)


def check_finite_weights(model: MVFormer, source: str) -> None:
    """Refuse weights that hold NaN or Inf: nothing made from them (embeddings, exports) would mean anything."""
    bad = first_nonfinite(model.trainable_state_dict())
    if bad is not None:
        raise MVFormerError(f"{source}: the weights hold NaN or Inf (first: '{bad}'); they cannot be used")


def build_model(config: Config, backbone: FrozenBackbone | None = None) -> MVFormer:
    """The model a run's config describes (input from data.image_size and data.frames, time encoding over
    data.clip_len, evaluation chunks of eval.frames_per_batch)."""
    return MVFormer(config.model, config.backbone, config.data.image_size, config.data.clip_len, backbone,
                    frame_mode=config.data.frames, max_encoder_frames=config.eval.frames_per_batch)
