"""How well the anchors fit a data set, and anchors that fit it better (``efficientdet anchors``).

An object is learnt well only when some anchor overlaps it at the matcher's IoU (0.5, see
:mod:`efficientdet.matcher`); otherwise the matcher forces it onto its best anchor anyway, but with a
poor IoU the regression target is large and the object is often missed. This module measures, at
the network input size (boxes letterboxed exactly as in evaluation: long side scaled to the input
side, no augmentation), for each ground-truth box the best IoU over all anchors, at the box's real
position, and reports:

* per pyramid level, how many boxes have their best anchor there and how many of those reach the IoU;
* the best possible recall (BPR): the fraction of boxes with some anchor at IoU >= the threshold;
* objects too small for any anchor: below the threshold and smaller in area than the smallest anchor.

:func:`propose_anchors` fits the three aspect ratios by k-means on the boxes' shapes with the distance
``1 - IoU`` of centred, equal-area boxes (so the fit is on overlap, not on widths and heights), then
searches ``anchor_scale`` (and the default ratios as a candidate) for the highest exact BPR, and
:func:`propose_image_size` the smallest input side (a multiple of 2**max_level) at which almost no
object is too small.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .anchors import DEFAULT_ASPECT_RATIOS

#: anchor_scale candidates searched by :func:`propose_anchors`
SCALE_GRID = tuple(x / 4 for x in range(4, 33))  # 1.0 .. 8.0


@dataclass
class AnchorReport:
    """Fit of one anchor configuration to a data set's boxes at one input size."""

    image_size: int
    anchor_scale: float
    aspect_ratios: tuple[tuple[float, float], ...]
    iou_threshold: float
    num_boxes: int
    matched: int  # boxes with an anchor at IoU >= threshold
    too_small: int  # unmatched and smaller than the smallest anchor
    levels: dict[int, tuple[int, int]] = field(default_factory=dict)  # level -> (best here, matched here)
    smallest_anchor: float = 0.0  # side of the smallest (square) anchor, input pixels
    best_iou: np.ndarray | None = None  # (num_boxes,) best IoU of each box

    @property
    def recall(self) -> float:
        """Best possible recall: matched / boxes (1.0 for an empty data set)."""
        return self.matched / self.num_boxes if self.num_boxes else 1.0

    def format(self) -> str:
        """A small table, one line per level, then the totals."""
        ratios = ", ".join(f"({a:.2f}, {b:.2f})" for a, b in self.aspect_ratios)
        lines = [f"input {self.image_size}px, anchor_scale {self.anchor_scale:g}, aspect ratios {ratios}, "
                 f"IoU >= {self.iou_threshold:g}:",
                 f"  {'level':<6}{'stride':>7}{'boxes (best anchor here)':>26}{'with IoU >= thr':>17}"]
        for level, (best, ok) in sorted(self.levels.items()):
            lines.append(f"  P{level:<5}{2 ** level:>7}{best:>26}{ok:>17}")
        lines.append(f"  best possible recall {self.recall:.3f} ({self.matched} of {self.num_boxes} boxes); "
                     f"{self.too_small} boxes smaller than the smallest anchor ({self.smallest_anchor:.0f} px) "
                     "and unmatched")
        return "\n".join(lines)


def input_boxes(data: object, image_size: int, include_crowd: bool = False) -> np.ndarray:
    """All boxes of ``data`` (a :class:`~efficientdet.data.records.DetectionData`) as (N, 4) float32 xyxy in
    network-input pixels: each image is scaled so that its long side is ``image_size`` (the letterbox
    of evaluation), at its top-left corner. Crowd boxes are left out unless ``include_crowd``."""
    out = []
    for s in data.samples:  # type: ignore[attr-defined]
        if not len(s.boxes):
            continue
        keep = np.ones(len(s.boxes), bool) if include_crowd else ~s.iscrowd
        scale = image_size / max(s.width, s.height)
        out.append(s.boxes[keep] * scale)
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 4), np.float32)


