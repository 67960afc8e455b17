"""Speed and memory of one MV-Former training step of the head, against a straightforward form written here.

Run by hand (a few minutes on two CPU cores):  python benchmarks/train_step.py

What is measured: one training step of the trainable head only -- the backbone is excluded, random backbone
features stand in for it -- at the Penn Action configuration (`load_config("penn_action")`: 3 entity tokens,
pool width 384, FC 2x512, hidden 256, 3 layers of 8 heads, FF 1024, embedding 128, clips of 80 frames, one video
= 2 views per step). A step is: `model.embed_features(patches, cls, masks, project=True)`, the SCL loss,
backward, gradient clipping at 10 and an Adam step. Two feature shapes:
- ViT-B/8: patches (2, 80, 784, 2304) (3 blocks x 768), cls (2, 80, 768)
- ViT-S/16: patches (2, 80, 196, 1152) (3 blocks x 384), cls (2, 80, 384)

The "fast" form is the library's head. The "straightforward" form (`straightforward_embed`) recomputes the same
model from the same parameters the way the published research code does: a Python loop over the videos of the
batch, keys and values projected for every patch, softmax attention written out (matmul, softmax, matmul) in the
pooling and in the temporal encoder. Only the BatchNorm layers see the whole batch at once, as they must to give
the same numbers in training mode.

How to read it:
- "check" first asserts that both forms give the same embeddings, loss and parameter gradients (dropout off via
  `model.dropout=0`, training mode so BatchNorm uses batch statistics), in float64 and within a rounding bound
  derived from float64's epsilon and the longest reduction; the script exits with status 1 otherwise.
- "time": median seconds per step after warm-up, both forms timed in this same process, and their ratio.
- "peak memory": extra peak resident set size of a fresh child process running only that form, over the child's
  own baseline once its model and inputs are built (ru_maxrss), and the ratio of the two.
- the pooling multiply-add counts show why the order of products matters: attending over the C-channel patches
  with queries pulled back into patch space costs F*N*P*C*2, projecting keys and values for every patch costs
  F*P*C*D*2 (+ F*N*P*D*2 for the attention).
- last, the head's inference throughput on one long (2,000-frame) video, pooled chunk by chunk.
Timings on a shared machine are noisy; the ratios are measured within one run.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from mvformer.model.backbone import FrozenBackbone
from mvformer.config import load_config
from mvformer.losses.scl import sequence_contrastive_loss
from mvformer.model.mvformer import MVFormer, build_model
from mvformer.model.temporal import sinusoidal_time_encoding

SHAPES = {  # name: (patches per frame P, patch channels C, CLS channels)
    "ViT-B/8": (784, 2304, 768),
    "ViT-S/16": (196, 1152, 384),
}
TARGETS = {"ViT-B/8": (10.0, 0.5), "ViT-S/16": (3.0, None)}  # (min speed-up, max memory ratio fast/slow)
VIEWS = 2
PADDED_FRAMES = 6  # the last frames of each view are padding (a video shorter than the clip)
SLOW_STEP_LIMIT_S = 10.0
INFERENCE_FRAMES = 2000
INFERENCE_CHUNK = 256
ROUNDING_DEPTH = 32  # reductions chained from the features to the loss and back to a gradient (about 20, rounded up)


# ---------------------------------------------------------------- model and inputs


class FeatureStub(FrozenBackbone):
    """A backbone that only declares its feature widths; the benchmark feeds features directly."""

    def __init__(self, patch_dim: int, cls_dim: int, num_patches: int):
        super().__init__(image_size=224)
        self.patch_dim, self.cls_dim = patch_dim, cls_dim
        side = int(num_patches**0.5)
        self.grid = (side, side)
        self._freeze()

    def _encode(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise RuntimeError("the benchmark passes backbone features, never frames")


PENN = load_config("penn_action")  # the loss, optimiser and clip settings of every step here


def penn_model(shape: str, overrides: tuple[str, ...] = ()) -> MVFormer:
    """The Penn Action model (head and projection) for the feature widths of `shape`, seeded."""
    num_patches, patch_dim, cls_dim = SHAPES[shape]
    torch.manual_seed(0)
    config = load_config("penn_action", list(overrides))
    model = config.model
    assert (model.pooling, model.token_id, model.token_reduction, model.time_encoding) == \
        ("lstp", "pooling", "first", "sinusoidal"), "straightforward_embed covers the Penn Action head only"
    return build_model(config, FeatureStub(patch_dim, cls_dim, num_patches))


def build_inputs(shape: str, clip_len: int) -> dict:
    """Random backbone features and the SCL bookkeeping of one video seen in 2 views."""
    num_patches, patch_dim, cls_dim = SHAPES[shape]
    generator = torch.Generator().manual_seed(1)
    patches = torch.randn(VIEWS, clip_len, num_patches, patch_dim, generator=generator)  # (2, T, P, C)
    cls = torch.randn(VIEWS, clip_len, cls_dim, generator=generator)  # (2, T, C_cls)
    masks = torch.ones(1, VIEWS, clip_len)  # (1, 2, T)
    masks[..., clip_len - PADDED_FRAMES:] = 0
    seq_len = clip_len - PADDED_FRAMES
    steps = torch.stack([torch.sort(torch.randint(0, seq_len, (clip_len,), generator=generator)).values
                         for _ in range(VIEWS)])[None]  # (1, 2, T) frame indices in the source video
    seq_lens = torch.full((1, VIEWS), seq_len)  # (1, 2)
    return {"patches": patches, "cls": cls, "masks": masks, "steps": steps, "seq_lens": seq_lens}


# ---------------------------------------------------------------- the straightforward form


def _dropout(x: torch.Tensor, module: nn.Dropout) -> torch.Tensor:
    return F.dropout(x, module.p, module.training)


def _batch_norm(x: torch.Tensor, bn: nn.BatchNorm1d) -> torch.Tensor:
    """BatchNorm over the rows of x (batch statistics in training mode; running stats left untouched)."""
    if bn.training:
        return F.batch_norm(x, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)


def _linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    return x @ layer.weight.T + layer.bias


def _softmax_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attend: torch.Tensor | None = None) -> torch.Tensor:
    """(..., S_q, d), (..., S_k, d), (..., S_k, d_v) -> (..., S_q, d_v); attend (S_k,) bool masks keys."""
    scores = query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5  # (..., S_q, S_k)
    if attend is not None:
        scores = scores.masked_fill(~attend, float("-inf"))
    return scores.softmax(dim=-1) @ value


def _pool_video(pool: nn.Module, patches: torch.Tensor) -> torch.Tensor:
    """patches (T, P, C) -> entity tokens (T, N, D): keys and values of every patch, then attention."""
    keys = _linear(patches, pool.key)  # (T, P, D)
    values = _linear(patches, pool.value)  # (T, P, D)
    return _softmax_attention(pool.query_vectors(), keys, values)  # (N, D) x (T, P, D) -> (T, N, D)


def _encoder_layer(layer: nn.Module, x: torch.Tensor, attend: torch.Tensor | None) -> torch.Tensor:
    """One pre-norm layer on one video, x (S, H), attend (S,) bool."""
    length, dim = x.shape
    heads = layer.num_heads
    normed = F.layer_norm(x, (dim,), layer.attn_norm.weight, layer.attn_norm.bias, layer.attn_norm.eps)
    qkv = _linear(normed, layer.qkv).view(length, 3, heads, dim // heads).permute(1, 2, 0, 3)  # (3, heads, S, d)
    attended = _softmax_attention(qkv[0], qkv[1], qkv[2], attend)  # (heads, S, d)
    x = x + _dropout(_linear(attended.transpose(0, 1).reshape(length, dim), layer.out), layer.dropout)
    normed = F.layer_norm(x, (dim,), layer.ff_norm.weight, layer.ff_norm.bias, layer.ff_norm.eps)
    hidden = torch.relu(_linear(normed, layer.ff[0]))
    return x + _dropout(_linear(hidden, layer.ff[2]), layer.dropout)


def straightforward_embed(model: MVFormer, patches: torch.Tensor, cls: torch.Tensor,
                          masks: torch.Tensor | None = None, project: bool = True) -> torch.Tensor:
    """Same result as `model.embed_features(patches, cls, masks, project)`, the published way, same parameters.

    patches (B, T, P, C), cls (B, T, C_cls) (unused by LSTP), masks (B, T) -> (B, T, E) L2-normalised.
    """
    head = model.head
    batch, frames = patches.shape[:2]
    num_tokens = head.num_tokens
    tokens = torch.stack([_pool_video(head.pooling, patches[b]) for b in range(batch)])  # (B, T, N, D)
    ids = torch.eye(num_tokens).expand(batch, frames, -1, -1)  # (B, T, N, N) one-hot token ids
    x = torch.cat([tokens, ids], dim=-1).reshape(batch * frames * num_tokens, -1)  # (B*T*N, D + N)
    fc = list(head.fc)
    for drop, linear, bn in zip(fc[0::4], fc[1::4], fc[2::4]):  # Dropout, Linear, BatchNorm, ReLU
        x = torch.relu(_batch_norm(_linear(_dropout(x, drop), linear), bn))  # BN over the whole batch
    x = _linear(x, head.to_hidden).view(batch, frames, num_tokens, -1)  # (B, T, N, H)
    encoder = head.encoder
    time_code = sinusoidal_time_encoding(frames, encoder.dim, encoder.train_len)  # (T, H)
    outputs = []
    for b in range(batch):
        video = _dropout(x[b] + time_code[:, None, :], encoder.dropout).reshape(frames * num_tokens, -1)  # (T*N, H)
        attend = None if masks is None else (masks[b] > 0).repeat_interleave(num_tokens)  # (T*N,)
        for layer in encoder.layers:
            video = _encoder_layer(layer, video, attend)
        outputs.append(_linear(video.view(frames, num_tokens, -1)[:, 0], head.embed))  # first token -> (T, E)
    embs = torch.stack(outputs)  # (B, T, E)
    if project:
        net = model.projection.net  # Linear, BatchNorm, ReLU, Linear
        flat = torch.relu(_batch_norm(_linear(embs.reshape(batch * frames, -1), net[0]), net[1]))
        embs = _linear(flat, net[3]).view(batch, frames, -1)
    return F.normalize(embs, dim=-1)


# ---------------------------------------------------------------- one training step


def embed(form: str, model: MVFormer, inputs: dict) -> torch.Tensor:
    """(2, T, E) projected, L2-normalised embeddings of the two views by the fast or the straightforward form."""
    masks = inputs["masks"].flatten(0, 1)  # (2, T)
    if form == "fast":
        return model.embed_features(inputs["patches"], inputs["cls"], masks, project=True)
    return straightforward_embed(model, inputs["patches"], inputs["cls"], masks, project=True)


def loss_of(model: MVFormer, embs: torch.Tensor, inputs: dict) -> torch.Tensor:
    cfg = PENN.loss
    embs = embs.view(1, VIEWS, embs.shape[1], -1)  # (1, 2, T, E)
    return sequence_contrastive_loss(embs, inputs["steps"], inputs["seq_lens"], inputs["masks"],
                                     cfg.temperature, cfg.variance)


def make_optimizer(model: MVFormer) -> torch.optim.Optimizer:
    train = PENN.train
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=train.lr,
                            weight_decay=train.weight_decay)


def train_step(form: str, model: MVFormer, optimizer: torch.optim.Optimizer, inputs: dict) -> float:
    """Forward, SCL, backward, clipping, Adam: the training loop's step minus the backbone."""
    loss = loss_of(model, embed(form, model, inputs), inputs)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), PENN.train.grad_clip)
    optimizer.step()
    return loss.item()


