"""What the CUDA path needs and CPU tests cannot show: half-precision training with the gradient scaler, SyncBatchNorm
and DDP in an NCCL group, pinned non-blocking transfers, the backbone in half precision, augmentation and evaluation
embeddings on the GPU. Marked `cuda` and skipped without a GPU; `python benchmarks/gpu_check.py` runs them.

Tolerances come from the arithmetic, not from trial: a half-precision result against fp32 may differ by the dtype's
epsilon for every rounding on its path; an fp32 result on the GPU against the CPU's by the probabilistic rounding
bound of its longest sum, eps * sqrt(n) (Higham and Mary, 2019) for each chained reduction; augmented views by a
small fraction of one grey level of their uint8 input.
"""

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from mvformer.checkpoint import load_checkpoint
from mvformer.config import AugmentConfig, load_config
from mvformer.data.datasets import VideoDataset
from mvformer.data.synthetic import generate_pouring_dataset
from mvformer.data.transforms import augment_views
from mvformer.losses.scl import sequence_contrastive_loss
from mvformer.model.backbone import build_backbone
from mvformer.model.mvformer import build_model
from mvformer.runtime import random_states, restore_random_states
from mvformer.train.clips import Batch, TrainingClips, collate_clips
from mvformer.train.distributed import synchronise_batch_norm
from mvformer.train.loop import train
from mvformer.train.objectives import TrainStep

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = torch.device("cuda")
ROUNDINGS_PER_BLOCK = 6  # casts to half precision in one ViT block under autocast: qkv, scores, values, out, MLP x2
CHAINED_REDUCTIONS = 32  # reductions chained from the input to an embedding (layers x sums per layer, rounded up)
GREY_LEVEL = 1 / 255


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return generate_pouring_dataset(tmp_path_factory.mktemp("pouring"), num_train=6, num_val=3, size=64,
                                    min_frames=24, max_frames=40, seed=3)


