"""Large images with many small objects (COCO format), for sliced inference; deterministic for a seed.

The shapes set's background (gradient, distractor lines, speckles, :mod:`.synth`) at any size, with
``num_objects`` non-overlapping shapes (circle, square, triangle, cross) of ``object_size`` pixels,
each drawn in its own small window so that a 2500 px image costs no more than its pixels. Boxes are the
exact pixel extent of each shape (pixel-edge ``[x, y, w, h]``); the same generator at 256 px makes
training crops at the scale the large images are tiled at.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ConfigError
from .synth import CATEGORIES, _background, _rgb, _shape_mask


def _render(rng: np.random.Generator, w: int, h: int, num_objects: tuple[int, int],
            object_size: tuple[float, float]) -> tuple[np.ndarray, list[tuple[int, list[int], int]]]:
    img = _background(rng, w, h)
    taken = np.zeros((0, 4))
    objects = []
    for _ in range(int(rng.integers(num_objects[0], num_objects[1] + 1))):
        for _attempt in range(20):
            size = float(math.exp(rng.uniform(math.log(object_size[0]), math.log(object_size[1]))))
            cx, cy = float(rng.uniform(size, w - size)), float(rng.uniform(size, h - size))
            box = np.array([cx - size, cy - size, cx + size, cy + size])  # with a margin of size / 2
            if not len(taken) or not ((box[:2] < taken[:, 2:]) & (box[2:] > taken[:, :2])).all(1).any():
                break
        else:
            continue
        taken = np.concatenate([taken, box[None]])
        k = int(rng.integers(len(CATEGORIES)))
        x0, y0 = int(cx - size), int(cy - size)
        side = int(2 * size) + 2
        mask = _shape_mask(CATEGORIES[k][0], side, side, cx - x0, cy - y0, size,
                           float(rng.uniform(-math.pi / 12, math.pi / 12)))
        window = img[y0 : y0 + side, x0 : x0 + side]
        mask = mask[: window.shape[0], : window.shape[1]]
        window[mask] = _rgb(rng.random(), rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
        ys, xs = np.nonzero(mask)
        if len(xs) < 9:
            continue
        bx, by = x0 + int(xs.min()), y0 + int(ys.min())
        objects.append((k, [bx, by, x0 + int(xs.max()) + 1 - bx, y0 + int(ys.max()) + 1 - by], int(mask.sum())))
    img += rng.normal(0.0, rng.uniform(3.0, 8.0), img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), objects


def make_large_image_dataset(
    out_dir: str | Path,
    num_images: int = 8,
    image_size: tuple[tuple[int, int], tuple[int, int]] = ((2048, 2560), (2048, 2304)),
    num_objects: tuple[int, int] = (30, 60),
    object_size: tuple[float, float] = (10.0, 26.0),
    seed: int = 0,
) -> dict[str, Path]:
    """Write ``out_dir/images/00000.jpg ...`` and ``out_dir/annotations.json``; returns ``{"images", "annotations"}``.

    ``image_size``: ((min_w, max_w), (min_h, max_h)); ``num_objects``: inclusive range per image;
    ``object_size``: extent range in pixels (log-uniform). Image ``i`` depends only on ``(seed, i)``.
    """
    (wmin, wmax), (hmin, hmax) = image_size
    if not (0 < object_size[0] <= object_size[1] and 4 * object_size[1] < min(wmin, hmin)):
        raise ConfigError(f"object_size {object_size!r} must be increasing and under a quarter of the image side")
    if num_images < 0 or not 0 <= num_objects[0] <= num_objects[1]:
        raise ConfigError(f"num_images {num_images!r} and num_objects {num_objects!r} must be non-negative ranges")
    root = Path(out_dir)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        rng = np.random.default_rng([int(seed), 11, i])
        w, h = int(rng.integers(wmin, wmax + 1)), int(rng.integers(hmin, hmax + 1))
        pixels, objects = _render(rng, w, h, num_objects, object_size)
        name = f"{i:05d}.jpg"
        Image.fromarray(pixels, "RGB").save(images_dir / name, format="JPEG", quality=92, subsampling=0)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        for k, bbox, area in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": CATEGORIES[k][1],
                                "bbox": bbox, "area": area, "iscrowd": 0})
    doc = {"info": {"description": "efficientdet synthetic large images", "seed": int(seed)}, "images": images,
           "annotations": annotations,
           "categories": [{"id": cid, "name": n, "supercategory": "shape"} for n, cid in CATEGORIES]}
    ann = root / "annotations.json"
    ann.write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")
    return {"images": images_dir, "annotations": ann}
