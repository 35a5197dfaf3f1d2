"""Post-processing: head outputs -> detections in original-image pixels.

Official EfficientDet inference: keep the top-k (anchor, class) pairs over all levels (k = 5000),
decode their boxes, clip them to the image, run per-class NMS (IoU 0.5) or Gaussian soft-NMS
(σ = 0.5), drop scores under the threshold, keep the best ``max_det``. Nothing here loops over
anchors in Python; hard NMS runs once for the whole batch (torchvision's ``batched_nms`` with one
group per (image, class)).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.ops import batched_nms, box_iou

from .. import box_coder
from .config import PostprocessConfig


def select_topk(
    cls_logits: torch.Tensor, k: int, min_logit: float | None = None, class_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` (anchor, class) pairs per image from (B, N, C) logits, without a top-k over all N·C pairs.

    Returns ``(logits (B, k'), anchor_idx (B, k'), class_idx (B, k'))``, each row sorted by logit
    (descending) and padded with ``-inf`` logits (anchor 0, class 0) to a common width k' <= k.

    Exactly the pairs of ``flat.topk(k)`` (ties aside) that are ``>= min_logit``, found cheaply: one
    pass computes each anchor's best logit (B, N); the k-th largest of those is a lower bound of the
    k-th largest pair (k different anchors reach it), so only anchors whose best logit reaches
    ``max(bound, min_logit)`` can contribute; the top-k then runs over those few rows only.
    ``class_mask`` (C,) bool drops masked classes (their logits count as ``-inf``).
    """
    b, n, c = cls_logits.shape
    k = min(k, n * c)
    floor = float("-inf") if min_logit is None else float(min_logit)
    if floor == float("-inf") and n <= k:  # tiny inputs: the plain top-k is cheap and exact
        if class_mask is not None:
            cls_logits = cls_logits.masked_fill(~class_mask, float("-inf"))
        values, idx = cls_logits.reshape(b, n * c).topk(k, dim=1, sorted=True)
        return values, torch.div(idx, c, rounding_mode="floor"), idx % c
    per_anchor = cls_logits.amax(dim=2)  # (B, N)
    rows = []
    for i in range(b):
        bound = floor
        if n > k:
            bound = max(floor, float(per_anchor[i].topk(k, sorted=False).values.min()))
        row = _candidates(cls_logits[i], per_anchor[i], bound, k, c, class_mask)
        if bound > floor and len(row[0]) < k:  # masked classes hid some of the k: widen (exact, rare)
            row = _candidates(cls_logits[i], per_anchor[i], floor, k, c, class_mask)
        rows.append(row)
    width = max(1, max(len(v) for v, _, _ in rows))
    values = cls_logits.new_full((b, width), float("-inf"))
    anchor_idx = torch.zeros((b, width), dtype=torch.long, device=cls_logits.device)
    class_idx = torch.zeros((b, width), dtype=torch.long, device=cls_logits.device)
    for i, (vals, anc, cl) in enumerate(rows):
        values[i, : len(vals)] = vals
        anchor_idx[i, : len(vals)] = anc
        class_idx[i, : len(vals)] = cl
    return values, anchor_idx, class_idx


