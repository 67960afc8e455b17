"""Training in several processes through torchrun: the process group, cross-rank BatchNorm, collectives.

`torchrun --nproc_per_node N -m mvformer train CONFIG` sets RANK, WORLD_SIZE and LOCAL_RANK; without them
everything here degrades to the single-process case, so the training loop has one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from mvformer.errors import MVFormerError


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> Ranks:
    """Join the process group torchrun describes in the environment (NCCL on GPUs, gloo on CPUs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Ranks()
    ranks = Ranks(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(ranks.local_rank)
        dist.init_process_group(backend, rank=ranks.rank, world_size=world_size)
    return ranks


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def process_device(device: torch.device, ranks: Ranks) -> torch.device:
    """One GPU per process on its node; the CPU is shared."""
    if device.type == "cuda" and ranks.distributed:
        return torch.device("cuda", ranks.local_rank)
    return device


class _SumOverRanks(torch.autograd.Function):
    """A differentiable all-reduce: y = sum of x over ranks; the gradient of each x is the sum of y's gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        total = x.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class CrossRankBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics span the batches of all ranks, on any device.

    nn.SyncBatchNorm does this on GPUs only; this form serves gloo on CPUs. Sums and squared sums go through a
    differentiable all-reduce, so gradients match one process holding the whole global batch.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (M, C)
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        count = torch.full((1,), x.shape[0], dtype=x.dtype, device=x.device)
        totals = _SumOverRanks.apply(torch.cat([x.sum(0), (x * x).sum(0), count]))  # (2C + 1,)
        num = totals[-1]
        mean = totals[:channels] / num  # (C,)
        var = totals[channels:2 * channels] / num - mean * mean  # biased, as BatchNorm normalises
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * num / (num - 1).clamp(min=1), self.momentum)
        normalised = (x - mean) * torch.rsqrt(var + self.eps)
        return normalised * self.weight + self.bias


def synchronise_batch_norm(module: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm1d of `module` take its statistics over all ranks (in place; returns `module`)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm1d:
            synced = CrossRankBatchNorm1d(child.num_features, child.eps, child.momentum, child.affine,
                                          child.track_running_stats)
            synced.load_state_dict(child.state_dict())
            setattr(module, name, synced.to(device))
        else:
            synchronise_batch_norm(child, device)
    return module


def sum_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The sum of `value` over all ranks (itself in one process); not differentiable."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on at least one."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return bool(flag)  # one process: no tensor on the device to read back, so no synchronisation
    return bool(sum_over_ranks(torch.tensor(float(flag), device=device)) > 0)


def gather_objects(value, ranks: Ranks) -> list:
    """`value` of every rank, in rank order (a one-element list in one process)."""
    if not ranks.distributed:
        return [value]
    gathered = [None] * ranks.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def check_batch_divides(batch_size: int, ranks: Ranks) -> int:
    """Videos per rank in a global batch of `batch_size`."""
    if batch_size % ranks.world_size:
        raise MVFormerError(f"train.batch_size ({batch_size}) is the global batch and must be divisible by the "
                            f"number of processes ({ranks.world_size})")
    return batch_size // ranks.world_size
