"""Time encoding and the transformer encoder that attends over all entity tokens of a clip jointly."""

import copy

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_time_encoding(num_frames: int, dim: int, train_len: int | None = None) -> torch.Tensor:
    """Sinusoidal encoding of frame positions, (num_frames, dim).

    Channel 2i holds sin(p / 10000^(2i/dim)) and channel 2i+1 holds cos(p / 10000^((2i+1)/dim)).
    When `train_len` is given and differs from `num_frames`, the positions are spread evenly over
    [0, train_len - 1] (interpolated), so a whole video of any length spans the same range of
    encodings the model saw on its training clips.
    """
    if train_len is None or train_len == num_frames:
        positions = torch.arange(num_frames, dtype=torch.float64)
    else:
        positions = torch.linspace(0, train_len - 1, num_frames, dtype=torch.float64)
    channels = torch.arange(dim, dtype=torch.float64)
    angles = positions[:, None] / torch.pow(10000.0, channels / dim)[None, :]  # (T, dim)
    encoding = torch.where(channels.remainder(2) == 0, torch.sin(angles), torch.cos(angles))
    return encoding.float()


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer: x + Drop(MHA(LN(x))), then x + Drop(FFN(LN(x))).

    Initialised as published: xavier-uniform on every weight matrix, with the fused `qkv` map initialised as
    the three separate (dim, dim) Q, K and V matrices it stands for; biases and norms keep torch's defaults.
    """

    def __init__(self, dim: int, num_heads: int, ff_dim: int, dropout: float):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_dim), nn.ReLU(), nn.Linear(ff_dim, dim))
        self.dropout = nn.Dropout(dropout)
        for matrix in (*self.qkv.weight.chunk(3, dim=0), self.out.weight, self.ff[0].weight, self.ff[2].weight):
            nn.init.xavier_uniform_(matrix)

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None) -> torch.Tensor:
        """x (B, S, H); attend (B, 1, 1, S) bool, True where a key may be attended to."""
        batch, length, dim = x.shape
        qkv = self.qkv(self.attn_norm(x)).view(batch, length, 3, self.num_heads, dim // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, S, H / heads)
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=attend)
        x = x + self.dropout(self.out(attended.transpose(1, 2).reshape(batch, length, dim)))
        return x + self.dropout(self.ff(self.ff_norm(x)))


class TemporalEncoder(nn.Module):
    """Time encoding plus a stack of encoder layers over tokens x frames, padding masked as keys.

    The layers start as copies of one initialised layer, as the published encoder does.
    """

    def __init__(self, dim: int, num_layers: int, num_heads: int, ff_dim: int, dropout: float,
                 train_len: int, time_encoding: str = "sinusoidal"):
        super().__init__()
        self.dim = dim
        self.train_len = train_len
        self.time_encoding = time_encoding
        self.dropout = nn.Dropout(dropout)
        layer = EncoderLayer(dim, num_heads, ff_dim, dropout)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, tokens: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, T, N, H), masks (B, T) of 0/1 -> (B, T, N, H); all N x T tokens attend jointly."""
        batch, frames, num_tokens, dim = tokens.shape
        if self.time_encoding == "sinusoidal":
            encoding = sinusoidal_time_encoding(frames, dim, self.train_len).to(tokens)  # (T, H)
            tokens = tokens + encoding[None, :, None, :]
        x = self.dropout(tokens).reshape(batch, frames * num_tokens, dim)  # (B, T * N, H)
        attend = None
        if masks is not None:
            attend = (masks > 0).repeat_interleave(num_tokens, dim=1)[:, None, None, :]  # (B, 1, 1, T * N)
        for layer in self.layers:
            x = layer(x, attend)
        return x.view(batch, frames, num_tokens, dim)