# ---------------------------------------------------------------- check, time, memory


def rounding_tolerance(dtype: torch.dtype, longest_reduction: int) -> float:
    """Relative rounding bound for two orderings of the same float computation.

    A sum of n terms carries a relative error of at most n * eps (Higham's gamma_n); the head chains at most
    ROUNDING_DEPTH such reductions from the features to the loss and back to a gradient. A real difference
    between the two forms (a missing term, a wrong mask) moves results by 1e-3 or more, far above this bound.
    """
    return torch.finfo(dtype).eps * longest_reduction * ROUNDING_DEPTH


def check_same(shape: str, inputs: dict) -> None:
    """Both forms: same embeddings, loss and gradients (dropout 0, training mode). Exits 1 if not.

    The claim is that both forms compute the same mathematics, so they are compared in float64, where
    rounding is ~1e-16 and the bound `rounding_tolerance` holds on every CPU and BLAS code path. (In float32
    the two orders differ by up to 1e-4 of a gradient's scale on some CPUs, e.g. with ATEN_CPU_CAPABILITY=
    default, which no fixed tolerance can separate from a small real error.)
    """
    dtype = torch.float64
    model = penn_model(shape, ("model.dropout=0",)).train().to(dtype)
    inputs = {key: value.to(dtype) if value.is_floating_point() else value for key, value in inputs.items()}
    views, frames, num_patches = inputs["patches"].shape[:3]
    tolerance = rounding_tolerance(dtype, views * frames * num_patches)  # the pooling gradient sums every patch
    params = dict((name, p) for name, p in model.named_parameters() if p.requires_grad)
    results = {}
    for form in ("fast", "straightforward"):
        model.zero_grad(set_to_none=True)
        embs = embed(form, model, inputs)
        loss = loss_of(model, embs, inputs)
        loss.backward()
        grads = {name: torch.zeros_like(p) if p.grad is None else p.grad.clone() for name, p in params.items()}
        results[form] = (embs.detach(), loss.detach(), grads)
    (fast_embs, fast_loss, fast_grads), (slow_embs, slow_loss, slow_grads) = results.values()
    # Gradients that are zero in exact arithmetic (biases followed by a softmax or a BatchNorm, the key bias)
    # are rounding noise in both forms: their absolute floor is the bound relative to the largest gradient.
    largest = max(grad.abs().max().item() for grad in slow_grads.values())
    try:
        torch.testing.assert_close(fast_embs, slow_embs, atol=tolerance, rtol=0)  # unit vectors
        torch.testing.assert_close(fast_loss, slow_loss, atol=0, rtol=tolerance)
        for name in params:
            torch.testing.assert_close(fast_grads[name], slow_grads[name], atol=tolerance * largest, rtol=0,
                                       msg=lambda m, n=name: f"gradient of {n}: {m}")
    except AssertionError as error:
        print(f"  check FAILED: {error}")
        sys.exit(1)
    worst = max((fast_grads[n] - slow_grads[n]).abs().max().item() for n in params) / largest
    print(f"  check (float64): same outputs and gradients (loss {fast_loss.item():.12f} vs {slow_loss.item():.12f}, "
          f"max |embedding diff| {(fast_embs - slow_embs).abs().max().item():.1e}; {len(params)} parameter "
          f"tensors, worst gradient diff {worst:.1e} of the largest gradient; bound {tolerance:.1e})")


