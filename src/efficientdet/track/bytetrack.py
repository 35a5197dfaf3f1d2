"""A ByteTrack-style multi-object tracker over :class:`~efficientdet.detections.Detections` (numpy + scipy).

Zhang et al., *ByteTrack: Multi-Object Tracking by Associating Every Detection Box*, ECCV 2022. Each
frame:

1. every known track moves one frame with its Kalman filter (:mod:`.kalman`);
2. **first association**: high-score detections (``score >= track_thresh``) are matched to the
   confirmed and the lost tracks by IoU of the predicted box (Hungarian assignment,
   ``scipy.optimize.linear_sum_assignment``; a pair is accepted when ``1 - IoU <= match_thresh``);
3. **second association**: low-score detections (``low_thresh <= score < track_thresh``) are matched to
   the confirmed tracks still unmatched (IoU >= 0.5). They extend tracks through partial occlusion and
   motion blur but never start one;
4. new (tentative) tracks take the first remaining high-score detection matched on the next frame
   (IoU >= 0.3); a tentative track not matched on its second frame is dropped;
5. remaining high-score detections with ``score >= track_thresh + new_track_margin`` start tentative
   tracks (on the very first frame they are confirmed at once);
6. confirmed tracks not matched become *lost*; a lost track is kept, moving with its filter, for
   ``track_buffer`` frames (scaled by ``frame_rate / 30``) and takes its id back when matched again.

Ids are given when a track is confirmed: 1, 2, 3 ... in order of confirmation.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..detections import Detections
from ..errors import ConfigError
from .kalman import KalmanBoxFilter

TENTATIVE, TRACKED, LOST = "tentative", "tracked", "lost"


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (n, m) of xyxy boxes ``a`` (n, 4) and ``b`` (m, 4); 0 for empty boxes.

    Numpy, so that tracking runs in the torch-free deployment path (``efficientdet.deploy``); equal to
    ``torchvision.ops.box_iou`` (tested)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def select(dets: Detections, index: np.ndarray, track_ids: np.ndarray | None = None) -> Detections:
    """The detections at ``index`` (int array), in that order, with ``track_ids`` if given."""
    index = np.asarray(index, dtype=np.int64)
    return replace(dets, boxes=dets.boxes[index].reshape(-1, 4), scores=dets.scores[index], labels=dets.labels[index],
                   names=[dets.names[i] for i in index.tolist()], category_ids=dets.category_ids[index],
                   timings=dict(dets.timings),
                   track_ids=None if track_ids is None else np.asarray(track_ids, dtype=np.int64))


class _Track:
    """One tracked object: Kalman state, status, last label and frame of the last match."""

    def __init__(self, box: np.ndarray, label: int, frame: int) -> None:
        self.filter = KalmanBoxFilter(box)
        self.label = label
        self.state = TENTATIVE
        self.track_id = 0  # given at confirmation
        self.last_frame = frame
        self.hits = 1

    def predict(self) -> None:
        self.filter.predict(freeze_height_velocity=self.state != TRACKED)

    def match(self, box: np.ndarray, label: int, frame: int) -> None:
        self.filter.update(box)
        self.label = label
        self.last_frame = frame
        self.hits += 1


def _associate(
    tracks: list[_Track], boxes: np.ndarray, labels: np.ndarray, max_cost: float, class_aware: bool
) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Hungarian matching on ``1 - IoU`` (predicted track box vs detection); pairs costing more than
    ``max_cost`` (or of different classes when ``class_aware``) are never matched.

    Returns (matches as (track index, detection index), unmatched track indices, unmatched detection indices).
    """
    if not tracks or not len(boxes):
        return [], list(range(len(tracks))), list(range(len(boxes)))
    cost = 1.0 - box_iou(np.stack([t.filter.box for t in tracks]), boxes)
    if class_aware:
        cost[np.array([t.label for t in tracks])[:, None] != labels[None, :]] = np.inf
    forbidden = ~(cost <= max_cost)
    cost[forbidden] = max_cost + 1.0  # a finite stand-in: linear_sum_assignment needs a feasible matrix
    rows, cols = linear_sum_assignment(cost)
    matches = [(int(r), int(c)) for r, c in zip(rows, cols) if not forbidden[r, c]]
    matched_t = {r for r, _ in matches}
    matched_d = {c for _, c in matches}
    return (matches, [i for i in range(len(tracks)) if i not in matched_t],
            [j for j in range(len(boxes)) if j not in matched_d])


