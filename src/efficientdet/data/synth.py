"""A synthetic shapes detection data set in COCO format, deterministic for a seed.

Each image has a noisy gradient background with distractor texture (thin lines, speckles) and up to
``max_objects`` filled shapes of four classes (circle, square, triangle, cross) in many sizes and
colours, with mild rotation and partial occlusion between objects. Boxes are the exact tight
extent of each shape's *visible* pixels (pixel-edge ``[x, y, w, h]``); a shape is never placed so
that it would hide more than half of an earlier one, so no object is more than 50% occluded.
Category ids are non-contiguous (1, 3, 7, 12) to exercise the id <-> label mapping. A few images
have no objects; sizes are non-square.

The same seed gives byte-identical files (PIL's encoders are deterministic). Train and val use
independent random streams, so changing ``num_train`` does not change the validation images.
"""

from __future__ import annotations

import colorsys
import json
import math
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import ConfigError

#: (name, COCO category id) of the shape classes
CATEGORIES: tuple[tuple[str, int], ...] = (("circle", 1), ("square", 3), ("triangle", 7), ("cross", 12))

_OWN_FILE = re.compile(r"^\d{5}\.(jpg|png)$")


def _polygon(kind: str, cx: float, cy: float, size: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a square / triangle / cross of about ``size`` px extent, rotated by ``angle``."""
    r = size / 2
    if kind == "square":
        pts = [(-r, -r), (r, -r), (r, r), (-r, r)]
    elif kind == "triangle":
        pts = [(0.0, -r), (r, r * 0.75), (-r, r * 0.75)]
    else:  # cross (plus sign), arm thickness a third of the size
        t = r / 3
        pts = [(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t),
               (-r, -t), (-t, -t)]
    c, s = math.cos(angle), math.sin(angle)
    scale = 1.0 / (abs(c) + abs(s)) if kind == "square" else 1.0  # keep the rotated extent ~ size
    return [(cx + scale * (x * c - y * s), cy + scale * (x * s + y * c)) for x, y in pts]


def _shape_mask(kind: str, w: int, h: int, cx: float, cy: float, size: float, angle: float) -> np.ndarray:
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    if kind == "circle":
        r = size / 2
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        draw.polygon(_polygon(kind, cx, cy, size, angle), fill=255)
    return np.asarray(mask) > 0


def _rgb(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float64) * 255.0


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Muted gradient + thin lines + speckles, float64 (h, w, 3) in 0-255 (noise added later)."""
    a = _rgb(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.25, 0.9))
    b = _rgb(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.25, 0.9))
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    t = xx * math.cos(theta) + yy * math.sin(theta)
    t = (t - t.min()) / max(1e-9, t.max() - t.min())
    img = a[None, None] * (1 - t[..., None]) + b[None, None] * t[..., None]
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 12))):  # distractor lines
        color = tuple(int(v) for v in _rgb(rng.random(), rng.uniform(0, 0.4), rng.uniform(0.2, 0.9)))
        pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(2)]
        draw.line(pts, fill=color, width=int(rng.integers(1, 3)))
    out = np.asarray(canvas, dtype=np.float64).copy()
    n_speckles = int(w * h * rng.uniform(0.002, 0.01))
    ys, xs = rng.integers(0, h, n_speckles), rng.integers(0, w, n_speckles)
    out[ys, xs] = rng.uniform(0, 255, (n_speckles, 3))
    return out


