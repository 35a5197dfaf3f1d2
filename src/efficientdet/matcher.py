"""Anchor matching: assign every anchor a class target and a box-regression target.

Rules (official EfficientDet / effdet ``AnchorLabeler`` with its ``ArgMaxMatcher``), per image:

1. IoU between every valid ground-truth box and every anchor (an IoU whose intersection is 0 is 0,
   so zero-area boxes never give 0/0).
2. Each anchor takes the ground-truth box of highest IoU (ties: the lowest box index). It is
   positive when that IoU is ``>= iou_threshold`` and negative otherwise (no ignore band).
3. Each non-crowd ground-truth box is forced onto its best-IoU anchor (ties: the lowest anchor
   index), which becomes positive for that box whatever rule 2 said. When several boxes force the
   same anchor, the lowest box index wins (as effdet / TF: not the box with the highest IoU).
4. Crowd boxes (``iscrowd``) never give positives: an anchor whose best box (rule 2, IoU > 0) is a
   crowd box, or whose IoU with any crowd box is ``>= iou_threshold``, is ignored (neither positive
   nor negative), unless rule 3 made it positive.
5. Images without (valid) boxes give all negatives.

Differences from effdet 0.4.1 (which has no crowd handling at all): crowd boxes (rule 4), and a box
that overlaps no anchor at all (best IoU 0, e.g. zero area or outside the image) is not forced onto
anchor 0 as effdet's ``argmax`` over an all-zero row would do; it simply gets no anchor.

Everything is vectorised over the batch: ground truth is padded to (B, M, 4) with a validity mask and
the (B, M, N) IoU tensor is built in one go (in chunks of images when it would exceed
``max_iou_elements`` elements, to bound memory for the large models).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from efficientdet.box_coder import encode

IGNORE = -2
NEGATIVE = -1


class MatchResult(NamedTuple):
    """Targets for a batch of B images and N anchors.

    - ``cls_targets``: (B, N) int64, the 0-based class for positive anchors, ``-1`` (``NEGATIVE``) for
      negatives, ``-2`` (``IGNORE``) for ignored anchors.
    - ``box_targets``: (B, N, 4) float32 deltas ``(tx, ty, tw, th)`` of
      :func:`efficientdet.box_coder.encode` (matched box vs anchor); zeros where not positive.
    - ``num_positives``: (B,) int64, positive anchors per image.
    """

    cls_targets: torch.Tensor
    box_targets: torch.Tensor
    num_positives: torch.Tensor


def pad_targets(
    boxes: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    iscrowd: Sequence[torch.Tensor] | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad per-image targets to a batch.

    ``boxes[i]`` is (Mi, 4) xyxy, ``labels[i]`` (Mi,) 0-based, ``iscrowd[i]`` (Mi,) bool/int (optional).
    Returns ``(boxes (B, M, 4) float32, labels (B, M) int64, iscrowd (B, M) bool, mask (B, M) bool)``
    with M = max Mi; padded entries have zero boxes, label -1, iscrowd False and mask False.
    """
    if len(boxes) != len(labels) or (iscrowd is not None and len(iscrowd) != len(boxes)):
        raise ValueError("pad_targets: boxes, labels and iscrowd must have one entry per image")
    if device is None:
        device = boxes[0].device if len(boxes) else torch.device("cpu")
    batch = len(boxes)
    m = max((int(b.shape[0]) for b in boxes), default=0)
    out_boxes = torch.zeros(batch, m, 4, dtype=torch.float32, device=device)
    out_labels = torch.full((batch, m), -1, dtype=torch.int64, device=device)
    out_crowd = torch.zeros(batch, m, dtype=torch.bool, device=device)
    out_mask = torch.zeros(batch, m, dtype=torch.bool, device=device)
    for i in range(batch):  # loop over images only, to copy ragged data
        n = int(boxes[i].shape[0])
        if n == 0:
            continue
        out_boxes[i, :n] = boxes[i].reshape(n, 4).to(device=device, dtype=torch.float32)
        out_labels[i, :n] = labels[i].reshape(n).to(device=device, dtype=torch.int64)
        if iscrowd is not None:
            out_crowd[i, :n] = iscrowd[i].reshape(n).to(device=device).bool()
        out_mask[i, :n] = True
    return out_boxes, out_labels, out_crowd, out_mask


