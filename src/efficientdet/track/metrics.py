"""Tracking metrics of tracker output against ground truth: CLEAR-MOT and identity metrics (MOTA, IDF1,
...) via ``motmetrics``, and HOTA (with its detection and association parts DetA, AssA) via ``trackeval``.

Ground truth and tracker output are per-frame dicts of ``ids`` (n,) and ``boxes`` (n, 4) xyxy pixels.
Ground-truth objects less visible than ``min_visibility`` are *ignored*, as the MOTChallenge
evaluation does: a hypothesis that matches one of them (IoU >= ``iou``, Hungarian matching on the IoUs
of at least ``iou``, as trackeval's MOTChallenge preprocessing) is removed instead of being counted as a
false positive, and the object itself is not a miss. Both packages see the same frames after that step.
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
#: HOTA metrics reported by :func:`evaluate_tracks` (trackeval field -> our key); each is the mean over
#: trackeval's 19 localisation thresholds alpha = 0.05, 0.10, ..., 0.95
HOTA_METRICS = {"HOTA": "hota", "DetA": "deta", "AssA": "assa", "DetRe": "detre", "DetPr": "detpr",
                "AssRe": "assre", "AssPr": "asspr", "LocA": "loca"}


def evaluate_tracks(
    ground_truth: Mapping[int, Mapping[str, np.ndarray]],
    hypotheses: Mapping[int, Mapping[str, np.ndarray]],
    iou: float = 0.5,
    min_visibility: float = 0.25,
) -> dict[str, float]:
    """MOTA, IDF1 and the counts behind them over the frames of ``ground_truth`` and ``hypotheses``.

    ``ground_truth[frame]`` has ``ids``, ``boxes`` (xyxy) and optionally ``visibility``;
    ``hypotheses[frame]`` has ``ids`` and ``boxes``. A pair matches when IoU >= ``iou``.
    Returns ``{name: value}`` for :data:`METRICS` (``motp`` is the mean 1 - IoU of matches), the values
    of :data:`HOTA_METRICS` (``hota``, ``deta``, ``assa``, ...; computed by trackeval's ``HOTA`` class
    on the IoUs of every pair, independent of ``iou``) plus ``num_ignored`` (hypotheses removed on ignored
    objects).
    """
    try:
        import motmetrics as mm
    except ImportError as e:
        raise ConfigError("tracking metrics need the motmetrics package: pip install motmetrics") from e
    acc = mm.MOTAccumulator(auto_id=False)
    frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
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
            ious[ious < iou] = 0.0  # only pairs that count as matches compete
            rows, cols = linear_sum_assignment(-ious)
            drop = [c for r, c in zip(rows, cols) if ious[r, c] >= iou and ious[r, c] > 0 and not keep_g[r]]
            ignored += len(drop)
            keep_h = np.ones(len(h_ids), bool)
            keep_h[drop] = False
            h_ids, h_boxes = h_ids[keep_h], h_boxes[keep_h]
        g_ids, g_boxes = g_ids[keep_g], g_boxes[keep_g]
        # motmetrics' own iou_matrix uses np.asfarray (gone in numpy 2): the same 1 - IoU, NaN = no match
        similarity = box_iou(g_boxes, h_boxes)
        frames.append((g_ids, h_ids, similarity))
        dist = 1.0 - similarity
        dist[dist > 1.0 - iou] = np.nan
        acc.update(g_ids.tolist(), h_ids.tolist(), dist, frameid=int(f))
    summary = mm.metrics.create().compute(acc, metrics=list(METRICS), name="all")
    out = {k: float(summary[k].iloc[0]) for k in METRICS}
    out.update(hota_metrics(frames))
    out["num_ignored"] = float(ignored)
    return out


def hota_metrics(frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, float]:
    """HOTA, DetA, AssA, ... (keys of :data:`HOTA_METRICS`) of a sequence with trackeval's ``HOTA`` class.

    ``frames``: per frame, in order, ``(gt_ids (n,), tracker_ids (m,), similarity (n, m))`` with the
    IoU of every ground-truth/tracker box pair (ignored objects and the hypotheses on them already
    removed). Ids are any integers; they are renumbered 0.. as trackeval expects. Each value is the mean
    over the localisation thresholds alpha = 0.05 ... 0.95 (HOTA's definition).
    """
    try:
        from trackeval.metrics import HOTA
    except ImportError as e:
        raise ConfigError("HOTA needs the trackeval package: pip install trackeval") from e
    gt_ids = [np.asarray(g, dtype=np.int64).reshape(-1) for g, _, _ in frames]
    tr_ids = [np.asarray(h, dtype=np.int64).reshape(-1) for _, h, _ in frames]
    gt_unique = np.unique(np.concatenate([np.zeros(0, np.int64), *gt_ids]))
    tr_unique = np.unique(np.concatenate([np.zeros(0, np.int64), *tr_ids]))
    for ids, what in ((gt_ids, "ground-truth"), (tr_ids, "tracker")):
        for t, i in enumerate(ids):
            if len(np.unique(i)) != len(i):
                raise ConfigError(f"frame index {t}: a {what} id occurs twice in one frame ({i.tolist()})")
    data = {
        "gt_ids": [np.searchsorted(gt_unique, g) for g in gt_ids],
        "tracker_ids": [np.searchsorted(tr_unique, h) for h in tr_ids],
        "similarity_scores": [np.asarray(s, dtype=np.float64).reshape(len(g), len(h))
                              for g, h, s in zip(gt_ids, tr_ids, (s for _, _, s in frames))],
        "num_gt_dets": int(sum(len(g) for g in gt_ids)),
        "num_tracker_dets": int(sum(len(h) for h in tr_ids)),
        "num_gt_ids": len(gt_unique),
        "num_tracker_ids": len(tr_unique),
        "num_timesteps": len(frames),
    }
    res = HOTA().eval_sequence(data)
    return {key: float(np.mean(res[field])) for field, key in HOTA_METRICS.items()}


def track_frames(tracked: Mapping[int, object]) -> dict[int, dict[str, np.ndarray]]:
    """``{frame: Detections with track_ids}`` -> the ``hypotheses`` form :func:`evaluate_tracks` takes."""
    out = {}
    for f, det in tracked.items():
        ids = getattr(det, "track_ids", None)
        if ids is None:
            raise ConfigError(f"frame {f}: detections have no track_ids; pass them through Tracker.update first")
        out[int(f)] = {"ids": np.asarray(ids, dtype=np.int64), "boxes": np.asarray(det.boxes, dtype=np.float64)}
    return out
