"""DistributedDataParallel plumbing for `torchrun --nproc_per_node=N -m facto train ...`.

Every helper is a no-op in a plain single process, so the trainer calls them always.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from .data import SeededSampler


def init_from_env() -> bool:
    """Join the process group torchrun describes in the environment; True when distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """Rank 0 logs and stores; every rank trains."""
    return not is_distributed() or dist.get_rank() == 0


def device_for(device: torch.device) -> torch.device:
    """One GPU per process under torchrun (LOCAL_RANK); the device itself otherwise."""
    if is_distributed() and device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return device


def shard_loader(loader: DataLoader, seed: int) -> DataLoader:
    """The same loader with a DistributedSampler (each rank its own shard) when distributed.

    An augmented loader keeps its `SeededSampler`, now over the shard's indices.
    """
    if not is_distributed():
        return loader
    sampler = DistributedSampler(loader.dataset, shuffle=True, seed=seed)
    if isinstance(loader.sampler, SeededSampler):
        sampler = SeededSampler(sampler, loader.sampler.size, loader.sampler.generator)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                      num_workers=loader.num_workers, drop_last=loader.drop_last)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    sampler = loader.sampler
    if isinstance(sampler, SeededSampler):
        sampler = sampler.sampler
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` when distributed (frozen factors are ignored by DDP)."""
    if not is_distributed():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def reduce_mean(loss: float, accuracy: float, device: torch.device) -> tuple[float, float]:
    """Average a step's loss and accuracy over ranks."""
    if not is_distributed():
        return loss, accuracy
    t = torch.tensor([loss, accuracy], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return float(t[0]), float(t[1])


def reduce_sums(loss_sum: float, correct: int, total: int, device: torch.device) -> tuple[float, float]:
    """Mean loss and accuracy (%) from per-rank sums."""
    if is_distributed():
        t = torch.tensor([loss_sum, correct, total], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        loss_sum, correct, total = t.tolist()
    return loss_sum / max(total, 1), 100.0 * correct / max(total, 1)


def shutdown() -> None:
    """Leave the process group cleanly (all ranks meet first), so no rank aborts at exit."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()
