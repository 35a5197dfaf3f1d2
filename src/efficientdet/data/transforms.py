"""Box-aware training and evaluation transforms.

Both transforms take an RGB PIL image and a target dict
``{"boxes": (N, 4) xyxy original pixels, "labels": (N,), "iscrowd": (N,), "image_id": int}``
(numpy arrays or tensors) and return ``(image, target)``:

* ``image``: float32 tensor ``(3, S, S)`` normalised with ``mean``/``std`` (given in [0, 1]);
* ``target``: ``{"boxes": float32 (N, 4) xyxy network pixels, "labels": int64 (N,),
  "iscrowd": bool (N,), "image_id": int, "scale": float (original -> network pixels),
  "orig_size": (h, w)}``.

The network canvas is always the image pasted at the top-left corner, padded bottom/right with the
mean colour (``preprocess.fill_color(mean)``), so training sees what inference sees.

A target may also hold ``"mask"``: an (H, W) uint8 map of class indices at the original size
(segmentation, 255 = ignore). ``TrainTransform`` moves it with the image as a ``tv_tensors.Mask``
(flip, nearest-neighbour resize, crop) and pads it with 255, giving a uint8 (S, S) tensor.
Evaluation scores masks at each image's original resolution, so it needs no mask transform.

Randomness comes from the ``generator`` passed to ``TrainTransform.__call__`` (torch's global
generator when none is given). :func:`efficientdet.data.dataset.make_loader` hands each sample its
own generator seeded in the main process, so augmentation is reproducible for a seed whatever the
number of workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from ..errors import ConfigError
from ..preprocess import IMAGENET_MEAN, IMAGENET_STD, fill_color, normalize

IGNORE_INDEX = 255  # mask value of ignored pixels (padding, object borders, crowd regions)


def _as_tensor(value: Any, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if value is None:
        return torch.zeros(shape, dtype=dtype)
    t = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    return t.to(dtype).reshape(shape)


def _inputs(target: dict | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Target dict (numpy or torch values, any may be missing) -> boxes, labels, iscrowd, image_id."""
    target = target or {}
    raw = target.get("boxes")
    boxes = _as_tensor(raw, torch.float32, (-1, 4)) if raw is not None else torch.zeros((0, 4))
    n = len(boxes)
    labels = _as_tensor(target.get("labels"), torch.int64, (n,))
    iscrowd = _as_tensor(target.get("iscrowd"), torch.bool, (n,))
    return boxes, labels, iscrowd, int(target.get("image_id", -1))


def _check_image_size(image_size: int) -> int:
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise ConfigError(f"image_size must be a positive integer, got {image_size!r}")
    return image_size


