"""Segmentation masks without PyTorch: palette PNGs, overlays, per-class pixel counts, and the mapping
of a network-canvas label map back to the original image.

A mask is an (H, W) uint8 array of class indices (0 = background, 255 = ignore). This module needs
only numpy and Pillow, so :mod:`efficientdet.deploy` can use it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

IGNORE_INDEX = 255


def voc_palette() -> list[int]:
    """The Pascal VOC colour map (768 values): the bits of each index spread over R, G and B."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def palette_png(mask: np.ndarray) -> bytes:
    """An (H, W) uint8 class map as the bytes of a VOC-coloured palette (mode ``P``) PNG whose pixel values
    are the class indices: what :func:`save_palette_mask` writes and the service's ``/v1/segment`` sends."""
    image = Image.fromarray(np.ascontiguousarray(mask, np.uint8), "P")
    image.putpalette(voc_palette())
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def save_palette_mask(mask: np.ndarray, path: str | Path) -> Path:
    """Write an (H, W) uint8 class map as a VOC-coloured palette PNG (pixel values = class indices)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(palette_png(mask))
    return path


def overlay_mask(image: Image.Image, mask: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The RGB image with each non-background class blended in its VOC colour (``alpha`` opacity)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    colours = np.asarray(voc_palette(), dtype=np.float32).reshape(256, 3)[mask]
    blend = (mask != 0) & (mask != IGNORE_INDEX)
    rgb[blend] = (1 - alpha) * rgb[blend] + alpha * colours[blend]
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


def class_pixels(mask: np.ndarray, class_names: Sequence[str]) -> list[dict]:
    """``[{"id": index, "name": name, "pixels": count}, ...]`` for the classes present in the mask, by
    index (a value without a name is named by its number, e.g. ``"255"`` for ignore)."""
    counts = np.bincount(np.asarray(mask, np.uint8).ravel(), minlength=256)
    return [{"id": c, "name": class_names[c] if c < len(class_names) else str(c), "pixels": int(n)}
            for c, n in enumerate(counts.tolist()) if n]


def pixel_counts(mask: np.ndarray, class_names: Sequence[str]) -> dict[str, int]:
    """Pixels per class name (classes with no pixels left out), most frequent first."""
    rows = class_pixels(mask, class_names)
    return {r["name"]: r["pixels"] for r in sorted(rows, key=lambda r: -r["pixels"])}


def content_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """(width, height) of the image on the letterbox canvas: ``max(1, int(side * scale))``."""
    return max(1, int(width * scale)), max(1, int(height * scale))


def canvas_labels_to_original(labels: np.ndarray, width: int, height: int, scale: float) -> np.ndarray:
    """A canvas label map (S, S) -> the (height, width) mask: crop the image's region, nearest resize."""
    cw, ch = content_size(width, height, scale)
    crop = np.ascontiguousarray(np.asarray(labels, np.uint8)[:ch, :cw])
    if (cw, ch) == (width, height):
        return crop
    return np.asarray(Image.fromarray(crop, "L").resize((width, height), Image.NEAREST))
