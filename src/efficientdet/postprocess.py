"""Post-processing: head outputs -> detections in original-image pixels.

Official EfficientDet inference: keep the top-k (anchor, class) pairs over all levels (k = 5000),
decode their boxes, clip them to the image, run per-class NMS (IoU 0.5) or Gaussian soft-NMS
(σ = 0.5), drop scores under the threshold, keep the best ``max_det``. Nothing here loops over
anchors in Python; hard NMS runs once for the whole batch (torchvision's ``batched_nms`` with one
group per (image, class)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import batched_nms, box_iou

from . import box_coder


@dataclass(frozen=True)
class PostprocessConfig:
    """Settings of :class:`Postprocessor` (defaults: the official evaluation settings)."""

    score_threshold: float = 0.001
    iou_threshold: float = 0.5
    max_det: int = 100
    topk: int = 5000
    soft_nms: bool = False
    soft_nms_sigma: float = 0.5


def select_topk(cls_logits: torch.Tensor, k: int, min_logit: float | None = None):
    """Top-``k`` (anchor, class) pairs per image from (B, N, C) logits.

    Returns ``(logits (B, k), anchor_idx (B, k), class_idx (B, k))`` sorted by logit, k clipped to N·C.
    """
    b, n, c = cls_logits.shape
    flat = cls_logits.reshape(b, n * c)
    k = min(k, n * c)
    values, idx = flat.topk(k, dim=1, sorted=True)
    return values, torch.div(idx, c, rounding_mode="floor"), idx % c


def soft_nms_gaussian(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, sigma: float, score_threshold: float, max_det: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian soft-NMS within groups (e.g. classes): ``s_j *= exp(-IoU(i, j)^2 / σ)`` after picking i.

    Args: boxes (K, 4) xyxy, scores (K,), groups (K,) int. Returns ``(indices, decayed scores)`` of the
    picked boxes in pick order, at most ``max_det``, all with decayed score >= ``score_threshold``.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device), scores.new_zeros(0)
    # offset boxes per group so boxes of different groups never overlap (as batched_nms does)
    offset = groups.to(boxes.dtype) * (boxes.max() + 1)
    shifted = boxes + offset[:, None]
    iou = box_iou(shifted, shifted).nan_to_num(0.0)  # zero-area boxes give 0/0
    current = scores.clone()
    picked, picked_scores = [], []
    for _ in range(max_det):
        best = int(torch.argmax(current))
        s = current[best]
        if s < score_threshold:
            break
        picked.append(best)
        picked_scores.append(s)
        current = current * torch.exp(-(iou[best] ** 2) / sigma)
        current[best] = -1.0
    if not picked:
        return torch.zeros(0, dtype=torch.long, device=boxes.device), scores.new_zeros(0)
    return torch.tensor(picked, device=boxes.device), torch.stack(picked_scores)


class Postprocessor(nn.Module):
    """(B, N, C) logits + (B, N, 4) deltas + anchors -> per-image detections.

    ``forward`` returns a list (one per image) of dicts ``{"boxes": (n, 4) xyxy original pixels,
    "scores": (n,), "labels": (n,) 0-based}``, sorted by score. ``scales`` (B,) map original to
    network pixels (network = original * scale); ``image_sizes`` (B, 2) are original (height, width).
    """

    def __init__(self, config: PostprocessConfig | None = None) -> None:
        super().__init__()
        self.config = config or PostprocessConfig()

    def forward(
        self,
        cls_logits: torch.Tensor,
        box_deltas: torch.Tensor,
        anchors: torch.Tensor,
        scales: torch.Tensor,
        image_sizes: torch.Tensor,
        class_mask: torch.Tensor | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        cfg = self.config
        if class_mask is not None:  # suppress unused class slots (e.g. the 10 unused COCO ids)
            cls_logits = cls_logits.masked_fill(~class_mask, float("-inf"))
        b = cls_logits.shape[0]
        logits, anchor_idx, labels = select_topk(cls_logits, cfg.topk)
        deltas = box_deltas.gather(1, anchor_idx.unsqueeze(-1).expand(-1, -1, 4)).float()
        boxes = box_coder.decode(deltas, anchors[anchor_idx])  # (B, k, 4) network pixels
        scales = scales.to(boxes).view(b, 1, 1)
        limits = image_sizes.to(boxes).flip(-1).repeat(1, 2).view(b, 1, 4)  # (w, h, w, h) original
        boxes = torch.minimum(boxes.clamp(min=0), limits * scales) / scales
        scores = logits.float().sigmoid()
        if cfg.soft_nms:
            return [self._soft_nms(boxes[i], scores[i], labels[i]) for i in range(b)]
        return self._hard_nms(boxes, scores, labels)

    def _hard_nms(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> list[dict]:
        cfg = self.config
        b, k = scores.shape
        keep_mask = scores >= cfg.score_threshold
        image_idx = torch.arange(b, device=boxes.device).view(b, 1).expand(b, k)
        flat_boxes, flat_scores = boxes[keep_mask], scores[keep_mask]
        flat_labels, flat_images = labels[keep_mask], image_idx[keep_mask]
        num_classes_bound = int(labels.max()) + 1 if labels.numel() else 1
        keep = batched_nms(flat_boxes, flat_scores, flat_images * num_classes_bound + flat_labels, cfg.iou_threshold)
        kept_images = flat_images[keep]
        out = []
        for i in range(b):
            sel = keep[kept_images == i][: cfg.max_det]
            out.append({"boxes": flat_boxes[sel], "scores": flat_scores[sel], "labels": flat_labels[sel]})
        return out

    def _soft_nms(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> dict:
        cfg = self.config
        keep = scores >= cfg.score_threshold
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        idx, new_scores = soft_nms_gaussian(boxes, scores, labels, cfg.soft_nms_sigma, cfg.score_threshold, cfg.max_det)
        return {"boxes": boxes[idx], "scores": new_scores, "labels": labels[idx]}


def logit(p: float) -> float:
    """Inverse sigmoid, for turning a score threshold into a logit threshold."""
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))
