"""Data-parallel training over ``torch.distributed`` (launched by ``torchrun``).

Every rank holds a full replica, reads its shard of each global batch, and samples the same
sub-networks (they are a function of (seed, step)). Gradients are averaged across ranks with one
bucketed all-reduce per optimizer step, after the whole sandwich: the DistributedDataParallel
wrapper would all-reduce after each of the N+1 sub-network backward passes (or needs
``no_sync`` bookkeeping around a graph that changes every pass), for the same result.
NCCL on GPU, gloo on CPU; rank 0 alone writes checkpoints and logs.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistEnv:
    """Join the process group torchrun described in the environment (a no-op without torchrun)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistEnv()
    env = DistEnv(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(env.local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return env


def sync_batch_norms(module: nn.Module) -> None:
    """Make every BatchNorm of ``module`` normalise over the global batch (all ranks)."""
    for child in module.modules():
        if hasattr(type(child), "sync_across_ranks"):
            child.sync_across_ranks = True  # type: ignore[attr-defined]


def split_batch_norms(module: nn.Module, splits: int) -> None:
    """Make every BatchNorm of ``module`` normalise ``splits`` interleaved groups of each batch separately
    (Shuffle-BN's per-device statistics, emulated on one device; ``splits=1`` is plain BatchNorm)."""
    for child in module.modules():
        if hasattr(type(child), "batch_splits"):
            child.batch_splits = splits  # type: ignore[attr-defined]


def average_gradients(module: nn.Module, env: DistEnv, bucket_bytes: int = 25 * 2**20) -> None:
    """Average ``.grad`` of every parameter that has one across ranks (identical sets on all ranks)."""
    if not env.enabled:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    bucket: list[torch.Tensor] = []
    size = 0
    for grad in grads:
        bucket.append(grad)
        size += grad.numel() * grad.element_size()
        if size >= bucket_bytes:
            _reduce_bucket(bucket, env.world_size)
            bucket, size = [], 0
    if bucket:
        _reduce_bucket(bucket, env.world_size)


def _reduce_bucket(grads: list[torch.Tensor], world_size: int) -> None:
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def all_gather_rows(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Concatenate a (B, ...) tensor from every rank, in rank order (MoCo's queue keys, Shuffle-BN's images).

    Gathered as contiguous (row-major) copies: a channels-last batch's strides differ from the layout
    the collective writes, so receiving buffers shaped like the input itself would scramble it (or be refused).
    """
    if not env.enabled:
        return tensor
    rows = tensor.contiguous()
    parts = [torch.empty_like(rows, memory_format=torch.contiguous_format) for _ in range(env.world_size)]
    dist.all_gather(parts, rows)
    return torch.cat(parts)


def parameter_digest(module: nn.Module) -> str:
    """SHA-256 of every parameter's bytes: equal on all ranks iff the replicas are in sync."""
    digest = hashlib.sha256()
    for name, param in module.named_parameters():
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def gather_digests(module: nn.Module, env: DistEnv) -> list[str]:
    digest = parameter_digest(module)
    if not env.enabled:
        return [digest]
    gathered: list[str | None] = [None] * env.world_size
    dist.all_gather_object(gathered, digest)
    return [str(d) for d in gathered]


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def shutdown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()
