"""Segmentation metrics: hand-computed confusion matrices and torchmetrics as an independent oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from efficientdet.eval.segmentation import ConfusionMatrix, format_seg_metrics, metrics_from_confusion

GT = np.array([[0, 0, 1], [1, 2, 255]])
PRED = np.array([[0, 1, 1], [1, 1, 0]])


def test_hand_computed_confusion_and_metrics():
    cm = ConfusionMatrix(3)
    cm.update(PRED, GT)
    # (gt, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,1); the 255 pixel is ignored
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [0, 1, 0]]
    m = cm.compute(["bg", "a", "b"])
    # TP (1, 2, 0), GT (2, 2, 1), pred (1, 4, 0) -> union (2, 4, 1) -> IoU (1/2, 1/2, 0)
    assert m["mIoU"] == pytest.approx(1 / 3)
    assert m["pixel_accuracy"] == pytest.approx(3 / 5)
    assert m["mean_accuracy"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert m["fwIoU"] == pytest.approx(2 / 5 * 0.5 + 2 / 5 * 0.5 + 1 / 5 * 0)
    assert m["per_class"]["a"] == {"IoU": 0.5, "accuracy": 1.0, "pixels": 2}
    assert m["pixels"] == 5
    assert "mIoU 0.3333" in format_seg_metrics(m)


def test_absent_class_has_no_iou_and_is_left_out():
    cm = ConfusionMatrix(4)
    cm.update(PRED, GT)
    cm.update(torch.tensor(PRED), torch.tensor(GT))  # tensors work too; counts double
    m = cm.compute()
    assert m["per_class"]["3"] == {"IoU": None, "accuracy": None, "pixels": 0}
    assert m["mIoU"] == pytest.approx(1 / 3) and m["pixels"] == 10
    # a class predicted but absent from the ground truth: IoU 0 counts, accuracy undefined
    m = metrics_from_confusion(np.array([[3, 1], [0, 0]]))
    assert m["per_class"]["1"]["IoU"] == 0.0 and m["per_class"]["1"]["accuracy"] is None
    assert m["mIoU"] == pytest.approx((3 / 4 + 0) / 2) and m["mean_accuracy"] == pytest.approx(3 / 4)


def test_bad_values_raise():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="ground-truth value 7"):
        cm.update(np.zeros((2, 2)), np.full((2, 2), 7))
    with pytest.raises(ValueError, match="predicted value 3"):
        cm.update(np.full((2, 2), 3), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 3)), np.zeros((2, 2)))


def test_matches_torchmetrics_over_several_images():
    rng = np.random.default_rng(0)
    k = 5
    cm = ConfusionMatrix(k)
    jaccard = MulticlassJaccardIndex(k, average=None, ignore_index=255)
    micro = MulticlassAccuracy(k, average="micro", ignore_index=255)
    macro = MulticlassAccuracy(k, average="macro", ignore_index=255)
    for h, w in ((31, 47), (64, 20), (5, 90)):  # different sizes: each image at its own resolution
        gt = rng.integers(0, k, (h, w))
        gt[rng.random((h, w)) < 0.1] = 255
        pred = np.where(rng.random((h, w)) < 0.6, np.where(gt == 255, 0, gt), rng.integers(0, k, (h, w)))
        cm.update(pred, gt)
        for metric in (jaccard, micro, macro):
            metric.update(torch.tensor(pred)[None], torch.tensor(gt)[None])
    m = cm.compute()
    np.testing.assert_allclose([m["per_class"][str(c)]["IoU"] for c in range(k)], jaccard.compute().numpy(),
                               rtol=1e-6)
    assert m["mIoU"] == pytest.approx(float(jaccard.compute().mean()), rel=1e-6)
    assert m["pixel_accuracy"] == pytest.approx(float(micro.compute()), rel=1e-6)
    assert m["mean_accuracy"] == pytest.approx(float(macro.compute()), rel=1e-6)
