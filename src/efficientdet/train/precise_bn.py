"""Precise BatchNorm statistics for the weights that are evaluated and saved (the EMA weights).

During training every BatchNorm keeps running averages of its batch statistics with momentum 0.01
(TF's 0.99, as the official recipe). A short run (a few hundred steps) leaves them far from the
statistics of the final weights: after 120 steps 30 % of the initial mean 0 / variance 1 is still in
them, and a segmentation model that fits its training images in train mode predicted background
everywhere in eval mode. The EMA's copies of those buffers lag further. So, before each validation and
the last save, :func:`recompute_bn_statistics` replaces the running statistics of the trained
BatchNorms with the plain average of their batch statistics over a fixed set of training images,
computed with the weights that are evaluated ("precise BN", Wu & Johnson, *Rethinking "Batch" in
BatchNorm*, 2021).

The images are the first ``n`` of an evenly spaced, fixed subset of the training set, letterboxed
without augmentation (as evaluation sees them), so the result is deterministic and uses no random
number generator (a resumed run recomputes exactly what the uninterrupted run did).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..data import DetectionDataset, TrainTransform, collate
from ..data.segmentation import SegmentationData, SegmentationDataset


def trained_batch_norms(model: nn.Module) -> set[str]:
    """Names of the BatchNorm modules of ``model`` that are in training mode (not frozen)."""
    return {name for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats}


def calibration_loader(data: object, count: int, batch_size: int, image_size: int,
                       mean: tuple[float, ...], std: tuple[float, ...]) -> DataLoader:
    """Up to ``count`` training images, evenly spaced over the set, letterboxed to ``image_size`` and
    normalised (no flip, no scale jitter), in batches of ``batch_size``; main process only."""
    n = len(data)  # type: ignore[arg-type]
    count = min(count, n)
    indices = sorted({int(i) for i in np.linspace(0, n - 1, count).round()})
    transform = TrainTransform(image_size, mean, std, scale_range=(1.0, 1.0), hflip=0.0)
    dataset = (SegmentationDataset(data, transform) if isinstance(data, SegmentationData)  # type: ignore[arg-type]
               else DetectionDataset(data, transform))  # type: ignore[arg-type]
    return DataLoader(Subset(dataset, [(i, 0) for i in indices]),  # type: ignore[arg-type]
                      batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate)


@torch.no_grad()
def recompute_bn_statistics(model: nn.Module, batches: Iterable[torch.Tensor], names: set[str] | None = None,
                            channels_last: bool = False) -> int:
    """Set the running mean / variance of the BatchNorms ``names`` (all when ``None``) of ``model`` to the
    average of their batch statistics over ``batches`` (normalised (B, 3, S, S) images).

    Only those BatchNorms run in training mode; everything else (dropout, stochastic depth, frozen
    BatchNorms) stays as it was, and so do the weights. Returns the number of images seen (0 leaves the
    statistics untouched).
    """
    bns = [m for name, m in model.named_modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
           and (names is None or name in names)]
    if not bns:
        return 0
    device = next(model.parameters()).device
    modes = {m: m.training for m in model.modules()}
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average of the batch statistics
        m.train()
    seen = 0
    try:
        for images in batches:
            images = images.to(device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            model(images)
            seen += images.shape[0]
    finally:
        for m, (momentum, mean, var, count) in zip(bns, saved):
            m.momentum = momentum
            if not seen:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
        for m, mode in modes.items():
            m.train(mode)
    return seen
