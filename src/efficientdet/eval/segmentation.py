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

from collections.abc import Sequence
from typing import Any

import numpy as np

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
