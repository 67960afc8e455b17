"""Frame poolers: patch tokens of one frame -> a few tokens per frame.

`lstp` is MV-Former's Learnable Spatial Token Pooling (N entity tokens per frame). `cls`, `max` and
`avg` are the late-fusion (CARL-style) baselines, one token per frame. `fixed_width` expands the CLS
vector linearly to N tokens: the same width as LSTP without any spatial entity selection.
"""

import torch
from torch import nn

from mvformer.config import PoolingName, check_registry


class SpatialTokenPooling(nn.Module):
    """N learned queries (own vectors plus one shared bias) cross-attend (single head, width `dim`) to the patch
    tokens of each frame.

    keys = W_k x + b_k and values = W_v x + b_v are linear maps of the patch tokens x (the CLS token is
    not a key). Computed in the cheap order: the query is pulled back into patch space (q W_k), so
    attention runs on the C-channel patches directly and the value map is applied to the N pooled
    vectors only, never to all P patches. Both rewrites are exact: q . b_k is the same for every patch
    of a query (softmax ignores it) and the attention weights sum to one (so the value bias passes
    through unchanged).
    """

    def __init__(self, in_dim: int, num_tokens: int, dim: int = 384):
        super().__init__()
        self.num_tokens = num_tokens
        self.out_dim = dim
        # The published init: the queries as a (1, N, dim) tensor under nn.Linear's weight init, whose fan-in
        # is N * dim, and one bias shared by all tokens, U(+-1 / sqrt(N * dim)); both bounds are 1 / sqrt(N * dim).
        bound = (num_tokens * dim) ** -0.5
        self.queries = nn.Parameter(torch.empty(num_tokens, dim).uniform_(-bound, bound))
        self.query_bias = nn.Parameter(torch.empty(dim).uniform_(-bound, bound))
        self.key = nn.Linear(in_dim, dim)
        self.key.bias.requires_grad_(False)  # kept for weight compatibility; it cancels in the softmax
        self.value = nn.Linear(in_dim, dim)

    def query_vectors(self) -> torch.Tensor:
        """The N queries, each its own vector plus the bias they share: (N, dim)."""
        return self.queries + self.query_bias

    def _patch_space_queries(self) -> torch.Tensor:
        return self.query_vectors() @ self.key.weight  # (N, C)

    def attention(self, patches: torch.Tensor) -> torch.Tensor:
        """Attention of each query over the patches, (F, N, P); every row sums to one."""
        queries = self._patch_space_queries() * self.out_dim**-0.5  # (N, C): scale N vectors, not F x P patches
        return torch.matmul(queries, patches.transpose(1, 2)).softmax(dim=-1)

    def forward(self, patches: torch.Tensor, cls: torch.Tensor | None = None) -> torch.Tensor:
        """patches (F, P, C) -> entity tokens (F, N, dim).

        Written out rather than through scaled_dot_product_attention: with keys = values = the patches,
        its CPU path rescales the whole key tensor, a copy of every patch token that costs more time and
        memory than the attention itself (measured: 1.8 s against 3.3 s per forward and backward at
        ViT-B/8 shapes).
        """
        return self.value(self.attention(patches) @ patches)  # (F, N, C) -> (F, N, dim)


class ClsPooling(nn.Module):
    """Late fusion with the backbone's CLS token: one token per frame."""

    num_tokens = 1

    def __init__(self, cls_dim: int):
        super().__init__()
        self.out_dim = cls_dim

    def forward(self, patches: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        return cls[:, None, :]  # (F, 1, C_cls)


class PatchPooling(nn.Module):
    """Late fusion by max or average pooling of all patch tokens: one token per frame."""

    num_tokens = 1

    def __init__(self, in_dim: int, mode: str):
        super().__init__()
        self.out_dim = in_dim
        self.mode = mode

    def forward(self, patches: torch.Tensor, cls: torch.Tensor | None = None) -> torch.Tensor:
        pooled = patches.amax(dim=1) if self.mode == "max" else patches.mean(dim=1)  # (F, C)
        return pooled[:, None, :]


class FixedWidthPooling(nn.Module):
    """The CLS vector expanded linearly to N tokens of width `dim`: LSTP's width without entities."""

    def __init__(self, cls_dim: int, num_tokens: int, dim: int = 384):
        super().__init__()
        self.num_tokens = num_tokens
        self.out_dim = dim
        self.expand = nn.Linear(cls_dim, num_tokens * dim)

    def forward(self, patches: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        return self.expand(cls).view(cls.shape[0], self.num_tokens, self.out_dim)  # (F, N, dim)


POOLINGS = {  # name -> builder(patch_dim, cls_dim, num_tokens, dim)
    "lstp": lambda patch_dim, cls_dim, num_tokens, dim: SpatialTokenPooling(patch_dim, num_tokens, dim),
    "cls": lambda patch_dim, cls_dim, num_tokens, dim: ClsPooling(cls_dim),
    "max": lambda patch_dim, cls_dim, num_tokens, dim: PatchPooling(patch_dim, "max"),
    "avg": lambda patch_dim, cls_dim, num_tokens, dim: PatchPooling(patch_dim, "avg"),
    "fixed_width": lambda patch_dim, cls_dim, num_tokens, dim: FixedWidthPooling(cls_dim, num_tokens, dim),
}
check_registry(PoolingName, POOLINGS)


def build_pooling(kind: str, patch_dim: int, cls_dim: int, num_tokens: int, dim: int) -> nn.Module:
    """The pooler named `kind` (one of POOLINGS) for backbone features of the given widths."""
    if kind not in POOLINGS:
        raise ValueError(f"unknown pooling {kind!r}; choose one of {', '.join(POOLINGS)}")
    return POOLINGS[kind](patch_dim, cls_dim, num_tokens, dim)