def time_form(form: str, model: MVFormer, inputs: dict) -> tuple[float, str]:
    """Median seconds per step after warm-up; fewer steps when a step takes over SLOW_STEP_LIMIT_S."""
    optimizer = make_optimizer(model)
    start = time.perf_counter()
    train_step(form, model, optimizer, inputs)
    first = time.perf_counter() - start
    warmups, timed = (0, 3) if first > SLOW_STEP_LIMIT_S else (1, 5)
    for _ in range(warmups):
        train_step(form, model, optimizer, inputs)
    times = []
    for _ in range(timed):
        start = time.perf_counter()
        train_step(form, model, optimizer, inputs)
        times.append(time.perf_counter() - start)
    note = f"median of {timed} after {warmups + 1} warm-up"
    if first > SLOW_STEP_LIMIT_S:
        note += f" (first step {first:.1f} s > {SLOW_STEP_LIMIT_S:.0f} s, so fewer steps)"
    return statistics.median(times), note


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def child_memory(form: str, shape: str) -> None:
    """In a fresh process: extra peak RSS of 2 training steps of `form` over the built model and inputs."""
    model = penn_model(shape).train()
    inputs = build_inputs(shape, PENN.data.clip_len)
    optimizer = make_optimizer(model)
    gc.collect()
    baseline = peak_rss_mib()
    for _ in range(2):
        train_step(form, model, optimizer, inputs)
    print(json.dumps({"baseline_mib": baseline, "extra_mib": peak_rss_mib() - baseline}))


