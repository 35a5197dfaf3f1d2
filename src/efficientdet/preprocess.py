"""Inference preprocessing: the one definition shared by prediction, evaluation and export.

An image is resized, keeping its aspect ratio, so that its long side fits the square network
input; it is pasted at the top-left corner of a canvas filled with the normalisation mean, then
normalised. This is the official EfficientDet eval transform (and effdet's ``ResizePad``): the
resize is PIL bilinear, the scaled size is ``int(side * scale)``, the fill colour is
``round(mean * 255)``.

Boxes predicted on the canvas are mapped back to original pixels by dividing by ``scale``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # torch is imported only by the functions that return tensors
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def fill_color(mean: Sequence[float]) -> tuple[int, int, int]:
    """The canvas colour (uint8 RGB) for a normalisation mean given in [0, 1]."""
    return tuple(int(round(m * 255)) for m in mean)  # type: ignore[return-value]


def letterbox(image: Image.Image, size: int | tuple[int, int], mean: Sequence[float]) -> tuple[np.ndarray, float]:
    """Resize ``image`` (RGB PIL) to fit ``size`` and paste it top-left on a mean-filled canvas.

    Args:
        image: RGB PIL image of any size.
        size: network input side (square) or (height, width).
        mean: normalisation mean in [0, 1]; the canvas is filled with ``round(mean * 255)``.

    Returns:
        ``(canvas, scale)``: the HWC uint8 canvas and the factor from original to canvas pixels.
    """
    th, tw = (size, size) if isinstance(size, int) else size
    resized, scale = _fit(image, th, tw)
    canvas = np.empty((th, tw, 3), dtype=np.uint8)
    canvas[:] = fill_color(mean)
    canvas[: resized.height, : resized.width] = np.asarray(resized, dtype=np.uint8)[..., :3]
    return canvas, scale


def _fit(image: Image.Image, height: int, width: int) -> tuple[Image.Image, float]:
    """``image`` resized (PIL bilinear, aspect kept) to fit ``height`` x ``width``, and the scale used."""
    w, h = image.size
    scale = min(height / h, width / w)
    sw, sh = max(1, int(w * scale)), max(1, int(h * scale))
    return (image if (sw, sh) == (w, h) else image.resize((sw, sh), Image.BILINEAR)), scale


def normalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, H, W, 3) or (B, 3, H, W) -> float32 (B, 3, H, W) normalised with mean/std in [0, 1]."""
    import torch

    if batch.shape[-1] == 3 and batch.shape[1] != 3:
        batch = batch.permute(0, 3, 1, 2)
    m = torch.tensor(mean, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1) * 255.0
    return ((batch.float() - m) / s).contiguous()


def preprocess_images(
    images: Sequence[Image.Image],
    size: int | tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    channels_last: bool = True,
) -> tuple[np.ndarray, list[float]]:
    """:func:`letterbox` + normalisation for a batch, in numpy, written straight into the network's layout.

    The same numbers as ``normalize(stack(letterbox(...)))`` (tested bit for bit: float32 ``(x - 255 m) /
    (255 s)`` either way), in one pass over each image instead of four: the canvas border is filled with
    the normalised fill colour and only the resized image is converted.

    Returns ``(batch, scales)``: float32 (B, H, W, 3) when ``channels_last`` (what the optimised PyTorch
    network takes, as a channels-last view), else (B, 3, H, W) (an ONNX input), and per-image scales.
    """
    th, tw = (size, size) if isinstance(size, int) else size
    m = np.asarray(mean, dtype=np.float32) * np.float32(255.0)
    s = np.asarray(std, dtype=np.float32) * np.float32(255.0)
    fill = (np.asarray(fill_color(mean), dtype=np.float32) - m) / s
    shape = (len(images), th, tw, 3) if channels_last else (len(images), 3, th, tw)
    out = np.empty(shape, dtype=np.float32)
    if channels_last:
        out.reshape(len(images), th, tw * 3)[:] = np.tile(fill, tw)
    else:
        out[:] = fill[:, None, None]
    scales = []
    for i, image in enumerate(images):
        resized, scale = _fit(image, th, tw)
        pixels = np.asarray(resized, dtype=np.uint8)[..., :3]
        h, w = pixels.shape[:2]
        # in place, into the output layout, with long inner loops: a transposing assignment of a temporary
        # is ~9x slower, broadcasting over a last axis of 3 ~4x
        if channels_last:  # rows of h x (w * 3) values, mean/std repeated along them
            view = out[i].reshape(th, tw * 3)[:h, : w * 3]
            src, mean_, std_ = pixels.reshape(h, w * 3), np.tile(m, w), np.tile(s, w)
        else:
            view, src, mean_, std_ = out[i, :, :h, :w], pixels.transpose(2, 0, 1), m[:, None, None], s[:, None, None]
        np.subtract(src, mean_, out=view, dtype=np.float32)
        np.divide(view, std_, out=view)
        scales.append(scale)
    return out, scales


def preprocess_batch(
    images: Sequence[Image.Image],
    size: int | tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    channels_last: bool = True,
) -> tuple[torch.Tensor, list[float]]:
    """:func:`preprocess_images` as a float32 (B, 3, H, W) tensor (no copy): channels-last strides, or
    contiguous NCHW with ``channels_last=False``."""
    import torch

    batch, scales = preprocess_images(images, size, mean, std, channels_last=channels_last)
    tensor = torch.from_numpy(batch)
    return (tensor.permute(0, 3, 1, 2) if channels_last else tensor), scales
