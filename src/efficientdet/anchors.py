"""Anchor boxes, laid out in the order the heads predict them.

For every pyramid level (P3..P7 by default) and every feature-map location there are
``num_scales * len(aspect_ratios)`` anchors (9 by default). Anchor order in the flattened tensor is
(level, y, x, scale, aspect): this is the order of the flattened head outputs as well
(see :func:`efficientdet.model.efficientdet.flatten_outputs`).

Geometry (official EfficientDet / effdet): the feature size of level ``l`` is the image size halved
``l`` times with ceiling; stride = image size / feature size (a float when it does not divide);
centres at ``stride / 2 + k * stride``; size = ``anchor_scale * stride * 2 ** (s / num_scales)``,
times the (x, y) multipliers of the aspect ratio. Boxes are xyxy in network-input pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

DEFAULT_ASPECT_RATIOS: tuple[tuple[float, float], ...] = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))


def feature_sizes(image_size: tuple[int, int], min_level: int, max_level: int) -> list[tuple[int, int]]:
    """(height, width) of the feature map of each level ``min_level..max_level`` (ceil halving)."""
    h, w = image_size
    sizes = []
    for level in range(1, max_level + 1):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        if level >= min_level:
            sizes.append((h, w))
    return sizes


def generate_anchors(
    image_size: int | tuple[int, int],
    min_level: int = 3,
    max_level: int = 7,
    anchor_scale: float = 4.0,
    num_scales: int = 3,
    aspect_ratios: Sequence[tuple[float, float]] = DEFAULT_ASPECT_RATIOS,
) -> torch.Tensor:
    """All anchors for a network input of ``image_size`` as a float32 (N, 4) xyxy tensor.

    Computed in float64 (as the reference implementations do) and rounded to float32 once.
    """
    ih, iw = (image_size, image_size) if isinstance(image_size, int) else image_size
    per_level = []
    for fh, fw in feature_sizes((ih, iw), min_level, max_level):
        sy, sx = ih / fh, iw / fw
        ys = np.arange(sy / 2, ih, sy)[:fh]
        xs = np.arange(sx / 2, iw, sx)[:fw]
        cy, cx = np.meshgrid(ys, xs, indexing="ij")  # (fh, fw)
        half = []  # (A, 2): half width, half height per anchor config
        for s in range(num_scales):
            octave = 2.0 ** (s / num_scales)
            for ax, ay in aspect_ratios:
                half.append((anchor_scale * sx * octave * ax / 2.0, anchor_scale * sy * octave * ay / 2.0))
        hw = np.asarray(half)  # (A, 2)
        cx, cy = cx.reshape(-1, 1), cy.reshape(-1, 1)  # (HW, 1)
        boxes = np.stack([cx - hw[:, 0], cy - hw[:, 1], cx + hw[:, 0], cy + hw[:, 1]], axis=-1)  # (HW, A, 4)
        per_level.append(boxes.reshape(-1, 4))
    return torch.from_numpy(np.concatenate(per_level, axis=0)).float()


def anchors_for(config: object, image_size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """The (N, 4) xyxy anchors of a :class:`~efficientdet.variants.ModelConfig` (or its ``to_dict()``) at its
    input size (or ``image_size``): the one place that turns a config's anchor geometry into anchors."""
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k)
    return generate_anchors(image_size if image_size is not None else get("image_size"), get("min_level"),
                            get("max_level"), get("anchor_scale"), get("num_scales"),
                            [tuple(r) for r in get("aspect_ratios")])
