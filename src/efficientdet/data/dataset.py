"""Torch ``Dataset`` over :class:`DetectionData` and the batch ``collate`` (the loader: ``train/build.py``)."""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..images import load_image
from .records import DetectionData, Sample

Transform = Callable[[Image.Image, dict], tuple[torch.Tensor, dict]]


class DetectionDataset(Dataset):
    """``dataset[i] -> (image (3, S, S) float32, target dict)`` for ``data.samples[i]``.

    Images are read with :func:`efficientdet.images.load_image` (EXIF orientation, any mode). The
    dataset holds only plain, picklable data (paths and numpy arrays, no open files), so it is safe
    in ``DataLoader`` worker processes; all randomness is in ``transform`` and uses torch's RNG.

    Args:
        data: the samples (boxes ``xyxy`` original pixels).
        transform: ``(PIL image, target) -> (tensor, target)``, e.g. ``TrainTransform``; its input target
            holds ``boxes`` (N, 4) float32, ``labels`` (N,) int64,
            ``iscrowd`` (N,) bool and ``image_id``. Items indexed ``(index, seed)`` (as
            :class:`~efficientdet.train.distributed.EpochBatchSampler` does) pass a seeded
            ``generator=`` keyword when the transform takes
            one, else run it under a seeded copy of torch's global RNG.
    """

    def __init__(self, data: DetectionData, transform: Transform) -> None:
        self.data = data
        self.samples: list[Sample] = data.samples
        self.transform = transform
        try:
            self._takes_generator = "generator" in inspect.signature(transform).parameters
        except (TypeError, ValueError):
            self._takes_generator = False

    def __len__(self) -> int:
        return len(self.samples)

    def target(self, index: int) -> dict[str, Any]:
        """The untransformed target of sample ``index`` (original pixels, numpy arrays)."""
        s = self.samples[index]
        return {"boxes": s.boxes, "labels": s.labels, "iscrowd": s.iscrowd, "image_id": s.image_id}

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, dict]:
        """``index`` or ``(index, seed)``: with a seed, the transform gets its own seeded generator."""
        seed = None
        if isinstance(index, tuple):
            index, seed = index
        sample = self.samples[index]
        image = load_image(sample.path)
        target = self.target(index)
        if image.size != (sample.width, sample.height):
            # the file changed since the annotations were read: keep the boxes in its pixels
            sx, sy = image.size[0] / sample.width, image.size[1] / sample.height
            target["boxes"] = sample.boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
        if seed is None:
            return self.transform(image, target)
        if self._takes_generator:
            generator = torch.Generator()
            generator.manual_seed(int(seed))
            return self.transform(image, target, generator=generator)  # type: ignore[call-arg]
        with torch.random.fork_rng(devices=[]):  # a transform using torch's global RNG
            torch.manual_seed(int(seed))
            return self.transform(image, target)


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """``[(image (3, S, S), target), ...] -> (images (B, 3, S, S), [target, ...])``."""
    images = torch.stack([item[0] for item in batch])
    return images, [item[1] for item in batch]


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed python's and numpy's RNGs from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