def color_jitter(
    image: torch.Tensor, strength: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random brightness, contrast, saturation (factors ``1 ± strength``) and hue (``± strength / 4``,
    at most 0.5) in random order, on a uint8 ``(3, H, W)`` image."""
    g = generator

    def factor() -> float:
        return max(0.0, 1.0 + strength * (2.0 * float(torch.rand((), generator=g)) - 1.0))

    hue_range = min(0.5, strength / 4)
    for op in torch.randperm(4, generator=g).tolist():
        if op == 0:
            image = F.adjust_brightness(image, factor())
        elif op == 1:
            image = F.adjust_contrast(image, factor())
        elif op == 2:
            image = F.adjust_saturation(image, factor())
        elif hue_range > 0:
            image = F.adjust_hue(image, hue_range * (2.0 * float(torch.rand((), generator=g)) - 1.0))
    return image


class TrainTransform:
    """The official EfficientDet training augmentation (flip + scale jitter + random crop).

    1. horizontal flip with probability ``hflip``;
    2. resize keeping the aspect ratio so that the long side is ``image_size * U(scale_range)``;
    3. random crop of at most ``S x S`` (when the resized image is larger);
    4. optional colour jitter (brightness/contrast/saturation ``color_jitter``, hue a quarter of it);
    5. pad bottom/right to ``S x S`` with the mean colour, normalise.

    Boxes follow every geometric step, are clipped to the crop, and are dropped (with their label
    and crowd flag) when narrower or shorter than ``min_size`` network pixels or when less than
    ``min_visibility`` of their (resized) area remains inside the crop.

    Args:
        image_size: square network input side ``S`` in pixels.
        mean, std: normalisation constants in [0, 1].
        scale_range: ``(low, high)`` factors of ``S`` for the jittered long side.
        hflip: probability of a horizontal flip.
        color_jitter: colour-jitter strength (0 = off).
        min_size: smallest kept box side, network pixels.
        min_visibility: smallest kept fraction of a box's area after cropping.
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        scale_range: tuple[float, float] = (0.1, 2.0),
        hflip: float = 0.5,
        color_jitter: float = 0.0,
        min_size: float = 1.0,
        min_visibility: float = 0.1,
    ) -> None:
        self.image_size = _check_image_size(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        lo, hi = (float(v) for v in scale_range)
        if not 0 < lo <= hi:
            raise ConfigError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range!r}")
        if not 0.0 <= hflip <= 1.0:
            raise ConfigError(f"hflip must be a probability in [0, 1], got {hflip!r}")
        if color_jitter < 0:
            raise ConfigError(f"color_jitter must be >= 0, got {color_jitter!r}")
        self.scale_range = (lo, hi)
        self.hflip = float(hflip)
        self.color_jitter = float(color_jitter)
        self.min_size = float(min_size)
        self.min_visibility = float(min_visibility)

    def __call__(
        self, image: Image.Image, target: dict | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict]:
        """RGB PIL image + target -> ``(float32 (3, S, S), target)`` (see the module docstring).

        All random draws use ``generator`` (torch's global generator when ``None``).
        """
        g = generator
        size = self.image_size
        boxes_in, labels, iscrowd, image_id = _inputs(target)
        w, h = image.size
        img = tv_tensors.Image(F.pil_to_tensor(image.convert("RGB") if image.mode != "RGB" else image))
        boxes = tv_tensors.BoundingBoxes(boxes_in, format="XYXY", canvas_size=(h, w))
        raw_mask = (target or {}).get("mask")
        mask = None if raw_mask is None else tv_tensors.Mask(torch.as_tensor(np.asarray(raw_mask, np.uint8))[None])

        if self.hflip > 0 and float(torch.rand((), generator=g)) < self.hflip:
            img, boxes = F.horizontal_flip(img), F.horizontal_flip(boxes)
            mask = F.horizontal_flip(mask) if mask is not None else None

        lo, hi = self.scale_range
        jitter = lo + (hi - lo) * float(torch.rand((), generator=g))
        scale = size * jitter / max(h, w)
        nh, nw = max(1, int(h * scale)), max(1, int(w * scale))
        img = F.resize(img, [nh, nw], antialias=True)
        boxes = F.resize(boxes, [nh, nw])
        mask = F.resize(mask, [nh, nw]) if mask is not None else None  # nearest for masks
        area_before = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)

        top = int(torch.randint(0, nh - size + 1, (), generator=g)) if nh > size else 0
        left = int(torch.randint(0, nw - size + 1, (), generator=g)) if nw > size else 0
        ch, cw = min(nh, size), min(nw, size)
        if (ch, cw) != (nh, nw):
            img = F.crop(img, top, left, ch, cw)
            boxes = F.crop(boxes, top, left, ch, cw)
            mask = F.crop(mask, top, left, ch, cw) if mask is not None else None

        if self.color_jitter > 0:
            img = color_jitter(img, self.color_jitter, g)
        if (ch, cw) != (size, size):
            img = F.pad(img, [0, 0, size - cw, size - ch], fill=list(fill_color(self.mean)))
            mask = F.pad(mask, [0, 0, size - cw, size - ch], fill=IGNORE_INDEX) if mask is not None else None

        xyxy = boxes.as_subclass(torch.Tensor).clone()
        xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, cw)
        xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, ch)
        bw, bh = xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]
        keep = (bw >= self.min_size) & (bh >= self.min_size)
        keep &= bw * bh >= self.min_visibility * area_before
        tensor = normalize(img.as_subclass(torch.Tensor).unsqueeze(0), self.mean, self.std)[0]
        out = {
            "boxes": xyxy[keep].contiguous(),
            "labels": labels[keep],
            "iscrowd": iscrowd[keep],
            "image_id": image_id,
            "scale": float(scale),
            "orig_size": (h, w),
        }
        if mask is not None:
            out["mask"] = mask.as_subclass(torch.Tensor)[0].contiguous()
        return tensor, out

    def __repr__(self) -> str:
        return (f"TrainTransform(image_size={self.image_size}, scale_range={self.scale_range}, "
                f"hflip={self.hflip}, color_jitter={self.color_jitter})")
