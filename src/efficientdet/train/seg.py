"""The segmentation side of training: reading the splits, the masks of a batch, validation metrics and
the overlay grid. The trainer (:mod:`.trainer`) calls these for ``task`` ``segment`` and
``detect,segment``; everything else (state, step, EMA, AMP, DDP, checkpoints) is shared with detection.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..data.read import require_images
from ..data.segmentation import SegmentationData, read_segmentation
from ..errors import ConfigError

#: validation metrics of a segmentation run, as metrics.csv columns
SEG_METRIC_KEYS = ("mIoU", "pixel_accuracy", "mean_accuracy", "fwIoU")
TASKS = ("detect", "segment", "detect,segment")


def parse_task(task: str) -> tuple[str, ...]:
    """``"detect"``, ``"segment"`` or ``"detect,segment"`` (either order) as a tuple in that order."""
    parts = tuple(sorted({p.strip() for p in str(task).split(",") if p.strip()}))
    if not parts or any(p not in ("detect", "segment") for p in parts):
        raise ConfigError(f"--task {task!r}: use detect, segment or detect,segment")
    return parts


def read_seg_split(images: str | None, annotations: str, names: str | None, split: str, strict: bool,
                   what: str, log: Callable[..., None]) -> SegmentationData:
    """One split (``split`` picks the VOC list for a VOC root) with its load report logged."""
    data = read_segmentation(images, annotations, names=names, split=split, strict=strict)
    report = data.report
    log(f"{what}: {len(data)} images with masks, {data.num_classes} classes ({', '.join(data.class_names[:8])}"
        f"{', ...' if data.num_classes > 8 else ''})" + (f"; {report.total_dropped} skipped" if report.total_dropped
                                                         else ""))
    if report.summary():
        log("\n".join(f"  {line}" for line in report.summary().splitlines()))
    require_images(data, annotations, images)
    return data


def batch_masks(targets: list[dict], device: torch.device) -> torch.Tensor:
    """The (B, S, S) int64 masks of a training batch (255 = ignored)."""
    return torch.stack([t["mask"] for t in targets]).to(device, non_blocking=True).long()


def seg_validate(model: torch.nn.Module, data: SegmentationData, batch_size: int, device: torch.device
                 ) -> dict[str, Any]:
    """mIoU & co. of ``model`` (the EMA weights) on ``data``, as ``efficientdet eval --task segment`` computes them."""
    from ..eval.segmentation import evaluate_segmentation

    return evaluate_segmentation(model, data, batch_size=batch_size, device=device)


def overlay_grid(model: torch.nn.Module, data: SegmentationData, path: Path, device: torch.device,
                 count: int = 8) -> Path:
    """``val_overlays.png``: up to ``count`` validation images, each as ground truth | prediction overlays."""
    from PIL import Image

    from ..images import load_image
    from ..inference.segmenter import Segmenter
    from ..masks import overlay_mask
    from .run_dir import image_grid

    samples = data.samples[:count]
    images = [load_image(s.path) for s in samples]
    preds = Segmenter(model, device=device)(images)
    tiles = []
    for img, s, pred in zip(images, samples, preds):
        gt, pr = overlay_mask(img, s.load_mask()), overlay_mask(img, pred)
        pair = Image.new("RGB", (img.width * 2 + 4, img.height), (255, 255, 255))
        pair.paste(gt, (0, 0))
        pair.paste(pr, (img.width + 4, 0))
        tiles.append(pair)
    return image_grid(tiles, path, cols=2, cell=384)
