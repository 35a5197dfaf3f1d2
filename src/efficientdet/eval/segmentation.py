"""Semantic-segmentation metrics from one confusion matrix over a whole split.

The standard protocol (Pascal VOC, Cityscapes): predictions and ground truth are compared at each
image's original resolution, pixels labelled 255 are ignored, and every metric comes from the
accumulated ``K x K`` confusion matrix ``M[gt, pred]`` (pixel counts):

* per-class IoU = TP / (TP + FP + FN); classes that appear in neither the ground truth nor the
  predictions have no IoU (``None``) and are left out of the mean;
* ``mIoU``: the mean of the defined IoUs;
* ``pixel_accuracy``: ΣTP / Σ pixels;
* ``mean_accuracy``: the mean over classes present in the ground truth of TP / (TP + FN);
* ``fwIoU``: Σ_c (ground-truth pixels of c / all pixels) x IoU_c.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.transforms import IGNORE_INDEX


class ConfusionMatrix:
    """Accumulates ``matrix[gt, pred]`` pixel counts (int64) over ``update`` calls; 255 ignored."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, pred: Any, target: Any) -> None:
        """Add one image (or a batch): integer arrays/tensors of the same shape, class indices."""
        pred = np.asarray(pred.cpu() if hasattr(pred, "cpu") else pred).astype(np.int64, copy=False)
        target = np.asarray(target.cpu() if hasattr(target, "cpu") else target).astype(np.int64, copy=False)
        if pred.shape != target.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {target.shape} differ in shape")
        valid = target != self.ignore_index
        k = self.num_classes
        t, p = target[valid], pred[valid]
        if t.size and (t.min() < 0 or t.max() >= k):
            raise ValueError(f"ground-truth value {int(t.max())} outside 0..{k - 1} (255 = ignore)")
        if p.size and (p.min() < 0 or p.max() >= k):
            raise ValueError(f"predicted value {int(p.max())} outside 0..{k - 1}")
        self.matrix += np.bincount(t * k + p, minlength=k * k).reshape(k, k)

    def merge(self, other: ConfusionMatrix) -> None:
        self.matrix += other.matrix

    def compute(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """``{"mIoU", "pixel_accuracy", "mean_accuracy", "fwIoU", "per_class", "pixels"}`` (see the module
        docstring); ``per_class[name] = {"IoU", "accuracy", "pixels"}`` with ``None`` where undefined."""
        return metrics_from_confusion(self.matrix, class_names)


def metrics_from_confusion(matrix: np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The metrics of a ``matrix[gt, pred]`` confusion matrix (see the module docstring)."""
    m = np.asarray(matrix, dtype=np.float64)
    k = m.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    tp = np.diag(m)
    gt = m.sum(axis=1)
    pred = m.sum(axis=0)
    union = gt + pred - tp
    total = m.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    defined = ~np.isnan(iou)
    present = gt > 0
    per_class = {
        names[c]: {
            "IoU": None if np.isnan(iou[c]) else float(iou[c]),
            "accuracy": None if np.isnan(acc[c]) else float(acc[c]),
            "pixels": int(gt[c]),
        }
        for c in range(k)
    }
    return {
        "mIoU": float(iou[defined].mean()) if defined.any() else 0.0,
        "pixel_accuracy": float(tp.sum() / total) if total else 0.0,
        "mean_accuracy": float(acc[present].mean()) if present.any() else 0.0,
        "fwIoU": float((gt[present] / total * iou[present]).sum()) if total else 0.0,
        "per_class": per_class,
        "pixels": int(total),
    }


def format_seg_metrics(metrics: dict[str, Any]) -> str:
    """A short table: the four summary numbers, then IoU / accuracy / pixels per class."""
    lines = [f"mIoU {metrics['mIoU']:.4f}  pixel accuracy {metrics['pixel_accuracy']:.4f}  "
             f"mean accuracy {metrics['mean_accuracy']:.4f}  fwIoU {metrics['fwIoU']:.4f}"]
    width = max([5] + [len(n) for n in metrics["per_class"]])
    lines.append(f"{'class':<{width}}  {'IoU':>7}  {'acc':>7}  {'pixels':>12}")
    for name, row in metrics["per_class"].items():
        iou = "-" if row["IoU"] is None else f"{row['IoU']:.4f}"
        acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
        lines.append(f"{name:<{width}}  {iou:>7}  {acc:>7}  {row['pixels']:>12,}")
    return "\n".join(lines)


def evaluate_segmentation(
    model: Any,
    data: Any,
    batch_size: int = 8,
    device: Any = None,
    image_size: int | None = None,
    save_dir: str | Path | None = None,
    on_masks: Callable[[list[Any], list[np.ndarray]], None] | None = None,
) -> dict[str, Any]:
    """mIoU & co. of ``model`` on a :class:`~efficientdet.data.segmentation.SegmentationData` split.

    ``model``: an EfficientDet that segments, or a ready segmenter (``images -> [(H, W) uint8 masks]`` with a
    ``config``, e.g. :class:`efficientdet.deploy.OnnxSegmenter` for an exported file).
    Each prediction is made at the original resolution (see
    :func:`~efficientdet.inference.segmenter.logits_to_masks`) and added to one confusion matrix;
    ``save_dir`` also writes each predicted mask as ``<stem>.png`` (palette); ``on_masks(samples, masks)``
    sees every batch (e.g. for overlay plots).
    """
    from ..errors import ConfigError
    from ..images import load_image
    from ..masks import save_palette_mask

    if model.config.seg_classes != data.num_classes:
        raise ConfigError(f"the model predicts {model.config.seg_classes} segmentation classes but the data has "
                          f"{data.num_classes} ({', '.join(data.class_names[:6])}...); pass the matching --names "
                          "or weights")
    module = hasattr(model, "parameters")  # a PyTorch model, else a ready segmenter (an exported file)
    was_training = model.training if module else False
    if module:
        from ..inference.segmenter import Segmenter

        device = device or next(model.parameters()).device
        segmenter = Segmenter(model, device=device, batch_size=batch_size, image_size=image_size)
    else:
        segmenter = model
    cm = ConfusionMatrix(data.num_classes)
    try:
        for start in range(0, len(data.samples), batch_size):
            samples = data.samples[start : start + batch_size]
            masks = segmenter([load_image(s.path) for s in samples], batch_size=batch_size)
            for s, pred in zip(samples, masks):
                gt = s.load_mask()
                if pred.shape != gt.shape:  # the image file changed since reading: score at the mask's size
                    pred = np.asarray(Image.fromarray(pred).resize(gt.shape[::-1], Image.NEAREST))
                cm.update(pred, gt)
                if save_dir is not None:
                    save_palette_mask(pred, Path(save_dir) / f"{Path(s.file_name).stem}.png")
            if on_masks is not None:
                on_masks(samples, masks)
    finally:
        if module:
            model.train(was_training)
    return cm.compute(data.class_names)


def score_mask_folder(predictions: str | Path, data: Any) -> dict[str, Any]:
    """Score a folder of predicted PNG masks (``<image stem>.png``, class indices) against ``data``.

    An image in a subfolder of the split (``part1/x.jpg``) may also have its mask at the same relative
    path (``part1/x.png``), as ``predict --masks`` writes it for a folder with subfolders; that path is
    tried first. Raises DataError for a missing or unreadable prediction, or one whose size differs from
    the ground truth (every image of the split must be predicted).
    """
    from ..data.segmentation import read_mask
    from ..errors import DataError

    folder = Path(predictions)
    if not folder.is_dir():
        raise DataError(f"{folder}: predictions folder not found; pass the folder of predicted PNG masks")
    cm = ConfusionMatrix(data.num_classes)
    for s in data.samples:
        path = folder / Path(s.file_name).with_suffix(".png")
        if not path.is_file():
            path = folder / f"{Path(s.file_name).stem}.png"
        if not path.is_file():
            raise DataError(f"{path}: no prediction for {s.file_name}; predict every image of the split")
        pred = read_mask(path)
        gt = s.load_mask()
        if pred.shape != gt.shape:
            raise DataError(f"{path}: prediction is {pred.shape[1]}x{pred.shape[0]} but the ground truth is "
                            f"{gt.shape[1]}x{gt.shape[0]}; predict at the original size")
        bad = pred >= data.num_classes
        if bad.any():
            raise DataError(f"{path}: predicted value {int(pred[bad].max())} but there are {data.num_classes} "
                            "classes; check the class list")
        cm.update(pred, gt)
    return cm.compute(data.class_names)
