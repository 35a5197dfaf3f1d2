"""A synthetic shapes segmentation set in the Pascal VOC layout, deterministic for a seed.

The scenes are those of :mod:`efficientdet.data.synth` (noisy gradient background with distractor
lines and speckles, circles / squares / triangles / crosses of many sizes and colours, partial
occlusion), written as VOC writes segmentation data::

    out/JPEGImages/00000.jpg
    out/SegmentationClass/00000.png       palette PNG of class indices (VOC colours), 255 = ignore
    out/ImageSets/Segmentation/train.txt  image ids, one a line
    out/ImageSets/Segmentation/val.txt
    out/labels.txt                        background, circle, square, triangle, cross

As in VOC, a thin band along every object outline is 255 (ignored). The same seed gives
byte-identical files; train and val use independent random streams.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ..errors import ConfigError
from ..masks import save_palette_mask
from .synth import CATEGORIES, _background, _rgb, _shape_mask
from .transforms import IGNORE_INDEX

SEG_CLASSES: tuple[str, ...] = ("background",) + tuple(name for name, _ in CATEGORIES)


def _render(rng: np.random.Generator, w: int, h: int, max_objects: int, min_size: float,
            max_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """One RGB image (uint8 (h, w, 3)) and its class map (uint8 (h, w))."""
    img = _background(rng, w, h)
    labels = np.zeros((h, w), np.uint8)
    max_size = max(min_size, max_frac * min(w, h))
    colors: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        k = int(rng.integers(len(CATEGORIES)))
        size = float(math.exp(rng.uniform(math.log(min_size), math.log(max_size))))
        cx, cy = float(rng.uniform(size / 2, w - size / 2)), float(rng.uniform(size / 2, h - size / 2))
        mask = _shape_mask(CATEGORIES[k][0], w, h, cx, cy, size, float(rng.uniform(-math.pi / 12, math.pi / 12)))
        for _attempt in range(10):  # keep neighbouring shapes distinguishable
            color = _rgb(rng.random(), rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
            if all(np.linalg.norm(color - other) > 80 for other in colors):
                break
        colors.append(color)
        img[mask] = color
        labels[mask] = k + 1
    img += rng.normal(0.0, rng.uniform(3.0, 10.0), img.shape)
    # VOC-style ignore band: pixels whose 3x3 neighbourhood holds two classes
    lab = Image.fromarray(labels, "L")
    edge = np.asarray(lab.filter(ImageFilter.MaxFilter(3))) != np.asarray(lab.filter(ImageFilter.MinFilter(3)))
    labels = np.where(edge, np.uint8(IGNORE_INDEX), labels)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), labels


def make_synthetic_segmentation(
    out_dir: str | Path,
    num_train: int = 200,
    num_val: int = 50,
    image_size: tuple[tuple[int, int], tuple[int, int]] = ((256, 320), (224, 320)),
    seed: int = 0,
    max_objects: int = 5,
    min_object_size: float = 24.0,
    max_object_frac: float = 0.6,
) -> dict[str, Path]:
    """Write the VOC-layout synthetic set under ``out_dir`` (see the module docstring).

    Returns ``{"root", "images", "masks", "labels", "train_list", "val_list"}`` paths; ``root`` is a
    VOC root for ``--train-annotations``/``--val-annotations`` (the split lists choose the images).
    """
    for name, value in (("num_train", num_train), ("num_val", num_val), ("max_objects", max_objects)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
    if max_objects < 1:
        raise ConfigError("max_objects must be at least 1")
    (wmin, wmax), (hmin, hmax) = ((int(a), int(b)) for a, b in image_size)
    if not (32 <= wmin <= wmax and 32 <= hmin <= hmax):
        raise ConfigError(f"image_size ranges must satisfy 32 <= min <= max, got {image_size!r}")
    root = Path(out_dir)
    images, masks = root / "JPEGImages", root / "SegmentationClass"
    lists = root / "ImageSets" / "Segmentation"
    for d in (images, masks, lists):
        d.mkdir(parents=True, exist_ok=True)
    for split, (count, offset) in enumerate(((num_train, 0), (num_val, num_train))):
        ids = []
        for i in range(count):
            rng = np.random.default_rng([int(seed), split, i, 7])
            w, h = int(rng.integers(wmin, wmax + 1)), int(rng.integers(hmin, hmax + 1))
            pixels, labels = _render(rng, w, h, max_objects, float(min_object_size), float(max_object_frac))
            stem = f"{offset + i:05d}"
            Image.fromarray(pixels, "RGB").save(images / f"{stem}.jpg", format="JPEG", quality=92, subsampling=0)
            save_palette_mask(labels, masks / f"{stem}.png")
            ids.append(stem)
        (lists / ("train.txt" if split == 0 else "val.txt")).write_text("".join(f"{s}\n" for s in ids))
    (root / "labels.txt").write_text("".join(f"{n}\n" for n in SEG_CLASSES), encoding="utf-8")
    return {"root": root, "images": images, "masks": masks, "labels": root / "labels.txt",
            "train_list": lists / "train.txt", "val_list": lists / "val.txt"}
