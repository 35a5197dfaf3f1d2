"""``Detections``: the result of detecting objects in one image (numpy arrays, no torch needed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Detections:
    """Detections of one image.

    Attributes:
        boxes: (n, 4) float32 xyxy in original-image pixels.
        scores: (n,) float32 in [0, 1], descending.
        labels: (n,) int64, 0-based class index of the model.
        names: class name per detection. category_ids: (n,) original category id per detection.
        image_size: original (width, height). source: the file it came from, if any.
        track_ids: (n,) int64 persistent object id per detection when a tracker set it
            (:class:`efficientdet.track.Tracker`), else ``None``.
        mask: models that segment (joint detection + segmentation, or segmentation-only with no boxes):
            (H, W) uint8 class indices at the original size (segmentation classes, background 0);
            ``None`` otherwise.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: list[str]
    category_ids: np.ndarray
    image_size: tuple[int, int]
    source: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    track_ids: np.ndarray | None = None
    mask: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def from_arrays(
        cls,
        boxes: np.ndarray,
        scores: np.ndarray,
        labels: np.ndarray,
        class_names: Sequence[str | None],
        category_ids: Sequence[int],
        image_size: tuple[int, int],
        source: object = None,
        timings: dict[str, float] | None = None,
    ) -> Detections:
        """Detections from model outputs: names and category ids looked up from the 0-based ``labels``;
        ``source`` is kept when it is a path."""
        labels = np.asarray(labels, dtype=np.int64)
        return cls(
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            scores=np.asarray(scores, dtype=np.float32),
            labels=labels,
            names=[str(class_names[i]) for i in labels],
            category_ids=np.asarray([category_ids[i] for i in labels], dtype=np.int64),
            image_size=image_size,
            source=str(source) if isinstance(source, str | Path) else None,
            timings=dict(timings or {}),
        )

    def to_coco(self, file_name: str | None = None, image_id: int | None = None) -> list[dict]:
        """COCO results records: bbox [x, y, w, h] in original pixels, the weights' category ids
        (plus ``track_id`` when the detections were tracked)."""
        name = file_name if file_name is not None else self.source
        out = []
        for i, (box, score, cid, cname) in enumerate(zip(
            self.boxes.tolist(), self.scores.tolist(), self.category_ids.tolist(), self.names
        )):
            rec = {
                "bbox": [round(box[0], 3), round(box[1], 3), round(box[2] - box[0], 3), round(box[3] - box[1], 3)],
                "score": round(float(score), 5),
                "category_id": int(cid),
                "category_name": cname,
            }
            if image_id is not None:
                rec["image_id"] = image_id
            if name is not None:
                rec["file_name"] = name
            if self.track_ids is not None:
                rec["track_id"] = int(self.track_ids[i])
            out.append(rec)
        return out

    def counts(self) -> dict[str, int]:
        """Detections per class name, most frequent first."""
        counts: dict[str, int] = {}
        for n in self.names:
            counts[n] = counts.get(n, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


@dataclass
class PreparedBatch:
    """Images made ready for a detector's network by its ``prepare`` (the CPU half of a call).

    Attributes:
        sources: the inputs as given. images: the same as RGB PIL images (original sizes).
        inputs: the runtime's input (opaque: the network batch, letterbox scales, sizes).
        preprocess_s: seconds spent preparing.
    """

    sources: list[Any]
    images: list[Any]
    inputs: Any
    preprocess_s: float
