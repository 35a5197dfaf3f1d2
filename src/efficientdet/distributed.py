"""``torchrun`` process groups: join from the environment, rank helpers, reductions.

Used by training (:mod:`efficientdet.train.distributed` adds the data sharding) and by sharded
``predict`` / ``eval`` (:mod:`efficientdet.inference.sharding`), so it lives below both.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def env_world() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from torchrun's environment (``0, 0, 1`` without it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_distributed(device_type: str) -> bool:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA); True if joined."""
    _, local_rank, world = env_world()
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return world > 1
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", init_method="env://")
    return True


def is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce(value: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (sum / max / min); identity in a single process."""
    if world_size() > 1:
        dist.all_reduce(value, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return value


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["all_reduce", "barrier", "cleanup", "env_world", "init_distributed", "is_main", "world_size"]
