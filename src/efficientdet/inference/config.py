"""``PostprocessConfig``: the one home of the post-processing settings and their defaults (torch-free).

The defaults are the official evaluation settings (score threshold 0.001, per-class NMS at IoU 0.5,
the best 100 detections, top-k 5000 candidates). :data:`PREDICT` is the same with the 0.25 score
threshold that prediction (``predict``, ``Detector``, the service) uses by default.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError


@dataclass(frozen=True)
class PostprocessConfig:
    """Settings of the post-processing (see the module docstring for the defaults)."""

    score_threshold: float = 0.001
    iou_threshold: float = 0.5
    max_det: int = 100
    topk: int = 5000
    soft_nms: bool = False
    soft_nms_sigma: float = 0.5

    def __post_init__(self) -> None:
        for name in ("score_threshold", "iou_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name}={value} must be in [0, 1]")
        for name in ("max_det", "topk"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be a positive integer")

    def updated(self, **changes: object) -> PostprocessConfig:
        """A copy with the given settings; ``None`` values keep the current setting."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


#: prediction defaults: the evaluation settings with a 0.25 score threshold
PREDICT = PostprocessConfig(score_threshold=0.25)

#: the evaluation defaults, for signatures that spell the settings out one by one
DEFAULTS = PostprocessConfig()


def cache_root() -> Path:
    """Where inference keeps what it derives from weights (exports, compiled models, measurements):
    ``$EFFICIENTDET_CACHE`` or ``~/.cache/efficientdet``."""
    root = os.environ.get("EFFICIENTDET_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "efficientdet"
