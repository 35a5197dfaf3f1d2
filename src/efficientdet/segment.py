"""Semantic segmentation with EfficientDet: the loss, inference at original resolution, evaluation.

Inference: image -> letterbox + normalise (the detector's preprocessing) -> network -> (K, S, S) logits
on the canvas -> the image's region of the canvas, bilinearly resized to the original (H, W) ->
arg-max -> an (H, W) uint8 mask of class indices. Evaluation scores those masks against the ground
truth at each image's original resolution with one confusion matrix
(:mod:`efficientdet.eval.segmentation`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .data.transforms import IGNORE_INDEX
from .masks import content_size
from .preprocess import preprocess_batch


def seg_logits(outputs: Any) -> torch.Tensor:
    """The (B, K, H, W) segmentation logits of a model's output (segmentation-only or joint)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, tuple | list) and len(outputs) == 3:
        return outputs[2]
    raise ValueError("the model has no segmentation head (create it with seg_head='p2' or 'decoder')")


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Pixel-wise softmax cross-entropy (the official code's sparse categorical cross-entropy), mean over
    the pixels that are not ``ignore_index``; 0 (with a gradient path) when every pixel is ignored.

    ``logits``: (B, K, H, W), any float dtype (computed in float32); ``masks``: (B, H, W) int64.
    """
    logits = logits.float()
    if not bool((masks != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, masks.long(), ignore_index=ignore_index)


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
    of (H, W) uint8 masks at the images' original sizes.
    """

    def __init__(self, model: Any = "efficientdet_d0_seg", weights: str | Path | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 8, image_size: int | None = None) -> None:
        from .factory import create_model

        if isinstance(model, str) or model is None:
            model = create_model(model, weights=weights)
        if not model.config.seg_head:
            raise ValueError(f"{model.config.name} has no segmentation head; use a *_seg model or seg_head=...")
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.image_size = int(image_size or model.config.image_size)
        self.class_names = list(getattr(model, "seg_class_names", None) or [])

    @torch.no_grad()
    def __call__(self, images: Iterable[Any]) -> list[np.ndarray]:
        from .images import to_pil

        pils = [to_pil(im) for im in images]
        out: list[np.ndarray] = []
        cfg = self.model.config
        for start in range(0, len(pils), self.batch_size):
            chunk = pils[start : start + self.batch_size]
            batch, scales = preprocess_batch(chunk, self.image_size, cfg.mean, cfg.std, channels_last=False)
            logits = seg_logits(self.model(batch.to(self.device)))
            out += logits_to_masks(logits, [im.size for im in chunk], scales)
        return out


def evaluate_segmentation(
    model: torch.nn.Module,
    data: Any,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    image_size: int | None = None,
    save_dir: str | Path | None = None,
    on_masks: Callable[[list[Any], list[np.ndarray]], None] | None = None,
) -> dict[str, Any]:
    """mIoU & co. of ``model`` on a :class:`~efficientdet.data.segmentation.SegmentationData` split.

    Each prediction is made at the original resolution (see :func:`logits_to_masks`) and added to one
    confusion matrix; ``save_dir`` also writes each predicted mask as ``<stem>.png`` (palette);
    ``on_masks(samples, masks)`` sees every batch (e.g. for overlay plots).
    """
    from .errors import ConfigError
    from .eval.segmentation import ConfusionMatrix
    from .images import load_image
    from .masks import save_palette_mask

    if model.config.seg_classes != data.num_classes:
        raise ConfigError(f"the model predicts {model.config.seg_classes} segmentation classes but the data has "
                          f"{data.num_classes} ({', '.join(data.class_names[:6])}...); pass the matching --names "
                          "or weights")
    device = device or next(model.parameters()).device
    was_training = model.training
    segmenter = Segmenter(model, device=device, batch_size=batch_size, image_size=image_size)
    cm = ConfusionMatrix(data.num_classes)
    try:
        for start in range(0, len(data.samples), batch_size):
            samples = data.samples[start : start + batch_size]
            masks = segmenter([load_image(s.path) for s in samples])
            for s, pred in zip(samples, masks):
                gt = s.load_mask()
                if pred.shape != gt.shape:  # the image file changed since reading: score at the mask's size
                    pred = np.asarray(Image.fromarray(pred).resize(gt.shape[::-1], Image.NEAREST))
                cm.update(pred, gt)
                if save_dir is not None:
                    save_palette_mask(pred, Path(save_dir) / f"{Path(s.file_name).stem}.png")
            if on_masks is not None:
                on_masks(samples, masks)
    finally:
        model.train(was_training)
    return cm.compute(data.class_names)


def score_mask_folder(predictions: str | Path, data: Any) -> dict[str, Any]:
    """Score a folder of predicted PNG masks (``<image stem>.png``, class indices) against ``data``.

    Raises DataError for a missing or unreadable prediction, or one whose size differs from the
    ground truth (every image of the split must be predicted).
    """
    from .data.segmentation import read_mask
    from .errors import DataError
    from .eval.segmentation import ConfusionMatrix

    folder = Path(predictions)
    if not folder.is_dir():
        raise DataError(f"{folder}: predictions folder not found; pass the folder of predicted PNG masks")
    cm = ConfusionMatrix(data.num_classes)
    for s in data.samples:
        path = folder / f"{Path(s.file_name).stem}.png"
        if not path.is_file():
            raise DataError(f"{path}: no prediction for {s.file_name}; predict every image of the split")
        pred = read_mask(path)
        gt = s.load_mask()
        if pred.shape != gt.shape:
            raise DataError(f"{path}: prediction is {pred.shape[1]}x{pred.shape[0]} but the ground truth is "
                            f"{gt.shape[1]}x{gt.shape[0]}; predict at the original size")
        bad = pred >= data.num_classes
        if bad.any():
            raise DataError(f"{path}: predicted value {int(pred[bad].max())} but there are {data.num_classes} "
                            "classes; check the class list")
        cm.update(pred, gt)
    return cm.compute(data.class_names)
