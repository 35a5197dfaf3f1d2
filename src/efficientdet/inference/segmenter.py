"""Semantic-segmentation inference at the original resolution (PyTorch).

image -> letterbox + normalise (the detector's preprocessing) -> network -> (K, S, S) logits on the
canvas -> the image's region of the canvas, bilinearly resized to the original (H, W) -> arg-max -> an
(H, W) uint8 mask of class indices. Joint models give the same masks through
:class:`~efficientdet.inference.detector.Detector` (``Detections.mask``). Evaluation:
:mod:`efficientdet.eval.segmentation`; exported files: :mod:`.seg_export` / :mod:`.seg_onnxrt`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..masks import content_size
from ..preprocess import preprocess_batch


def seg_logits(outputs: Any) -> torch.Tensor:
    """The (B, K, H, W) segmentation logits of a model's output (segmentation-only or joint)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, tuple | list) and len(outputs) == 3:
        return outputs[2]
    raise ValueError("the model has no segmentation head (create it with seg_head='p2' or 'decoder')")


def logits_to_masks(
    logits: torch.Tensor, sizes: Sequence[tuple[int, int]], scales: Sequence[float]
) -> list[np.ndarray]:
    """Canvas logits (B, K, S, S) -> one (H, W) uint8 mask per image at its original ``(width, height)``:
    the image's region (``int(side * scale)``, as the letterbox pastes it), bilinear resize, arg-max."""
    out = []
    for i, ((w, h), scale) in enumerate(zip(sizes, scales)):
        cw, ch = content_size(w, h, scale)
        region = logits[i : i + 1, :, :ch, :cw].float()
        if (ch, cw) != (h, w):
            region = F.interpolate(region, size=(h, w), mode="bilinear", align_corners=False)
        out.append(region[0].argmax(0).to(torch.uint8).cpu().numpy())
    return out


class Segmenter:
    """Segment images with a segmentation (or joint) EfficientDet.

    Args:
        model: a built model or a variant name (``d0_seg`` ...).
        weights: checkpoint for a named model (see :func:`efficientdet.create_model`).
        device: ``cpu``, ``cuda`` or a torch device.
        batch_size: images per forward pass.
        image_size: network input side (default: the model's).

    ``segmenter(images)`` takes paths, PIL images, HWC uint8 arrays or CHW tensors and returns a list
    of (H, W) uint8 masks at the images' original sizes (``batch_size=n`` overrides the images per pass).
    """

    def __init__(self, model: Any = "efficientdet_d0_seg", weights: str | Path | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 8, image_size: int | None = None) -> None:
        from ..factory import create_model

        if isinstance(model, str) or model is None:
            model = create_model(model, weights=weights)
        if not model.config.seg_head:
            raise ValueError(f"{model.config.name} has no segmentation head; use a *_seg model or seg_head=...")
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.image_size = int(image_size or model.config.image_size)
        self.class_names = list(getattr(model, "seg_class_names", None) or [])

    @property
    def config(self) -> Any:
        """The model's :class:`~efficientdet.variants.ModelConfig`."""
        return self.model.config

    @torch.no_grad()
    def __call__(self, images: Iterable[Any], batch_size: int | None = None) -> list[np.ndarray]:
        from ..images import is_single_image, to_pil

        pils = [to_pil(im) for im in ([images] if is_single_image(images) else images)]
        out: list[np.ndarray] = []
        cfg = self.model.config
        step = int(batch_size or self.batch_size)
        for start in range(0, len(pils), step):
            chunk = pils[start : start + step]
            batch, scales = preprocess_batch(chunk, self.image_size, cfg.mean, cfg.std, channels_last=False)
            logits = seg_logits(self.model(batch.to(self.device)))
            out += logits_to_masks(logits, [im.size for im in chunk], scales)
        return out
