"""Sliced inference for small objects: run any detector on overlapping tiles (plus the whole image) and merge.

A large image letterboxed to the network's input (512 px for D0) shrinks a 16 px object to 4 px, below
what the network can see. :class:`TiledDetector` crops overlapping ``tile`` x ``tile`` windows at full
resolution, runs the wrapped detector on each (and, with ``full_image=True``, on the whole image, for
objects larger than a tile), shifts the boxes back to original pixels and merges them:

1. a box that touches an *inner* tile edge (an edge that is not the image border) is *truncated*: the
   tile cut its object. When a larger box of the same class from another tile or the whole image
   covers most of it (``cover_threshold`` of its area), it is dropped;
2. truncated boxes left (an object bigger than the overlap is cut in every tile) are joined with
   truncated boxes of the same class cut on the facing side of a neighbouring tile, when they meet and
   line up across the cut (1-D IoU >= 0.5): the union box, with the higher score;
3. duplicates across tiles are removed by class-wise NMS (``merge="nms"``,
   ``torchvision.ops.batched_nms``) or fused (``merge="wbf"``: clusters of same-class boxes with IoU >
   ``iou_threshold`` become their score-weighted mean box with the cluster's best score).

The wrapped detector is any callable ``detector(images, batch_size=n) -> list[Detections]``
(:class:`efficientdet.Detector`, :class:`efficientdet.deploy.OnnxModel`); the result is the same type,
in original-image pixels, so tiling works for images, folders, video frames and evaluation alike.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from ..detections import Detections
from ..errors import ConfigError
from ..images import is_single_image, to_pil

MERGES = ("nms", "wbf")


#: more tiles than this for one image is a mistake in the options (overlap near 1), not a workload
MAX_TILES = 4096


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles along one axis: first at 0, last ending at ``length``, consecutive tiles
    overlapping by at least ``overlap * tile`` pixels (evenly spread). One tile when ``length <= tile``."""
    if length <= tile:
        return [0]
    stride = max(1, int(math.floor(tile * (1.0 - overlap))))
    n = math.ceil((length - tile) / stride) + 1
    return [(i * (length - tile)) // (n - 1) for i in range(n)]


def tile_grid(width: int, height: int, tile: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """Tiles covering a ``width`` x ``height`` image, as (x0, y0, x1, y1) pixel windows, row by row."""
    return [(x, y, min(x + tile, width), min(y + tile, height))
            for y in tile_starts(height, tile, overlap) for x in tile_starts(width, tile, overlap)]


def _inter_over_first(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) intersection area / area of a[i] for xyxy boxes (float32: this is the merge's largest matrix)."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    np.maximum(iw, 0, out=iw)
    np.maximum(ih, 0, out=ih)
    iw *= ih
    area = np.maximum((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]), 1e-9)
    iw /= area[:, None]
    return iw


def _overlap_1d(a0: np.ndarray, a1: np.ndarray, b0: np.ndarray, b1: np.ndarray) -> np.ndarray:
    """1-D IoU of intervals [a0, a1] (n,) and [b0, b1] (m,): (n, m)."""
    inter = np.clip(np.minimum(a1[:, None], b1[None]) - np.maximum(a0[:, None], b0[None]), 0, None)
    union = np.maximum(a1[:, None], b1[None]) - np.minimum(a0[:, None], b0[None])
    return inter / np.clip(union, 1e-9, None)


class TiledDetector:
    """Sliced inference around a detector (see the module docstring for the merge).

    Args:
        detector: ``detector(images, batch_size=n) -> list[Detections]``.
        tile: tile side in original pixels (for a network trained at scale, its input size).
        overlap: minimum overlap of neighbouring tiles as a fraction of ``tile`` (in [0, 1)); objects
            smaller than ``overlap * tile`` are always whole in some tile.
        full_image: also run the whole image (the detector downscales it) for objects larger than a tile.
        merge: ``"nms"`` or ``"wbf"`` (weighted box fusion-like averaging).
        iou_threshold: IoU above which same-class boxes are duplicates (NMS) or fused (wbf).
        max_det: most detections per image after merging, best first (default: the wrapped detector's
            ``settings.max_det``, else 100).
        edge_margin: a box within this many pixels of an inner tile edge counts as cut by it.
        cover_threshold: share of a cut box's area a larger same-class box must cover to replace it.
    """

    def __init__(
        self,
        detector: Callable[..., list[Detections]],
        tile: int,
        overlap: float = 0.2,
        full_image: bool = True,
        merge: str = "nms",
        iou_threshold: float = 0.5,
        max_det: int | None = None,
        edge_margin: float = 2.0,
        cover_threshold: float = 0.7,
    ) -> None:
        if not isinstance(tile, int) or isinstance(tile, bool) or tile < 32:
            raise ConfigError(f"tile={tile!r} must be an integer >= 32 (pixels)")
        if not 0.0 <= overlap < 1.0:
            raise ConfigError(f"tile overlap={overlap!r} must be in [0, 1)")
        if merge not in MERGES:
            raise ConfigError(f"merge={merge!r} must be one of {', '.join(MERGES)}")
        if max_det is None:
            max_det = getattr(getattr(detector, "settings", None), "max_det", 100)
        if not 0.0 < iou_threshold <= 1.0 or not 0.0 < cover_threshold <= 1.0 or max_det < 1:
            raise ConfigError("iou_threshold and cover_threshold must be in (0, 1], max_det >= 1")
        from torchvision.ops import batched_nms, box_iou  # noqa: F401  (seconds to import: now, not in the first image's time)

        self.detector = detector
        self.tile, self.overlap, self.full_image, self.merge = tile, float(overlap), bool(full_image), merge
        self.iou_threshold, self.max_det = float(iou_threshold), int(max_det)
        self.edge_margin, self.cover_threshold = float(edge_margin), float(cover_threshold)

    # what callers read from a detector (not its prepare/detect_prepared stages: those would skip the tiling)
    @property
    def config(self):
        return getattr(self.detector, "config", None)

    @property
    def labels(self):
        return getattr(self.detector, "labels", None)

    @property
    def device(self):
        return getattr(self.detector, "device", "cpu")

    def __call__(self, images: object | Iterable[object], batch_size: int = 8) -> list[Detections]:
        """Detect in one image or many (paths, PIL, numpy, tensors); a list of :class:`Detections` in input order."""
        if batch_size <= 0:
            raise ConfigError(f"batch_size={batch_size} must be a positive integer")
        items = [images] if is_single_image(images) else list(images)  # type: ignore[arg-type]
        return [self._detect_one(item, batch_size) for item in items]

    def _detect_one(self, item: object, batch_size: int) -> Detections:
        pil = to_pil(item)
        w, h = pil.size
        windows = tile_grid(w, h, self.tile, self.overlap)
        if len(windows) > MAX_TILES:
            where = f"{item}: " if isinstance(item, str | Path) else ""
            raise ConfigError(
                f"{where}{w}x{h} pixels in {self.tile} px tiles overlapping {self.overlap:g} make {len(windows)} "
                f"tiles (at most {MAX_TILES}); use a larger --tile or a smaller --tile-overlap (0.2 is typical)")
        crops = [pil.crop(win) for win in windows]
        if self.full_image and len(windows) > 1:
            windows.append((0, 0, w, h))
            crops.append(pil)
        dets = self.detector(crops, batch_size=batch_size)
        t0 = time.perf_counter()
        boxes, scores, labels, names, cids, src = [], [], [], [], [], []
        for k, (win, det) in enumerate(zip(windows, dets)):
            boxes.append(np.asarray(det.boxes, np.float64).reshape(-1, 4) + [win[0], win[1], win[0], win[1]])
            scores.append(np.asarray(det.scores, np.float64))
            labels.append(np.asarray(det.labels, np.int64))
            names += list(det.names)
            cids.append(np.asarray(det.category_ids, np.int64))
            src.append(np.full(len(det), k, np.int64))
        b, s, lab, c, tile_of = (np.concatenate(x) if x else np.zeros(0) for x in (boxes, scores, labels, cids, src))
        b = b.reshape(-1, 4)
        keep = self.merge_boxes(b, s, lab.astype(np.int64), tile_of.astype(np.int64), windows, (w, h))
        index, b, s = keep
        timings: dict[str, float] = {}
        for det in dets:
            for key, value in det.timings.items():
                timings[key] = timings.get(key, 0.0) + value
        timings["postprocess_ms"] = timings.get("postprocess_ms", 0.0) + (time.perf_counter() - t0) * 1e3
        return Detections(
            boxes=b.astype(np.float32).reshape(-1, 4), scores=s.astype(np.float32),
            labels=lab[index].astype(np.int64), names=[names[i] for i in index.tolist()],
            category_ids=c[index].astype(np.int64), image_size=(w, h),
            source=str(item) if isinstance(item, str | Path) else None, timings=timings,
        )

    # -- merging --------------------------------------------------------------------------------------
    def cut_sides(self, boxes: np.ndarray, windows: Sequence[tuple[int, int, int, int]], tile_of: np.ndarray,
                  image_size: tuple[int, int]) -> np.ndarray:
        """(n, 4) bool: box cut by its tile's inner (left, top, right, bottom) edge."""
        w, h = image_size
        if not len(boxes):
            return np.zeros((0, 4), bool)
        win = np.asarray(windows, np.float64)[tile_of]
        m = self.edge_margin
        return np.stack([
            (win[:, 0] > 0) & (boxes[:, 0] - win[:, 0] <= m),
            (win[:, 1] > 0) & (boxes[:, 1] - win[:, 1] <= m),
            (win[:, 2] < w) & (win[:, 2] - boxes[:, 2] <= m),
            (win[:, 3] < h) & (win[:, 3] - boxes[:, 3] <= m),
        ], 1)

    def merge_boxes(self, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, tile_of: np.ndarray,
                    windows: Sequence[tuple[int, int, int, int]], image_size: tuple[int, int]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Merge boxes from all windows (original pixels). Returns (index of the kept source box, its
        (possibly joined or fused) box, score), best first, at most ``max_det``."""
        cut = self.cut_sides(boxes, windows, tile_of, image_size)
        boxes, scores = boxes.copy(), scores.copy()
        alive = np.ones(len(boxes), bool)
        for cls in np.unique(labels):
            idx = np.flatnonzero(labels == cls)
            cut_idx = idx[cut[idx].any(1)]
            if not len(cut_idx):
                continue
            # 1. cut boxes covered by a larger same-class box from another window: dropped
            cover = _inter_over_first(boxes[cut_idx], boxes[idx]) >= self.cover_threshold
            area = np.prod(boxes[:, 2:] - boxes[:, :2], 1)
            cover &= area[idx][None, :] > area[cut_idx][:, None] * 1.05
            cover &= tile_of[idx][None, :] != tile_of[cut_idx][:, None]
            cover &= scores[idx][None, :] >= 0.5 * scores[cut_idx][:, None]
            alive[cut_idx[cover.any(1)]] = False
            # 2. cut boxes left: join pieces of one object cut on facing sides of neighbouring windows
            rest = cut_idx[alive[cut_idx]]
            self._join_pieces(rest, boxes, scores, cut, tile_of, alive)
        idx = np.flatnonzero(alive)
        if self.merge == "nms":
            keep, fused, fused_scores = self._nms(boxes[idx], scores[idx], labels[idx])
        else:
            keep, fused, fused_scores = self._fuse(boxes[idx], scores[idx], labels[idx])
        order = np.argsort(-fused_scores, kind="stable")[: self.max_det]
        return idx[keep][order], fused[order], fused_scores[order]

    @staticmethod
    def _join_pieces(rest: np.ndarray, boxes: np.ndarray, scores: np.ndarray, cut: np.ndarray,
                     tile_of: np.ndarray, alive: np.ndarray) -> None:
        """Union of cut pieces (in place: the best piece takes the union box, the others die)."""
        changed = True
        while changed and len(rest) > 1:
            changed = False
            b = boxes[rest]
            for first, second, lo, hi in ((2, 0, 1, 3), (3, 1, 0, 2)):  # right|left cuts, bottom|top cuts
                # a cut on side `first`, b cut on the facing side `second`, they meet, and line up across
                meet = (b[:, None, first] >= b[None, :, second]) & (b[:, None, second] <= b[None, :, first])
                pair = cut[rest][:, None, first] & cut[rest][None, :, second] & meet
                pair &= _overlap_1d(b[:, lo], b[:, hi], b[:, lo], b[:, hi]) >= 0.5
                pair &= tile_of[rest][:, None] != tile_of[rest][None, :]
                ii, jj = np.nonzero(pair)
                for i, j in zip(ii.tolist(), jj.tolist()):
                    a, c = rest[i], rest[j]
                    if not (alive[a] and alive[c]):
                        continue
                    keep, drop = (a, c) if scores[a] >= scores[c] else (c, a)
                    boxes[keep] = [min(boxes[a, 0], boxes[c, 0]), min(boxes[a, 1], boxes[c, 1]),
                                   max(boxes[a, 2], boxes[c, 2]), max(boxes[a, 3], boxes[c, 3])]
                    cut[keep] = (cut[a] | cut[c])
                    cut[keep, [first, second]] = False
                    alive[drop] = False
                    changed = True
            rest = rest[alive[rest]]

    def _nms(self, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray):
        import torch
        from torchvision.ops import batched_nms

        if not len(boxes):
            return np.zeros(0, np.int64), boxes, scores
        keep = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels),
                           self.iou_threshold).numpy()
        return keep, boxes[keep], scores[keep]

    def _fuse(self, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray):
        """Greedy clusters in score order (IoU with the cluster's fused box > threshold, same class)."""
        import torch
        from torchvision.ops import box_iou

        order = np.argsort(-scores, kind="stable")
        heads: list[int] = []  # source index of each cluster's best box
        members: list[list[int]] = []
        fused = np.zeros((0, 4))
        cluster_label = np.zeros(0, np.int64)
        for i in order.tolist():
            if len(heads):
                iou = box_iou(torch.from_numpy(boxes[i : i + 1]), torch.from_numpy(fused))[0].numpy()
                iou[cluster_label != labels[i]] = 0.0
                j = int(np.argmax(iou))
                if iou[j] > self.iou_threshold:
                    members[j].append(i)
                    wts = scores[members[j]]
                    fused[j] = (boxes[members[j]] * wts[:, None]).sum(0) / wts.sum()
                    continue
            heads.append(i)
            members.append([i])
            fused = np.concatenate([fused, boxes[i : i + 1]])
            cluster_label = np.append(cluster_label, labels[i])
        keep = np.asarray(heads, np.int64)
        return keep, fused, scores[keep]