def best_anchor_iou(boxes: np.ndarray, image_size: int, anchor_scale: float = 4.0,
                    aspect_ratios: Sequence[tuple[float, float]] = DEFAULT_ASPECT_RATIOS, min_level: int = 3,
                    max_level: int = 7, num_scales: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Best IoU of each (N, 4) xyxy box over all anchors of the configuration, and the level of that anchor.

    Exact and fast: for a fixed anchor shape the intersection only shrinks as the anchor centre moves
    away from the box centre along x or y, so on each level the best anchor of each shape is the one
    whose grid centre is nearest to the box centre in x and in y. That is L x A candidates per box
    instead of every anchor (same geometry as :func:`~efficientdet.anchors.generate_anchors`; tested
    against the brute force). Returns ``(best_iou (N,) float64, level (N,) int)``.
    """
    from .anchors import feature_sizes

    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    best = np.zeros(len(b))
    level_of = np.full(len(b), min_level, dtype=np.int64)
    shapes = [(2.0 ** (s / num_scales) * ax, 2.0 ** (s / num_scales) * ay)
              for s in range(num_scales) for ax, ay in aspect_ratios]
    for level, (fh, fw) in zip(range(min_level, max_level + 1),
                               feature_sizes((image_size, image_size), min_level, max_level)):
        sy, sx = image_size / fh, image_size / fw
        kx = np.clip(np.round((cx - sx / 2) / sx), 0, fw - 1)
        ky = np.clip(np.round((cy - sy / 2) / sy), 0, fh - 1)
        ax_c, ay_c = sx / 2 + kx * sx, sy / 2 + ky * sy
        for mx, my in shapes:
            hw, hh = anchor_scale * sx * mx / 2, anchor_scale * sy * my / 2
            iw = np.clip(np.minimum(b[:, 2], ax_c + hw) - np.maximum(b[:, 0], ax_c - hw), 0, None)
            ih = np.clip(np.minimum(b[:, 3], ay_c + hh) - np.maximum(b[:, 1], ay_c - hh), 0, None)
            inter = iw * ih
            iou = np.where(inter > 0, inter / np.maximum(area_b + 4 * hw * hh - inter, 1e-12), 0.0)
            better = iou > best
            best = np.where(better, iou, best)
            level_of = np.where(better, level, level_of)
    return best, level_of


def anchor_report(boxes: np.ndarray, image_size: int, anchor_scale: float = 4.0,
                  aspect_ratios: Sequence[tuple[float, float]] = DEFAULT_ASPECT_RATIOS, min_level: int = 3,
                  max_level: int = 7, num_scales: int = 3, iou_threshold: float = 0.5) -> AnchorReport:
    """Fit of an anchor configuration to ``boxes`` ((N, 4) xyxy input pixels, see :func:`input_boxes`)."""
    ratios = tuple((float(a), float(b)) for a, b in aspect_ratios)
    best, levels_of = best_anchor_iou(boxes, image_size, anchor_scale, ratios, min_level, max_level, num_scales)
    ok = best >= iou_threshold - 1e-9
    smallest = anchor_scale * 2 ** min_level  # square anchor of octave 1 on the finest level
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) if len(boxes) else np.zeros(0)
    too_small = int(np.sum(~ok & (areas < smallest**2)))
    levels = {lv: (int(np.sum(levels_of == lv)), int(np.sum((levels_of == lv) & ok)))
              for lv in range(min_level, max_level + 1)}
    return AnchorReport(image_size, float(anchor_scale), ratios, float(iou_threshold), len(boxes), int(ok.sum()),
                        too_small, levels, float(smallest), best)


def _shape_iou(log_ratio: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """IoU of centred unit-area boxes with log aspect ratios (w/h) ``log_ratio`` (N,) vs ``centres`` (K,)."""
    r1 = np.exp(log_ratio)[:, None]
    r2 = np.exp(centres)[None, :]
    w1, h1, w2, h2 = np.sqrt(r1), 1 / np.sqrt(r1), np.sqrt(r2), 1 / np.sqrt(r2)
    inter = np.minimum(w1, w2) * np.minimum(h1, h2)
    return inter / (2.0 - inter)


def fit_aspect_ratios(boxes: np.ndarray, k: int = 3, iterations: int = 50) -> tuple[tuple[float, float], ...]:
    """``k`` aspect ratios (x-mult, y-mult with product 1, sorted wide to tall) by k-means with distance
    ``1 - IoU`` of centred equal-area boxes; centres are updated as the mean log ratio of their members.
    Initialised at the quantiles of the boxes' log ratios (deterministic)."""
    w = np.maximum(boxes[:, 2] - boxes[:, 0], 1e-6)
    h = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-6)
    logr = np.log(w / h)
    if len(logr) == 0:
        return tuple(DEFAULT_ASPECT_RATIOS)
    centres = np.quantile(logr, (np.arange(k) + 0.5) / k)
    for _ in range(iterations):
        assign = np.argmax(_shape_iou(logr, centres), axis=1)
        new = np.array([logr[assign == j].mean() if np.any(assign == j) else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    centres = np.sort(centres)[::-1]
    return tuple((round(float(math.exp(c / 2)), 3), round(float(math.exp(-c / 2)), 3)) for c in centres)


@dataclass
class AnchorProposal:
    """The current anchors' report, the proposed ones' report, and whether the proposal is better."""

    current: AnchorReport
    proposed: AnchorReport
    image_size: int  # proposed input size
    image_size_report: AnchorReport | None = None

    @property
    def improves(self) -> bool:
        """The proposal raises the best possible recall by at least 1 point."""
        return self.proposed.recall >= self.current.recall + 0.01

    def overrides(self) -> dict[str, object]:
        """Model overrides that apply the proposed anchors (``anchor_scale``, ``aspect_ratios``)."""
        return {"anchor_scale": self.proposed.anchor_scale,
                "aspect_ratios": [list(r) for r in self.proposed.aspect_ratios]}


def _subsample(boxes: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    if len(boxes) <= limit:
        return boxes
    return boxes[np.sort(np.random.default_rng(seed).choice(len(boxes), limit, replace=False))]


def propose_anchors(boxes: np.ndarray, image_size: int, anchor_scale: float = 4.0,
                    aspect_ratios: Sequence[tuple[float, float]] = DEFAULT_ASPECT_RATIOS, min_level: int = 3,
                    max_level: int = 7, num_scales: int = 3, iou_threshold: float = 0.5,
                    max_boxes: int = 20000) -> AnchorProposal:
    """Search ``anchor_scale`` over :data:`SCALE_GRID` for the default ratios and the k-means ratios;
    keep the highest best possible recall (ties: the current configuration, then the smaller change of
    scale). ``max_boxes`` boxes at most (a fixed random subset) are used in the search; the two final
    reports use all boxes."""
    kw = {"min_level": min_level, "max_level": max_level, "num_scales": num_scales, "iou_threshold": iou_threshold}
    current = anchor_report(boxes, image_size, anchor_scale, aspect_ratios, **kw)
    sample = _subsample(boxes, max_boxes)
    fitted = fit_aspect_ratios(boxes, k=len(aspect_ratios))
    base = tuple((float(a), float(b)) for a, b in aspect_ratios)
    best_key, best = (-1.0, 0, 0.0), (anchor_scale, base)
    for ratios in (base, fitted):
        for scale in SCALE_GRID:
            recall = anchor_report(sample, image_size, scale, ratios, **kw).recall
            key = (round(recall, 4), 1 if ratios == base else 0, -abs(scale - anchor_scale))
            if key > best_key:
                best_key, best = key, (scale, ratios)
    proposed = anchor_report(boxes, image_size, best[0], best[1], **kw)
    if proposed.recall < current.recall:  # the subset misled the search: keep what is there
        proposed = current
    size, size_report = propose_image_size(boxes, image_size, proposed.anchor_scale, proposed.aspect_ratios, **kw)
    return AnchorProposal(current, proposed, size, size_report)


def propose_image_size(boxes: np.ndarray, image_size: int, anchor_scale: float = 4.0,
                       aspect_ratios: Sequence[tuple[float, float]] = DEFAULT_ASPECT_RATIOS, min_level: int = 3,
                       max_level: int = 7, num_scales: int = 3, iou_threshold: float = 0.5,
                       max_fraction_too_small: float = 0.01, largest: int = 1536,
                       max_boxes: int = 20000) -> tuple[int, AnchorReport | None]:
    """The smallest input side (``image_size`` itself, or a larger multiple of ``2**max_level`` up to
    ``largest``) at which at most ``max_fraction_too_small`` of the boxes are too small for any anchor.
    Boxes scale with the input (they are given at ``image_size``). Returns (size, its report on at most
    ``max_boxes`` boxes, or None when ``image_size`` already qualifies without a new measurement)."""
    kw = {"min_level": min_level, "max_level": max_level, "num_scales": num_scales, "iou_threshold": iou_threshold}
    sample = _subsample(boxes, max_boxes)
    step = 2**max_level
    candidates = [image_size] + [s for s in range(step * (image_size // step + 1), largest + 1, step)]
    report = None
    for size in candidates:
        report = anchor_report(sample * (size / image_size), size, anchor_scale, aspect_ratios, **kw)
        if report.too_small <= max_fraction_too_small * max(1, report.num_boxes):
            return size, (None if size == image_size else report)
    return candidates[-1], report




#: below this best possible recall ``train`` warns at start
POOR_RECALL = 0.9


def propose_p2(boxes: np.ndarray, proposal: AnchorProposal, min_level: int = 3, max_level: int = 7,
               num_scales: int = 3, below: float = 0.95, gain: float = 0.02) -> AnchorReport | None:
    """Small objects: when the best anchors on P{min_level}-P{max_level} (``proposal.proposed``) still miss
    more than ``1 - below`` of the boxes, the best anchors with a P2 level (``min_level=2``: stride 4, anchors
    half the size); returned when they raise the best possible recall by ``gain`` or more, else None.

    A P2 level costs compute (D0 at 256 px: ~1.5x the training time) but on small objects it pays: on the
    photos set of ``bench/recipes.py`` AP_small went from 0.28 to 0.59 (BENCHMARKS.md, issue 15)."""
    best = proposal.proposed
    if min_level <= 2 or best.num_boxes == 0 or best.recall >= below:
        return None
    p2 = propose_anchors(boxes, best.image_size, best.anchor_scale, best.aspect_ratios, 2, max_level, num_scales,
                         iou_threshold=best.iou_threshold).proposed
    return p2 if p2.recall >= best.recall + gain else None


def p2_hint(report: AnchorReport) -> str:
    """The one-line suggestion for :func:`propose_p2`'s answer."""
    return (f"small objects: with a P2 level (--model-override min_level=2, stride-4 anchors; ~1.5x the training "
            f"time) and anchor_scale {report.anchor_scale:g} the best possible recall is {report.recall:.1%} "
            f"({report.too_small} boxes too small)")


@dataclass
class AnchorPlan:
    """What ``train --anchors MODE`` does with a data set: the report, the overrides it applies (empty
    when the model's anchors stay) and the lines to print (a warning when recall stays poor)."""

    proposal: AnchorProposal
    overrides: dict[str, object]
    messages: list[str]
    warning: str | None


def plan_anchors(data: object, config: object, mode: str = "auto", poor_recall: float = POOR_RECALL) -> AnchorPlan:
    """Measure the model's anchors on the training data and, with ``mode="auto"``, take the proposal
    when it raises the best possible recall by at least a point (``mode="default"``: measure only).

    ``data`` is a :class:`~efficientdet.data.records.DetectionData`, ``config`` a
    :class:`~efficientdet.variants.ModelConfig` (its image size, levels and anchors).
    """
    c = config
    boxes = input_boxes(data, c.image_size)  # type: ignore[attr-defined]
    prop = propose_anchors(boxes, c.image_size, c.anchor_scale, c.aspect_ratios,  # type: ignore[attr-defined]
                           c.min_level, c.max_level, c.num_scales)  # type: ignore[attr-defined]
    cur, new = prop.current, prop.proposed
    messages = [f"anchors: {cur.recall:.1%} of {cur.num_boxes} training boxes have an anchor at IoU >= "
                f"{cur.iou_threshold:g} (anchor_scale {cur.anchor_scale:g}); {cur.too_small} are smaller than the "
                f"smallest anchor ({cur.smallest_anchor:.0f} px at {c.image_size}px)"]  # type: ignore[attr-defined]
    overrides: dict[str, object] = {}
    final = cur
    if mode == "auto" and prop.improves:
        overrides = prop.overrides()
        final = new
        ratios = ", ".join(f"({a:g}, {b:g})" for a, b in new.aspect_ratios)
        messages.append(f"anchors auto: anchor_scale {new.anchor_scale:g}, aspect ratios {ratios} -> recall "
                        f"{new.recall:.1%} (saved with the model)")
    elif mode == "auto":
        messages.append("anchors auto: the model's anchors already fit (no proposal raises recall by 1 point)")
    p2 = propose_p2(boxes, prop, c.min_level, c.max_level, c.num_scales)  # type: ignore[attr-defined]
    if p2 is not None:
        messages.append(p2_hint(p2))
    warning = None
    if final.recall < poor_recall:
        hints = []
        if mode != "auto" and prop.improves:
            hints.append(f"--anchors auto (recall {new.recall:.1%})")
        size, _ = propose_image_size(boxes, c.image_size, final.anchor_scale, final.aspect_ratios,  # type: ignore
                                     c.min_level, c.max_level, c.num_scales)  # type: ignore[attr-defined]
        if size > c.image_size:  # type: ignore[attr-defined]
            hints.append(f"--image-size {size}")
        if p2 is not None:
            hints.append("--model-override min_level=2 (a P2 level for small objects)")
        hints.append("'efficientdet anchors' for the per-level report")
        warning = (f"warning: only {final.recall:.1%} of the training boxes can be matched to an anchor at IoU >= "
                   f"{final.iou_threshold:g}; the rest train poorly and are often missed. Try " + ", ".join(hints))
    return AnchorPlan(prop, overrides, messages, warning)


__all__ = ["AnchorPlan", "AnchorProposal", "AnchorReport", "POOR_RECALL", "anchor_report", "best_anchor_iou",
           "fit_aspect_ratios", "input_boxes", "p2_hint", "plan_anchors", "propose_anchors", "propose_image_size",
           "propose_p2"]
