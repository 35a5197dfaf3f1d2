"""Evaluation: COCO AP/AR of detections against COCO ground truth."""

from efficientdet.eval.coco import (
    METRIC_NAMES,
    Predictions,
    evaluate_detections,
    format_metrics,
    load_ground_truth,
    load_predictions,
)

__all__ = [
    "METRIC_NAMES",
    "Predictions",
    "evaluate_detections",
    "format_metrics",
    "load_ground_truth",
    "load_predictions",
]