def child_inference() -> None:
    """In a fresh process: head-only throughput on one long ViT-S/16 video, pooled chunk by chunk."""
    shape = "ViT-S/16"
    model = penn_model(shape).eval()
    num_patches, patch_dim, cls_dim = SHAPES[shape]
    generator = torch.Generator().manual_seed(2)
    chunk_patches = torch.randn(1, INFERENCE_CHUNK, num_patches, patch_dim, generator=generator)  # (1, c, P, C)
    chunk_cls = torch.randn(1, INFERENCE_CHUNK, cls_dim, generator=generator)  # (1, c, C_cls)
    gc.collect()
    baseline = peak_rss_mib()
    with torch.no_grad():
        start = time.perf_counter()
        tokens = []
        for begin in range(0, INFERENCE_FRAMES, INFERENCE_CHUNK):
            size = min(INFERENCE_CHUNK, INFERENCE_FRAMES - begin)  # one chunk of "backbone output", reused
            tokens.append(model.head.pooled_tokens(chunk_patches[:, :size], chunk_cls[:, :size]))  # (1, c, N, D)
        pooled = time.perf_counter()
        embs = F.normalize(model.head.encode_tokens(torch.cat(tokens, dim=1)), dim=-1)[0]  # (L, E)
        end = time.perf_counter()
    assert embs.shape == (INFERENCE_FRAMES, model.model_cfg.embedding_size)
    print(json.dumps({"pool_s": pooled - start, "encode_s": end - pooled, "total_s": end - start,
                      "extra_mib": peak_rss_mib() - baseline}))


