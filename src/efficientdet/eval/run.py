"""Evaluate a detector on a data set: predictions for every image, then COCO metrics."""

from __future__ import annotations

import sys
from collections.abc import Callable

from ..data.records import DetectionData
from ..inference.detector import Detector
from .coco import evaluate_detections


def predict_dataset(
    detector: Detector,
    data: DetectionData,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """COCO results (``image_id``, ``category_id`` as the weights define them, ``bbox`` xywh, ``score``)."""
    results: list[dict] = []
    samples = data.samples
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        for sample, det in zip(chunk, detector([s.path for s in chunk], batch_size=batch_size)):
            for rec in det.to_coco(file_name=sample.file_name, image_id=int(sample.image_id)):
                results.append(rec)
        if progress is not None:
            progress(min(start + batch_size, len(samples)), len(samples))
    return results


def evaluate_model(
    detector: Detector,
    data: DetectionData,
    batch_size: int = 8,
    backend: str = "pycocotools",
    show_progress: bool = False,
) -> tuple[dict, list[dict]]:
    """Run ``detector`` on every image of ``data`` and score it with COCO metrics.

    Returns ``(metrics, detections)``; ``metrics`` has the 12 COCO numbers and ``per_class`` AP keyed
    by the data set's class names.
    """

    def bar(done: int, total: int) -> None:
        print(f"\revaluating {done}/{total} images", end="" if done < total else "\n", file=sys.stderr)

    dets = predict_dataset(detector, data, batch_size, bar if show_progress else None)
    names = {int(cid): name for cid, name in zip(data.category_ids, data.class_names)}
    metrics = evaluate_detections(data.to_coco(), dets, class_names=names, backend=backend)
    return metrics, dets
