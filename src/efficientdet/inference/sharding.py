"""``predict`` and ``eval`` over several processes: ``torchrun --nproc-per-node N [--nnodes M] -m efficientdet ...``.

Each process takes one contiguous slice of the inputs (:func:`shard`, in input order: rank ``r`` of
``W`` gets items ``[r * n // W, (r + 1) * n // W)``), runs its own detector on them and writes its
own annotated images; the results (JSON records, counts) are gathered in rank order on rank 0, which
writes the one results file / computes the metrics. Concatenated in rank order the slices are the
input order again, so the merged output equals a single process's.

The process group is joined only when ``WORLD_SIZE`` > 1 (gloo on the CPU, nccl on CUDA), so a
single process imports no ``torch.distributed``. Each process's onnxruntime / PyTorch threads default
to its share of the machine's cores (:func:`threads_per_process`). Annotated images go to the
``--out`` folder each process sees: with several nodes, use a shared file system.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def launched() -> bool:
    """Whether this process is one of several started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join(device: str = "cpu") -> tuple[int, int]:
    """``(rank, world size)``; joins torchrun's process group when launched by it (else ``(0, 1)``)."""
    if not launched():
        return 0, 1
    import torch.distributed as dist

    from ..distributed import init_distributed

    init_distributed("cuda" if str(device).startswith("cuda") else "cpu")
    return dist.get_rank(), dist.get_world_size()


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """Rank ``rank``'s contiguous slice of ``items`` (slices in rank order concatenate to ``items``)."""
    n = len(items)
    return list(items[rank * n // world : (rank + 1) * n // world])


def gather(value: Any, world: int) -> list[Any]:
    """Every rank's ``value`` in rank order (any picklable object); ``[value]`` in a single process."""
    if world <= 1:
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, value)
    return out


def leave(world: int) -> None:
    """Wait for every rank, then leave the process group (no-op in a single process)."""
    if world <= 1:
        return
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


def rank_zero_first(rank: int, world: int, build: Callable[[], T]) -> T:
    """``build()`` on rank 0 first, then on the other ranks (a barrier between; just ``build()`` in one process).

    Rank 0 writes the cached ONNX export and, with ``--precision auto``, measures and remembers the engine
    (:mod:`.bf16_probe`); the other ranks then read both instead of exporting the same file at the same time
    or measuring on their own, so every process runs the same engine and precision (on one node; with
    several nodes, the cache folder, ``$EFFICIENTDET_CACHE``, should be shared too)."""
    if world <= 1:
        return build()
    import torch.distributed as dist

    if rank == 0:
        built = build()
        dist.barrier()
        return built
    dist.barrier()
    return build()


def threads_per_process() -> int | None:
    """This process's share of the CPU cores under torchrun (``None`` = the runtime's default)."""
    if not launched():
        return None
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    return max(1, usable_cpus() // max(local, 1))


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under ``taskset`` or a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)
