"""CLEAR-MOT and identity metrics (MOTA, IDF1, ...) of tracker output against ground truth, via ``motmetrics``.

Ground truth and tracker output are per-frame dicts of ``ids`` (n,) and ``boxes`` (n, 4) xyxy pixels.
Ground-truth objects less visible than ``min_visibility`` are *ignored*, as the MOTChallenge
evaluation does: a hypothesis that matches one of them (IoU >= ``iou``) is removed instead of being
counted as a false positive, and the object itself is not a miss.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..errors import ConfigError
from .bytetrack import box_iou

#: motmetrics metric names reported by :func:`evaluate_tracks`
METRICS = ("mota", "idf1", "motp", "precision", "recall", "num_switches", "num_false_positives", "num_misses",
           "num_objects", "num_unique_objects", "mostly_tracked", "idp", "idr")


def evaluate_tracks(
    ground_truth: Mapping[int, Mapping[str, np.ndarray]],
    hypotheses: Mapping[int, Mapping[str, np.ndarray]],
    iou: float = 0.5,
    min_visibility: float = 0.25,
) -> dict[str, float]:
    """MOTA, IDF1 and the counts behind them over the frames of ``ground_truth`` and ``hypotheses``.

    ``ground_truth[frame]`` has ``ids``, ``boxes`` (xyxy) and optionally ``visibility``;
    ``hypotheses[frame]`` has ``ids`` and ``boxes``. A pair matches when IoU >= ``iou``.
    Returns ``{name: value}`` for :data:`METRICS` (``motp`` is the mean 1 - IoU of matches) plus
    ``num_ignored`` (hypotheses removed on ignored objects).
    """
    try:
        import motmetrics as mm
    except ImportError as e:
        raise ConfigError("tracking metrics need the motmetrics package: pip install motmetrics") from e
    acc = mm.MOTAccumulator(auto_id=False)
    ignored = 0
    empty = {"ids": np.zeros(0, np.int64), "boxes": np.zeros((0, 4))}
    for f in sorted(set(ground_truth) | set(hypotheses)):
        gt = ground_truth.get(f, empty)
        hyp = hypotheses.get(f, empty)
        g_ids = np.asarray(gt["ids"], dtype=np.int64)
        g_boxes = np.asarray(gt["boxes"], dtype=np.float64).reshape(-1, 4)
        vis = np.asarray(gt.get("visibility", np.ones(len(g_ids))), dtype=np.float64)
        h_ids = np.asarray(hyp["ids"], dtype=np.int64)
        h_boxes = np.asarray(hyp["boxes"], dtype=np.float64).reshape(-1, 4)
        keep_g = vis >= min_visibility
        if (~keep_g).any() and len(h_ids):
            # match against every object; hypotheses that land on an ignored one are dropped
            ious = box_iou(g_boxes, h_boxes)
            rows, cols = linear_sum_assignment(-ious)
            drop = [c for r, c in zip(rows, cols) if ious[r, c] >= iou and not keep_g[r]]
            ignored += len(drop)
            keep_h = np.ones(len(h_ids), bool)
            keep_h[drop] = False
            h_ids, h_boxes = h_ids[keep_h], h_boxes[keep_h]
        g_ids, g_boxes = g_ids[keep_g], g_boxes[keep_g]
        # motmetrics' own iou_matrix uses np.asfarray (gone in numpy 2): the same 1 - IoU, NaN = no match
        dist = 1.0 - box_iou(g_boxes, h_boxes)
        dist[dist > 1.0 - iou] = np.nan
        acc.update(g_ids.tolist(), h_ids.tolist(), dist, frameid=int(f))
    summary = mm.metrics.create().compute(acc, metrics=list(METRICS), name="all")
    out = {k: float(summary[k].iloc[0]) for k in METRICS}
    out["num_ignored"] = float(ignored)
    return out


def track_frames(tracked: Mapping[int, object]) -> dict[int, dict[str, np.ndarray]]:
    """``{frame: Detections with track_ids}`` -> the ``hypotheses`` form :func:`evaluate_tracks` takes."""
    out = {}
    for f, det in tracked.items():
        ids = getattr(det, "track_ids", None)
        if ids is None:
            raise ConfigError(f"frame {f}: detections have no track_ids; pass them through Tracker.update first")
        out[int(f)] = {"ids": np.asarray(ids, dtype=np.int64), "boxes": np.asarray(det.boxes, dtype=np.float64)}
    return out