def run_child(*args: str) -> dict:
    """Run this script with `--child args` in a fresh interpreter; its last stdout line is JSON."""
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"child {args} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- report


def pooling_macs(frames: int, tokens: int, num_patches: int, channels: int, dim: int) -> tuple[int, int]:
    """Forward multiply-adds of the pooling: (fast order, keys and values of every patch)."""
    fast = frames * tokens * num_patches * channels * 2  # scores q W_k . x and the weighted sum of x
    naive = frames * num_patches * channels * dim * 2 + frames * tokens * num_patches * dim * 2
    return fast, naive


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def benchmark_shape(shape: str, memory: dict) -> None:
    """Check, time both forms here; `memory` holds the children's results, measured earlier."""
    num_patches, patch_dim, _ = SHAPES[shape]
    print(f"\n== {shape}: patches (2, 80, {num_patches}, {patch_dim}) ==")
    model = penn_model(shape).train()
    inputs = build_inputs(shape, PENN.data.clip_len)
    check_same(shape, inputs)

    seconds = {}
    for form in ("fast", "straightforward"):
        seconds[form], note = time_form(form, model, inputs)
        print(f"  time {form:>15}: {seconds[form]:8.3f} s/step  ({note})")
    speedup = seconds["straightforward"] / seconds["fast"]
    min_speedup, max_memory = TARGETS[shape]
    print(f"  speed-up: {speedup:.1f}x  (target >= {min_speedup:.0f}x: {verdict(speedup >= min_speedup)})")
    del model, inputs
    gc.collect()

    for form, result in memory.items():
        print(f"  peak memory {form:>15}: {result['extra_mib']:8.0f} MiB over a baseline of "
              f"{result['baseline_mib']:.0f} MiB (model + inputs, fresh process)")
    ratio = memory["fast"]["extra_mib"] / memory["straightforward"]["extra_mib"]
    target = "no target" if max_memory is None else \
        f"target <= {max_memory:.1f}: {verdict(ratio <= max_memory)}"
    print(f"  memory fast / straightforward: {ratio:.2f}  ({target})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_memory(*args.child[1:]) if args.child[0] == "memory" else child_inference()
        return

    print(f"MV-Former head training step, Penn Action config, backbone excluded; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads.")
    print("Timings are noisy (another process may share the CPU); each ratio is measured within this run.")
    frames, tokens, dim = VIEWS * 80, 3, 384
    print(f"\nPooling forward multiply-adds per step (F={frames} frames, N={tokens}, D={dim}):")
    for shape, (num_patches, channels, _) in SHAPES.items():
        fast, naive = pooling_macs(frames, tokens, num_patches, channels, dim)
        print(f"  {shape:>8} (P={num_patches}, C={channels}): fast F*N*P*C*2 = {fast / 1e9:.2f} G, "
              f"straightforward F*P*C*D*2 + F*N*P*D*2 = {naive / 1e9:.1f} G  ({naive / fast:.0f}x)")

    # The children run first, while this process is small: Linux carries the parent's peak RSS at fork over
    # into a child's ru_maxrss, which would otherwise hide the child's own peak.
    memory = {shape: {form: run_child("memory", form, shape) for form in ("fast", "straightforward")}
              for shape in SHAPES}
    result = run_child("inference")
    for shape in SHAPES:
        benchmark_shape(shape, memory[shape])

    print(f"\n== Inference, head only (backbone excluded): one {INFERENCE_FRAMES}-frame ViT-S/16 video, "
          f"pooled in chunks of {INFERENCE_CHUNK} ==")
    print(f"  pooling {result['pool_s']:.2f} s + temporal encoder {result['encode_s']:.2f} s = "
          f"{result['total_s']:.2f} s  ->  {INFERENCE_FRAMES / result['total_s']:.0f} frames/s")
    print(f"  peak memory: {result['extra_mib']:.0f} MiB over the model and one chunk of features (fresh process)")


if __name__ == "__main__":
    main()