@pytest.fixture
def no_tf32():
    """fp32 references in true fp32: cuDNN's convolutions may use TF32 (10-bit mantissa) by default."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def one_rank_nccl_group(tmp_path):
    """An NCCL process group of this process alone (a file store: no port to find)."""
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def demo_config(root, out_dir, *extra):
    return load_config("demo", [f"data.root={root}", f"train.output_dir={out_dir}", "train.device=cuda",
                                "data.clip_len=16", "train.batch_size=2", "train.epochs=3", "train.eval_every=1000",
                                "data.feature_cache=none", *extra])


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.double() - reference.double()).norm() / reference.double().norm()).item()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_training_on_cuda_gives_finite_losses_and_keeps_the_scaler(data_root, tmp_path, precision):
    result = train(demo_config(data_root, tmp_path / "run", f"train.precision={precision}"))
    records = map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
    losses = [record["loss"] for record in records if "loss" in record]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses), losses
    assert result.final_metrics is not None  # training ended with an evaluation on the GPU
    scaler = load_checkpoint(tmp_path / "run")["scaler"]
    assert (scaler["scale"] > 0) if precision == "fp16" else scaler == {}


def test_sync_batch_norm_and_ddp_in_a_one_rank_nccl_group_match_one_process(data_root, one_rank_nccl_group):
    torch.manual_seed(0)
    config = demo_config(data_root, "unused", "model.dropout=0")
    model = build_model(config).to(CUDA).train()
    synced = synchronise_batch_norm(copy.deepcopy(model), CUDA)
    norms = [module for module in synced.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(module, nn.SyncBatchNorm) for module in norms)
    wrapped = DistributedDataParallel(TrainStep(synced, "scl"), device_ids=[CUDA.index or 0])
    generator = torch.Generator().manual_seed(1)
    frames = torch.randn(1, 2, 16, 3, 64, 64, generator=generator).to(CUDA)  # (B, V, T, 3, S, S)
    masks = torch.ones(1, 2, 16, device=CUDA)
    steps = torch.arange(16, device=CUDA).expand(1, 2, 16)
    seq_lens = torch.full((1, 2), 16, device=CUDA)
    batch = Batch(masks=masks, steps=steps, seq_lens=seq_lens, frames=frames)
    gradients = []
    for step_module in (TrainStep(model, "scl"), wrapped):
        embs = step_module(batch)  # (1, 2, T, E)
        sequence_contrastive_loss(embs, steps, seq_lens, masks).backward()
        gradients.append([p.grad for p in step_module.parameters() if p.requires_grad])
    longest_sum = 2 * 16 * 64  # the pooling's gradient sums over every patch of every frame
    tolerance = torch.finfo(torch.float32).eps * math.sqrt(longest_sum) * CHAINED_REDUCTIONS
    for plain, distributed in zip(*gradients):
        torch.testing.assert_close(distributed, plain, rtol=0, atol=tolerance * plain.abs().max().item() + 1e-12)
    total = torch.ones(3, device=CUDA)
    dist.all_reduce(total)
    assert torch.equal(total, torch.ones(3, device=CUDA))


def test_pinned_non_blocking_batches_equal_the_plain_copies(data_root):
    videos = VideoDataset(data_root, "train", size=64)
    clips = TrainingClips(videos, clip_len=16, max_stretch=1.5, seed=0)
    pinned = DataLoader(clips, batch_sampler=[[0, 1], [2, 3]], num_workers=1, collate_fn=collate_clips,
                        pin_memory=True)
    for indices, batch in zip([[0, 1], [2, 3]], pinned):
        plain = collate_clips([clips[index] for index in indices])
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                assert value.is_pinned(), key
                moved = value.to(CUDA, non_blocking=True)
                torch.cuda.current_stream().synchronize()
                assert torch.equal(moved.cpu(), plain[key]), key


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_backbone_in_half_precision_matches_fp32_within_its_rounding(dtype, no_tf32):
    backbone = build_backbone("tiny", [1, 3], image_size=64).to(CUDA)
    frames = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(2)).to(CUDA)
    reference = backbone(frames)
    with torch.autocast("cuda", dtype=dtype):
        halved = backbone(frames)
    bound = torch.finfo(dtype).eps * ROUNDINGS_PER_BLOCK * (max(backbone.blocks) + 1)
    for value, expected in zip(halved, reference):
        assert torch.isfinite(value).all()
        assert relative_error(value, expected) <= bound, (relative_error(value, expected), bound)


def test_augmented_views_on_cuda_equal_the_cpu_ones():
    generator = torch.Generator().manual_seed(4)
    frames = torch.randint(0, 256, (2, 8, 48, 64, 3), dtype=torch.uint8, generator=generator)  # (V, T, H, W, 3)
    draw = [torch.Generator().manual_seed(5)]  # the same draws on the host for both
    on_cpu = augment_views(frames, draw, 32, AugmentConfig())
    draw = [torch.Generator().manual_seed(5)]
    on_cuda = augment_views(frames.to(CUDA), draw, 32, AugmentConfig())
    torch.testing.assert_close(on_cuda.cpu(), on_cpu, rtol=0, atol=GREY_LEVEL / 32)


def test_evaluation_embeddings_on_cuda_equal_the_cpu_ones(data_root, no_tf32):
    torch.manual_seed(0)
    model = build_model(demo_config(data_root, "unused")).eval()
    video = VideoDataset(data_root, "val", size=64).frames(0)  # uint8 (L, 64, 64, 3)
    on_cpu = model.embed_video(model.prepare(video))
    tokens = torch.randn(len(video), model.backbone.num_patches, model.backbone.patch_dim)
    cls = torch.randn(len(video), model.backbone.cls_dim)
    from_tokens_cpu = model.embed_token_chunks([(tokens, cls)])
    model.to(CUDA)
    on_cuda = model.embed_video(model.prepare(video)).cpu()
    from_tokens_cuda = model.embed_token_chunks([(tokens.to(CUDA), cls.to(CUDA))]).cpu()
    longest_sum = model.backbone.num_patches * model.backbone.patch_dim  # the pooling's scores and weighted sums
    tolerance = torch.finfo(torch.float32).eps * math.sqrt(longest_sum) * CHAINED_REDUCTIONS
    torch.testing.assert_close(on_cuda, on_cpu, rtol=0, atol=tolerance)  # unit vectors
    torch.testing.assert_close(from_tokens_cuda, from_tokens_cpu, rtol=0, atol=tolerance)


def test_random_states_round_trip_the_cuda_generator():
    states = random_states()
    first = torch.randn(8, device=CUDA), np.random.rand()
    restore_random_states(states)
    again = torch.randn(8, device=CUDA), np.random.rand()
    assert torch.equal(first[0], again[0]) and first[1] == again[1]
