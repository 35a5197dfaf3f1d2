"""Exportable inference graphs: the network with flattened outputs, optionally with in-graph NMS.

Both modules take the *normalised* float32 input (B, 3, S, S) (letterbox + ``(x/255 - mean)/std``
stay in Python, :mod:`efficientdet.preprocess`).

- :class:`RawGraph` returns ``cls_logits`` (B, N, C) and ``box_deltas`` (B, N, 4) (``tx, ty, tw, th``),
  N = number of anchors, in anchor order (:func:`efficientdet.anchors.generate_anchors`).
- :class:`NMSGraph` adds post-processing with fixed-size outputs: ``boxes`` (B, max_det, 4) xyxy in
  network-input pixels clipped to the canvas [0, S] (or, given the optional second input ``image_sizes``,
  to each image's extent on the canvas), ``scores`` (B, max_det) (0 for padding),
  ``labels`` (B, max_det) int64 0-based (-1 for padding), ``num_detections`` (B,) int64. Steps: top-k
  (anchor, class) pairs, decode, clip, ONNX ``NonMaxSuppression`` per class (boxes offset by class),
  best ``max_det``, padded.
  Divide boxes by the letterbox scale and clip to the original image to get original pixels.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.ops import batched_nms

from .. import box_coder
from ..anchors import anchors_for
from ..model.efficientdet import flatten_outputs
from .config import DEFAULTS
from .postprocess import logit


class RawGraph(nn.Module):
    """Normalised images (B, 3, S, S) -> flattened (B, N, C) logits and (B, N, 4) deltas."""

    def __init__(self, model: nn.Module, num_classes: int, half: bool = False) -> None:
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.half_precision = half

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.half_precision:
            images = images.half()
        outputs = self.model(images)  # a joint model's segmentation logits (third output) are not exported here
        cls, box = flatten_outputs(outputs[0], outputs[1], self.num_classes)
        if self.half_precision:  # a float32 -> float32 Cast stays in the graph as a 17 MB copy (D0)
            cls, box = cls.float(), box.float()
        return cls, box


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` (per class) with a torchvision implementation for eager/TorchScript.

    boxes (B, K, 4) xyxy, scores (B, C, K) -> selected (M, 3) int64 rows ``(batch, class, box)``;
    a box is a candidate when its score is ``> score_threshold``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: object, boxes: torch.Tensor, scores: torch.Tensor, max_per_class: int, iou: float, score_thr: float
    ) -> torch.Tensor:
        rows = []
        for b in range(boxes.shape[0]):
            cls_idx, box_idx = (scores[b] > score_thr).nonzero(as_tuple=True)
            keep = batched_nms(boxes[b][box_idx], scores[b][cls_idx, box_idx], cls_idx, iou)
            batch_col = torch.full_like(keep, b)
            rows.append(torch.stack([batch_col, cls_idx[keep], box_idx[keep]], dim=1))
        return torch.cat(rows, dim=0) if rows else torch.zeros((0, 3), dtype=torch.long)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class: int, iou: float, score_thr: float):  # noqa: ANN001, ANN205
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.long)),
            g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([score_thr], dtype=torch.float32)),
            center_point_box_i=0,
        )


class NMSGraph(nn.Module):
    """Normalised images (B, 3, S, S) -> boxes (B, D, 4), scores (B, D), labels (B, D), num_detections (B,).

    Same semantics as :class:`efficientdet.inference.postprocess.Postprocessor` with hard NMS (top-k pairs, decode,
    clip, per-class NMS, ``score >= score_threshold``, best ``max_det``), in network pixels. Without
    ``image_sizes`` boxes are clipped to the square canvas rather than to the image (the NMS may then
    differ for boxes that reach into the letterbox padding).
    """

    def __init__(
        self,
        model: nn.Module,
        config: object,
        class_mask: torch.Tensor | None = None,
        score_threshold: float = DEFAULTS.score_threshold,
        iou_threshold: float = DEFAULTS.iou_threshold,
        max_det: int = DEFAULTS.max_det,
        topk: int = DEFAULTS.topk,
        half: bool = False,
    ) -> None:
        super().__init__()
        self.raw = RawGraph(model, config.num_classes, half)  # type: ignore[attr-defined]
        cfg = config
        anchors = anchors_for(cfg)
        self.register_buffer("anchors", anchors, persistent=False)
        num_classes = cfg.num_classes  # type: ignore[attr-defined]
        bias = torch.zeros(num_classes)
        if class_mask is not None:
            bias[~class_mask.cpu()] = float("-inf")
        self.register_buffer("class_bias", bias, persistent=False)
        self.use_class_bias = class_mask is not None and not bool(class_mask.all())
        self.num_classes = num_classes
        self.size = float(cfg.image_size)
        self.topk = min(topk, len(anchors) * num_classes)
        self.max_det = min(max_det, self.topk)
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        # NonMaxSuppression keeps scores > t; the largest float below the threshold makes it ">= threshold"
        self.nms_score_threshold = max(math.nextafter(self.score_threshold, -1.0), 0.0) if score_threshold > 0 else 0.0
        # set by the exporters for a fixed batch of one: candidates picked by NonZero (data-dependent size)
        self.single_image = False

    def _top_pairs_single(self, pairs: torch.Tensor, kth_best: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The top-k of one image's (Ka * C,) candidate logits without a top-k over all of them.

        Only pairs ``>= max(k-th best anchor maximum, logit(score_threshold))`` can be among the top k and
        pass the threshold (usually a few thousand of the 450k for D0); they are picked with NonZero, padded
        with k ``-inf`` logits (sigmoid 0: below any threshold, never kept) and the top-k runs over those.
        Exact; about 3 ms less than the full top-k in onnxruntime for D0. Returns (1, K) logits and indices.
        """
        bound = kth_best
        if self.score_threshold > 0:
            bound = torch.clamp(bound, min=logit(self.score_threshold) - 1e-4)
        cand = (pairs >= bound).nonzero().squeeze(1)  # (M,)
        values = torch.cat([pairs.index_select(0, cand), pairs.new_full((self.topk,), float("-inf"))])
        ids = torch.cat([cand, cand.new_zeros(self.topk)])
        logits, pos = values.topk(self.topk, sorted=False)
        return logits.unsqueeze(0), ids.index_select(0, pos).unsqueeze(0)

    def forward(
        self, images: torch.Tensor, image_sizes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``image_sizes``: (B, 2) or (1, 2) float (height, width) of each image on the canvas in network
        pixels (original size x letterbox scale); boxes are clipped to it before NMS, as the Detector does.
        ``None``: the whole canvas."""
        cls, box = self.raw(images)  # (B, N, C), (B, N, 4)
        b = cls.shape[0]
        c = self.num_classes
        if self.use_class_bias:
            cls = cls + self.class_bias
        # the official top-k over all N*C pairs, in two small steps: the k best pairs lie among the k
        # anchors with the best per-anchor maximum (k different anchors reach the k-th best maximum),
        # so a top-k over the (B, N) maxima picks the rows and a top-k over those k*C pairs the pairs
        # (unsorted: NMS and the final top max_det order by score anyway)
        n = cls.shape[1]
        k_anchors = min(self.topk, n)
        best, top_anchors = cls.amax(dim=2).topk(k_anchors, dim=1, sorted=False)  # (B, Ka)
        flat_rows = (top_anchors + torch.arange(b, device=cls.device).unsqueeze(1) * n).reshape(-1)
        rows = cls.reshape(b * n, c).index_select(0, flat_rows)  # (B * Ka, C), a Gather without an Expand
        if self.single_image:
            logits, idx = self._top_pairs_single(rows.reshape(-1), best.amin())
        else:
            logits, idx = rows.reshape(b, -1).topk(self.topk, dim=1, sorted=False)  # (B, K)
        row = torch.div(idx, c, rounding_mode="floor")
        labels = idx - row * c
        anchor_idx = top_anchors.gather(1, row)
        deltas = box.gather(1, anchor_idx.unsqueeze(-1).expand(-1, -1, 4))
        boxes = box_coder.decode(deltas, self.anchors[anchor_idx]).clamp(0.0, self.size)  # (B, K, 4)
        if image_sizes is not None:
            boxes = torch.minimum(boxes, image_sizes.to(boxes.dtype).flip(-1).repeat(1, 2).unsqueeze(1))
        scores = torch.sigmoid(logits)  # (B, K)
        # boxes clipped to nothing hold no object and NMS cannot suppress their copies (IoU 0): score 0,
        # which NonMaxSuppression (scores > t, t >= 0) never selects
        empty = (boxes[..., 2] <= boxes[..., 0]) | (boxes[..., 3] <= boxes[..., 1])
        scores = torch.where(empty, torch.zeros_like(scores), scores)
        # per-class NMS as one NMS over boxes moved apart by class (boxes of different classes never
        # overlap, torchvision's batched_nms trick): greedy NMS in score order then equals the per-class
        # results merged by score, and onnxruntime stops after max_det boxes instead of max_det per class
        shifted = boxes + (labels.unsqueeze(-1) * (self.size + 1.0)).to(boxes.dtype)
        selected = _NonMaxSuppression.apply(
            shifted, scores.unsqueeze(1), self.max_det, self.iou_threshold, self.nms_score_threshold
        )  # (M, 3)
        flat = selected[:, 0] * self.topk + selected[:, 2]
        keep = torch.zeros_like(scores).reshape(-1).scatter(0, flat, torch.ones_like(flat, dtype=scores.dtype))
        keep = keep.reshape(scores.shape) > 0.5
        ranked = torch.where(keep, scores, torch.full_like(scores, -1.0))
        top_scores, order = ranked.topk(self.max_det, dim=1)  # (B, D), descending
        valid = top_scores >= max(self.score_threshold, 0.0)
        out_boxes = boxes.gather(1, order.unsqueeze(-1).expand(-1, -1, 4)) * valid.unsqueeze(-1).to(boxes.dtype)
        out_scores = torch.where(valid, top_scores, torch.zeros_like(top_scores))
        out_labels = torch.where(valid, labels.gather(1, order), torch.full_like(order, -1))
        return out_boxes, out_scores, out_labels, valid.to(torch.long).sum(dim=1)
