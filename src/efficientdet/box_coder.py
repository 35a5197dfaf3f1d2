"""Box coder: ground-truth boxes <-> regression targets relative to anchors.

Deltas are ``(tx, ty, tw, th)`` with ``tx = (xc - xca) / wa``, ``ty = (yc - yca) / ha``,
``tw = log(w / wa)``, ``th = log(h / ha)`` (no variances), the official EfficientDet encoding.
Boxes are xyxy. The published (effdet) checkpoints predict ``(ty, tx, th, tw)``; the converter in
:mod:`efficientdet.weights` permutes their box-predictor channels, so every tensor in this project
uses ``(tx, ty, tw, th)``.
"""

from __future__ import annotations

import math

import torch

# Largest log-scale accepted when decoding: exp(4.135) = 62.5x the anchor side (as torchvision).
MAX_LOG_SCALE = math.log(1000.0 / 16)


def encode(boxes: torch.Tensor, anchors: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """xyxy ``boxes`` (..., 4) and matching xyxy ``anchors`` (..., 4) -> deltas (..., 4)."""
    wa = anchors[..., 2] - anchors[..., 0]
    ha = anchors[..., 3] - anchors[..., 1]
    xa = anchors[..., 0] + 0.5 * wa
    ya = anchors[..., 1] + 0.5 * ha
    w = (boxes[..., 2] - boxes[..., 0]).clamp(min=eps)
    h = (boxes[..., 3] - boxes[..., 1]).clamp(min=eps)
    x = boxes[..., 0] + 0.5 * w
    y = boxes[..., 1] + 0.5 * h
    return torch.stack([(x - xa) / wa, (y - ya) / ha, torch.log(w / wa), torch.log(h / ha)], dim=-1)


def decode(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Deltas (..., 4) ``(tx, ty, tw, th)`` and xyxy ``anchors`` (..., 4) -> xyxy boxes (..., 4)."""
    wa = anchors[..., 2] - anchors[..., 0]
    ha = anchors[..., 3] - anchors[..., 1]
    xa = anchors[..., 0] + 0.5 * wa
    ya = anchors[..., 1] + 0.5 * ha
    x = deltas[..., 0] * wa + xa
    y = deltas[..., 1] * ha + ya
    hw = 0.5 * torch.exp(deltas[..., 2].clamp(max=MAX_LOG_SCALE)) * wa
    hh = 0.5 * torch.exp(deltas[..., 3].clamp(max=MAX_LOG_SCALE)) * ha
    return torch.stack([x - hw, y - hh, x + hw, y + hh], dim=-1)