def batched_iou(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """IoU of xyxy ``boxes`` (B, M, 4) against xyxy ``anchors`` (N, 4) -> (B, M, N).

    Same arithmetic as effdet / TF (``area_box + area_anchor - inter``; 0 where the intersection is 0).
    """
    b = boxes[..., None, :]  # (B, M, 1, 4)
    iw = (torch.minimum(b[..., 2], anchors[:, 2]) - torch.maximum(b[..., 0], anchors[:, 0])).clamp_(min=0)
    ih = (torch.minimum(b[..., 3], anchors[:, 3]) - torch.maximum(b[..., 1], anchors[:, 1])).clamp_(min=0)
    inter = ih * iw
    area_b = (boxes[..., 3] - boxes[..., 1]) * (boxes[..., 2] - boxes[..., 0])  # (B, M)
    area_a = (anchors[:, 3] - anchors[:, 1]) * (anchors[:, 2] - anchors[:, 0])  # (N,)
    union = area_b[..., None] + area_a - inter
    return torch.where(inter == 0, torch.zeros_like(inter), inter / union)


def _match_chunk(
    anchors: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    crowd: torch.Tensor,
    valid: torch.Tensor,
    iou_threshold: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Match a chunk of b images; returns (cls (b, N) int64, box targets (b, N, 4) float32)."""
    nb, m = labels.shape
    n = anchors.shape[0]
    iou = batched_iou(anchors, boxes)  # (b, M, N)
    crowd = crowd & valid
    normal = valid & ~crowd

    # Rule 2: best box per anchor among the valid ones (invalid rows can never win).
    best_iou, best_gt = iou.masked_fill(~valid[..., None], -1.0).max(dim=1)  # (b, N)
    best_is_crowd = crowd.gather(1, best_gt)
    positive = (best_iou >= iou_threshold) & ~best_is_crowd

    # Rule 4: crowd regions are ignored.
    ignored = best_is_crowd & (best_iou > 0)
    if bool(crowd.any()):
        crowd_iou = iou.masked_fill(~crowd[..., None], -1.0).amax(dim=1)  # (b, N)
        ignored |= crowd_iou >= iou_threshold
    positive &= ~ignored

    # Rule 3: force every non-crowd box onto its best anchor (lowest box index wins a shared anchor).
    row_best_iou, row_best_anchor = iou.max(dim=2)  # (b, M); ties -> first anchor
    forcing = normal & (row_best_iou > 0)
    box_ids = torch.arange(m, device=labels.device).expand(nb, m)
    src = torch.where(forcing, box_ids, torch.full_like(box_ids, m))
    forced_gt = torch.full((nb, n), m, dtype=torch.int64, device=labels.device)
    forced_gt.scatter_reduce_(1, row_best_anchor, src, reduce="amin", include_self=True)
    forced = forced_gt < m
    matched_gt = torch.where(forced, forced_gt, best_gt)
    positive |= forced
    ignored &= ~forced

    cls = labels.gather(1, matched_gt)
    cls = torch.where(positive, cls, torch.full_like(cls, NEGATIVE))
    cls = torch.where(ignored, torch.full_like(cls, IGNORE), cls)
    matched_boxes = boxes.gather(1, matched_gt[..., None].expand(nb, n, 4))  # (b, N, 4)
    deltas = encode(matched_boxes, anchors.expand(nb, n, 4))
    box_targets = torch.where(positive[..., None], deltas, torch.zeros_like(deltas))
    return cls, box_targets


def match_anchors(
    anchors: torch.Tensor,
    gt_boxes: torch.Tensor | Sequence[torch.Tensor],
    gt_labels: torch.Tensor | Sequence[torch.Tensor],
    gt_iscrowd: torch.Tensor | Sequence[torch.Tensor] | None = None,
    gt_mask: torch.Tensor | None = None,
    iou_threshold: float = 0.5,
    max_iou_elements: int = 1 << 27,
) -> MatchResult:
    """Compute classification and box targets for a batch (see the module docstring for the rules).

    Args:
        anchors: (N, 4) xyxy anchors in network-input pixels (:func:`efficientdet.anchors.generate_anchors`).
        gt_boxes: per-image list of (Mi, 4) xyxy boxes (same pixel frame as the anchors), or a padded
            (B, M, 4) tensor.
        gt_labels: per-image list of (Mi,) 0-based class indices, or padded (B, M) int. Entries with a
            negative label are always treated as padding (effdet's convention, so ``gt_mask`` is
            optional in the padded form).
        gt_iscrowd: like ``gt_labels``, bool/int crowd flags; ``None`` means no crowd boxes.
        gt_mask: padded form only: (B, M) bool, True for real boxes.
        iou_threshold: IoU at or above which an anchor is positive (0.5 officially).
        max_iou_elements: images are matched in chunks so the (b, M, N) IoU tensor stays below this.

    Returns:
        :class:`MatchResult` ``(cls_targets (B, N) int64, box_targets (B, N, 4) float32,
        num_positives (B,) int64)`` on the anchors' device.
    """
    device = anchors.device
    anchors = anchors.float()
    if isinstance(gt_boxes, torch.Tensor):
        boxes = gt_boxes.to(device=device, dtype=torch.float32)
        if boxes.dim() != 3 or boxes.shape[-1] != 4:
            raise ValueError(f"match_anchors: padded gt_boxes must be (B, M, 4), got {tuple(boxes.shape)}")
        labels = torch.as_tensor(gt_labels).to(device=device, dtype=torch.int64)
        crowd = (
            torch.zeros_like(labels, dtype=torch.bool)
            if gt_iscrowd is None
            else torch.as_tensor(gt_iscrowd).to(device=device).bool()
        )
        mask = labels >= 0 if gt_mask is None else gt_mask.to(device=device).bool()
    else:
        if gt_mask is not None:
            raise ValueError("match_anchors: gt_mask is only used with padded (B, M, 4) gt_boxes")
        boxes, labels, crowd, mask = pad_targets(gt_boxes, gt_labels, gt_iscrowd, device=device)
    valid = mask & (labels >= 0)
    batch, m = labels.shape
    n = anchors.shape[0]

    cls_targets = torch.full((batch, n), NEGATIVE, dtype=torch.int64, device=device)
    box_targets = torch.zeros(batch, n, 4, dtype=torch.float32, device=device)
    if m > 0 and batch > 0:
        chunk = max(1, max_iou_elements // max(1, m * n))
        for start in range(0, batch, chunk):  # one iteration unless the batch is huge
            sl = slice(start, start + chunk)
            cls_targets[sl], box_targets[sl] = _match_chunk(
                anchors, boxes[sl], labels[sl], crowd[sl], valid[sl], iou_threshold
            )
    num_positives = (cls_targets >= 0).sum(dim=1)
    return MatchResult(cls_targets, box_targets, num_positives)
