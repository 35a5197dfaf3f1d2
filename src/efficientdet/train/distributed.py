"""``torchrun`` support for training: data sharding (the process-group helpers live in
:mod:`efficientdet.distributed` and are re-exported here).

The epoch's global order is built identically on every rank (it depends only on the seed and the
epoch); rank ``r`` of ``W`` takes the ``r``-th contiguous slice of each global batch, so the union
of the per-rank batches is exactly the single-process batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from ..distributed import all_reduce, barrier, cleanup, env_world, init_distributed, is_main, world_size


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed that depends only on ``(seed, epoch)``."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)]).generate_state(2, np.uint64)[0] >> 1)


class EpochBatchSampler(Sampler):
    """Batches of ``(index, augmentation seed)`` for one process; epoch ``k``'s order depends only on ``(seed, k)``.

    Each epoch is a permutation of the data set cut into ``len(self)`` global batches of
    ``global_batch`` images (the incomplete last batch is dropped); this rank yields its slice
    ``[rank * b, (rank + 1) * b)`` of each, ``b = global_batch / world``. :meth:`set_epoch` chooses the
    epoch and the first batch (to resume mid-epoch).
    """

    def __init__(self, length: int, global_batch: int, seed: int = 0, rank: int = 0, world: int = 1,
                 shuffle: bool = True) -> None:
        if global_batch % world:
            raise ValueError(f"batch size {global_batch} is not divisible by the {world} processes")
        self.length, self.global_batch, self.seed = int(length), int(global_batch), int(seed)
        self.rank, self.world, self.shuffle = int(rank), int(world), shuffle
        self.local_batch = global_batch // world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start_batch)

    def __len__(self) -> int:
        return max(0, self.length // self.global_batch - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator()
        g.manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.length, generator=g) if self.shuffle else torch.arange(self.length)
        seeds = torch.randint(0, 2**62, (self.length,), generator=g)
        for b in range(self.start, self.length // self.global_batch):
            lo = b * self.global_batch + self.rank * self.local_batch
            yield list(zip(order[lo : lo + self.local_batch].tolist(), seeds[lo : lo + self.local_batch].tolist()))


__all__ = ["EpochBatchSampler", "all_reduce", "barrier", "cleanup", "env_world", "epoch_seed", "init_distributed",
           "is_main", "world_size"]