def _render(
    rng: np.random.Generator,
    w: int,
    h: int,
    max_objects: int,
    min_object_size: float,
    max_object_frac: float,
    empty_fraction: float,
) -> tuple[np.ndarray, list[tuple[int, list[int], int]]]:
    """One image (uint8 (h, w, 3)) and its objects ``(class index, [x, y, w, h], visible area)``."""
    img = _background(rng, w, h)
    n = 0 if rng.random() < empty_fraction else int(rng.integers(1, max_objects + 1))
    max_size = max(min_object_size, max_object_frac * min(w, h))
    placed: list[tuple[int, np.ndarray, int]] = []  # (class, visible mask, full area)
    colors: list[np.ndarray] = []
    for _ in range(n):
        for _attempt in range(20):
            k = int(rng.integers(len(CATEGORIES)))
            size = float(math.exp(rng.uniform(math.log(min_object_size), math.log(max_size))))
            cx = float(rng.uniform(size / 2, w - size / 2))
            cy = float(rng.uniform(size / 2, h - size / 2))
            angle = float(rng.uniform(-math.pi / 12, math.pi / 12))
            mask = _shape_mask(CATEGORIES[k][0], w, h, cx, cy, size, angle)
            area = int(mask.sum())
            if area < 16:
                continue
            if all((v & ~mask).sum() >= 0.5 * full for _, v, full in placed):
                break
        else:
            continue
        for _attempt in range(10):  # keep neighbouring shapes distinguishable
            color = _rgb(rng.random(), rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
            if all(np.linalg.norm(color - other) > 80 for other in colors):
                break
        placed = [(c, v & ~mask, full) for c, v, full in placed]
        placed.append((k, mask, area))
        colors.append(color)
        img[mask] = color
    img += rng.normal(0.0, rng.uniform(3.0, 10.0), img.shape)
    objects = []
    for k, visible, _ in placed:
        ys, xs = np.nonzero(visible)
        x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        objects.append((k, [x1, y1, x2 - x1, y2 - y1], int(visible.sum())))
    return np.clip(np.round(img), 0, 255).astype(np.uint8), objects


def _write_split(
    out: Path,
    split: int,
    count: int,
    seed: int,
    image_size: tuple[tuple[int, int], tuple[int, int]],
    options: dict,
    png_every: int,
) -> tuple[Path, Path]:
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for stale in images_dir.iterdir():
        if _OWN_FILE.match(stale.name):
            stale.unlink()
    (wmin, wmax), (hmin, hmax) = image_size
    images, annotations = [], []
    for i in range(count):
        rng = np.random.default_rng([int(seed), split, i])
        w, h = int(rng.integers(wmin, wmax + 1)), int(rng.integers(hmin, hmax + 1))
        pixels, objects = _render(rng, w, h, **options)
        png = png_every > 0 and i % png_every == png_every - 1
        file_name = f"{i:05d}.{'png' if png else 'jpg'}"
        image = Image.fromarray(pixels, "RGB")
        if png:
            image.save(images_dir / file_name, format="PNG", optimize=False)
        else:
            image.save(images_dir / file_name, format="JPEG", quality=92, subsampling=0)
        image_id = i + 1
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        for k, bbox, area in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": CATEGORIES[k][1], "bbox": bbox, "area": area, "iscrowd": 0})
    doc = {
        "info": {"description": "efficientdet synthetic shapes", "seed": int(seed)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name, "supercategory": "shape"} for name, cid in CATEGORIES],
    }
    ann_path = out / "annotations.json"
    ann_path.write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")
    return images_dir, ann_path


def make_synthetic_dataset(
    out_dir: str | Path,
    num_train: int = 200,
    num_val: int = 50,
    image_size: tuple[tuple[int, int], tuple[int, int]] = ((256, 320), (224, 320)),
    seed: int = 0,
    max_objects: int = 6,
    min_object_size: float = 12.0,
    max_object_frac: float = 0.5,
    empty_fraction: float = 0.05,
    png_every: int = 4,
) -> dict[str, Path]:
    """Write the synthetic shapes data set (COCO format) under ``out_dir``.

    Layout: ``out_dir/{train,val}/images/00000.jpg|png`` and ``out_dir/{train,val}/annotations.json``.

    Args:
        out_dir: output directory (created; earlier files of this generator are replaced).
        num_train, num_val: number of images per split.
        image_size: ``((min_width, max_width), (min_height, max_height))`` in pixels, inclusive.
        seed: random seed; the same seed gives byte-identical files.
        max_objects: most objects per image.
        min_object_size: smallest shape extent in pixels.
        max_object_frac: largest shape extent as a fraction of the image's short side.
        empty_fraction: probability that an image has no objects.
        png_every: every ``png_every``-th image is a PNG (0: all JPEG).

    Returns:
        ``{"root", "train_images", "train_annotations", "val_images", "val_annotations"}`` paths.
    """
    for name, value in (("num_train", num_train), ("num_val", num_val), ("max_objects", max_objects),
                        ("png_every", png_every)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
    try:
        (wmin, wmax), (hmin, hmax) = ((int(a), int(b)) for a, b in image_size)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"image_size must be ((min_w, max_w), (min_h, max_h)), got {image_size!r}") from e
    if not (16 <= wmin <= wmax and 16 <= hmin <= hmax):
        raise ConfigError(f"image_size ranges must satisfy 16 <= min <= max, got {image_size!r}")
    if not 1 <= min_object_size <= max_object_frac * min(wmin, hmin):
        raise ConfigError(f"min_object_size must be between 1 and max_object_frac * the smallest image side, "
                          f"got {min_object_size!r}")
    if not 0 <= empty_fraction <= 1:
        raise ConfigError(f"empty_fraction must be in [0, 1], got {empty_fraction!r}")
    root = Path(out_dir)
    options = {"max_objects": max_objects, "min_object_size": float(min_object_size),
               "max_object_frac": float(max_object_frac), "empty_fraction": float(empty_fraction)}
    size = ((wmin, wmax), (hmin, hmax))
    train_images, train_ann = _write_split(root / "train", 0, num_train, seed, size, options, png_every)
    val_images, val_ann = _write_split(root / "val", 1, num_val, seed, size, options, png_every)
    return {"root": root, "train_images": train_images, "train_annotations": train_ann,
            "val_images": val_images, "val_annotations": val_ann}