def _candidates(
    logits: torch.Tensor,
    per_anchor: torch.Tensor,
    bound: float,
    k: int,
    c: int,
    class_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best ``k`` pairs ``>= bound`` of one image's (N, C) logits: (values, anchor idx, class idx), sorted."""
    anchors = (per_anchor >= bound).nonzero().squeeze(1)  # (n_a,)
    sub = logits.index_select(0, anchors)  # (n_a, C)
    if class_mask is not None:
        sub = sub.masked_fill(~class_mask, float("-inf"))
    sub = sub.reshape(-1)
    pairs = (sub >= bound).nonzero().squeeze(1)
    vals = sub.index_select(0, pairs)
    if vals.numel() > k:
        vals, order = vals.topk(k, sorted=True)
    else:
        vals, order = vals.sort(descending=True, stable=True)
    pairs = pairs.index_select(0, order)
    return vals, anchors.index_select(0, torch.div(pairs, c, rounding_mode="floor")), pairs % c


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
        # unused class slots (e.g. the 10 unused COCO ids) are masked inside select_topk
        logits, anchor_idx, labels = select_topk(cls_logits, cfg.topk, self.min_logit(), class_mask)
        return self._finish(logits, anchor_idx, labels, box_deltas, anchors, scales, image_sizes)

    def min_logit(self) -> float | None:
        """The prefilter bound: pairs with a smaller logit can never reach ``score_threshold``.

        ``None`` (no prefilter) when the threshold is 0. A margin of 1e-4 below ``logit(threshold)``
        keeps every pair whose float32 sigmoid could still round up to the threshold; the exact
        ``score >= threshold`` test is applied afterwards, so results equal the unfiltered path.
        """
        t = self.config.score_threshold
        return None if t <= 0.0 else logit(t) - 1e-4

    def _finish(
        self,
        logits: torch.Tensor,
        anchor_idx: torch.Tensor,
        labels: torch.Tensor,
        box_deltas: torch.Tensor,
        anchors: torch.Tensor,
        scales: torch.Tensor,
        image_sizes: torch.Tensor,
    ) -> list[dict[str, torch.Tensor]]:
        """Selected (B, k) pairs -> decode, clip, NMS -> per-image detections."""
        cfg = self.config
        b = logits.shape[0]
        deltas = box_deltas.gather(1, anchor_idx.unsqueeze(-1).expand(-1, -1, 4)).float()
        boxes = box_coder.decode(deltas, anchors[anchor_idx])  # (B, k, 4) network pixels
        scales = scales.to(boxes).view(b, 1, 1)
        limits = image_sizes.to(boxes).flip(-1).repeat(1, 2).view(b, 1, 4)  # (w, h, w, h) original
        boxes = torch.minimum(boxes.clamp(min=0), limits * scales) / scales
        scores = logits.float().sigmoid()
        # a box clipped to nothing (it lay outside the image, e.g. in the letterbox padding) holds no object,
        # and NMS cannot suppress its copies (IoU 0): score 0, below every threshold (-1 when it is 0)
        empty = (boxes[..., 2] <= boxes[..., 0]) | (boxes[..., 3] <= boxes[..., 1])
        scores = scores.masked_fill(empty, -1.0 if cfg.score_threshold <= 0 else 0.0)
        if cfg.soft_nms:
            return [self._soft_nms(boxes[i], scores[i], labels[i]) for i in range(b)]
        return self._hard_nms(boxes, scores, labels)

    def _hard_nms(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> list[dict]:
        """Per-class NMS for the whole batch; rows of ``scores`` are sorted (descending) per image, but for
        the emptied boxes (score 0 or -1, never kept).

        Greedy NMS keeps or drops a box by looking only at higher-scoring boxes, so the first
        ``max_det`` boxes kept from a score-sorted prefix of the candidates are exactly the first
        ``max_det`` kept from all of them. NMS therefore runs on a short prefix first and on every
        candidate only for images where the prefix did not yield ``max_det`` boxes.
        """
        cfg = self.config
        k = scores.shape[1]
        prefix = min(k, max(8 * cfg.max_det, 256))
        if prefix < k:
            out = self._nms(boxes[:, :prefix], scores[:, :prefix], labels[:, :prefix])
            rest_best = scores[:, prefix:].amax(dim=1)  # (sorted but for the emptied boxes)
            complete = [
                len(o["scores"]) >= cfg.max_det or float(rest_best[i]) < cfg.score_threshold
                for i, o in enumerate(out)
            ]
            if all(complete):
                return out
        return self._nms(boxes, scores, labels)

    def _nms(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> list[dict]:
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