class Tracker:
    """ByteTrack-style tracker: feed it each frame's :class:`Detections`, in order.

    Args:
        track_thresh: detections scoring at least this are *high* (first association, may start tracks).
        match_thresh: largest ``1 - IoU`` accepted in the first association (0.8: IoU >= 0.2).
        track_buffer: frames (at 30 frames/s) a lost track is kept before its id is retired.
        frame_rate: the source's frame rate; ``track_buffer`` is scaled by ``frame_rate / 30``.
        low_thresh: detections between this and ``track_thresh`` only extend existing tracks
            (run the detector with a score threshold at or below it to use them).
        new_track_margin: a track starts only from a detection scoring ``track_thresh + new_track_margin``.
        class_aware: associate detections only with tracks of the same class (label).

    ``update(dets)`` returns the detections that belong to a confirmed track, with ``track_ids``
    ((n,) int64, >= 1) set; detections of tentative tracks and unmatched low-score detections are left out.
    """

    def __init__(
        self,
        track_thresh: float = 0.5,
        match_thresh: float = 0.8,
        track_buffer: int = 30,
        frame_rate: float = 30.0,
        low_thresh: float = 0.1,
        new_track_margin: float = 0.1,
        class_aware: bool = False,
    ) -> None:
        checks = [("track_thresh", 0 <= track_thresh <= 1), ("match_thresh", 0 <= match_thresh <= 1),
                  ("track_buffer", track_buffer >= 0), ("frame_rate", frame_rate > 0),
                  ("low_thresh", 0 <= low_thresh <= track_thresh), ("new_track_margin", new_track_margin >= 0)]
        for name, ok in checks:
            if not ok:
                raise ConfigError(f"Tracker {name}={locals()[name]!r} is out of range "
                                  "(thresholds in [0, 1], low_thresh <= track_thresh, buffer >= 0, frame_rate > 0)")
        self.track_thresh = float(track_thresh)
        self.match_thresh = float(match_thresh)
        self.low_thresh = float(low_thresh)
        self.new_track_thresh = float(track_thresh) + float(new_track_margin)
        self.class_aware = bool(class_aware)
        self.max_lost_frames = int(round(frame_rate / 30.0 * track_buffer))
        self.reset()

    def reset(self) -> None:
        """Forget every track (a new video); ids start again at 1."""
        self.tracks: list[_Track] = []
        self.frame = 0
        self._ids = itertools.count(1)

    def update(self, dets: Detections) -> Detections:
        """Associate one frame's detections with the tracks; returns the tracked ones with ``track_ids``."""
        self.frame += 1
        frame = self.frame
        boxes = np.asarray(dets.boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(dets.scores, dtype=np.float64)
        labels = np.asarray(dets.labels, dtype=np.int64)
        high = np.flatnonzero(scores >= self.track_thresh)
        low = np.flatnonzero((scores >= self.low_thresh) & (scores < self.track_thresh))

        for t in self.tracks:
            t.predict()
        owner: dict[int, _Track] = {}  # detection index -> the confirmed track it extends

        # 1. high-score detections vs confirmed + lost tracks
        pool = [t for t in self.tracks if t.state in (TRACKED, LOST)]
        matches, rest_t, rest_d = _associate(pool, boxes[high], labels[high], self.match_thresh, self.class_aware)
        for ti, di in matches:
            track, d = pool[ti], int(high[di])
            track.match(boxes[d], int(labels[d]), frame)
            track.state = TRACKED
            owner[d] = track
        high_left = high[rest_d]

        # 2. low-score detections vs the confirmed tracks the first pass did not match
        pool2 = [pool[i] for i in rest_t if pool[i].state == TRACKED]
        matches, rest_t2, _ = _associate(pool2, boxes[low], labels[low], 0.5, self.class_aware)
        for ti, di in matches:
            track, d = pool2[ti], int(low[di])
            track.match(boxes[d], int(labels[d]), frame)
            owner[d] = track
        for i in rest_t2:
            pool2[i].state = LOST

        # 3. tentative tracks vs the high-score detections left: confirmed on their second hit, else dropped
        tentative = [t for t in self.tracks if t.state == TENTATIVE]
        matches, rest_t3, rest_d3 = _associate(tentative, boxes[high_left], labels[high_left], 0.7,
                                               self.class_aware)
        for ti, di in matches:
            track, d = tentative[ti], int(high_left[di])
            track.match(boxes[d], int(labels[d]), frame)
            track.state, track.track_id = TRACKED, next(self._ids)
            owner[d] = track
        dropped = {id(tentative[i]) for i in rest_t3}

        # 4. new tracks from confident detections nobody claimed
        for di in rest_d3:
            d = int(high_left[di])
            if scores[d] < self.new_track_thresh:
                continue
            track = _Track(boxes[d], int(labels[d]), frame)
            if frame == 1:
                track.state, track.track_id = TRACKED, next(self._ids)
                owner[d] = track
            self.tracks.append(track)

        # 5. retire lost tracks past the buffer
        self.tracks = [t for t in self.tracks if id(t) not in dropped
                       and not (t.state == LOST and frame - t.last_frame > self.max_lost_frames)]

        order = np.array(sorted(owner), dtype=np.int64)  # keep the input (score) order
        return select(dets, order, [owner[int(d)].track_id for d in order])

    @property
    def active_ids(self) -> list[int]:
        """Ids of the confirmed tracks matched on the last frame."""
        return sorted(t.track_id for t in self.tracks if t.state == TRACKED and t.last_frame == self.frame)

    @property
    def lost_ids(self) -> list[int]:
        """Ids of the tracks currently lost (kept for re-identification)."""
        return sorted(t.track_id for t in self.tracks if t.state == LOST)
