"""Synthetic video sequences with known tracks, for tracking tests and benchmarks (deterministic for a seed).

Each sequence is a fixed background (the shapes set's gradient, lines and speckles, :mod:`.synth`)
with a few shapes (circle, square, triangle, cross) that move at constant velocity, bounce off the
frame edges, pass in front of / behind each other in a fixed depth order, and disappear behind an
opaque *pillar* (a textured vertical or horizontal band) for a few frames. Sensor noise changes
every frame.

Layout under ``out_dir``::

    seq000/img/000001.jpg ...   frames, numbered from 1
    seq000/gt.txt               MOTChallenge ground truth: frame,id,x,y,w,h,1,category_id,visibility
    annotations.json            COCO detection labels of every frame of every sequence (file names
                                relative to out_dir), objects at least ``min_visibility`` visible

Ground-truth boxes are the tight extent of each object's *visible* pixels (pixel-edge xywh);
``visibility`` is its visible fraction (0 while behind the pillar: such rows are written too, so an
evaluation can ignore them rather than count them as misses).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ConfigError
from .synth import CATEGORIES, _background, _rgb, _shape_mask


@dataclass(frozen=True)
class SequenceInfo:
    """One generated sequence: its name, frames folder, ground-truth file, frame count and size."""

    name: str
    frames: Path
    gt: Path
    num_frames: int
    frame_size: tuple[int, int]  # (width, height)
    fps: float


def _pillar(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, np.ndarray, bool, int, int]:
    """An opaque textured band across the frame: (mask (h, w) bool, pixels (h, w, 3) float, vertical,
    start, width in pixels)."""
    vertical = bool(rng.random() < 0.6)
    length = w if vertical else h
    width = int(rng.integers(56, 77))
    start = int(rng.integers(length // 4, 3 * length // 4 - width))
    mask = np.zeros((h, w), bool)
    if vertical:
        mask[:, start : start + width] = True
    else:
        mask[start : start + width, :] = True
    base = _rgb(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.3, 0.7))
    stripes = 12.0 * np.sin(np.arange(max(w, h)) * rng.uniform(0.2, 0.6))
    tex = (stripes[:h, None] if vertical else stripes[None, :w]) + np.zeros((h, w))
    return mask, base[None, None] + tex[..., None], vertical, start, width


def _sequence(rng: np.random.Generator, w: int, h: int, num_frames: int, num_objects: int,
              object_size: tuple[float, float], speed: tuple[float, float], pillar: bool):
    """Yield (frame uint8 (h, w, 3), [(object index, class index, [x, y, w, h] or None, visibility)])."""
    background = _background(rng, w, h)
    objects = []
    colors: list[np.ndarray] = []
    for _ in range(num_objects):
        size = float(rng.uniform(*object_size))
        angle = float(rng.uniform(-math.pi / 12, math.pi / 12))
        direction = float(rng.uniform(0, 2 * math.pi))
        v = float(rng.uniform(*speed))
        for _attempt in range(10):
            color = _rgb(rng.random(), rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
            if all(np.linalg.norm(color - other) > 80 for other in colors):
                break
        colors.append(color)
        objects.append({"k": int(rng.integers(len(CATEGORIES))), "size": size, "angle": angle, "color": color,
                        "x": float(rng.uniform(size / 2, w - size / 2)),
                        "y": float(rng.uniform(size / 2, h - size / 2)),
                        "vx": v * math.cos(direction), "vy": v * math.sin(direction)})
    occluder = _pillar(rng, w, h) if pillar else None
    if occluder is not None:  # the first object heads for the pillar, so that it is hidden for a while
        _, _, vertical, start, width = occluder
        o = objects[0]
        side = 1.0 if rng.random() < 0.5 else -1.0
        gap = o["size"] * float(rng.uniform(0.8, 1.5))
        centre = start + width / 2 + side * (width / 2 + gap)
        v = math.hypot(o["vx"], o["vy"])
        along, across = v * math.sin(float(rng.uniform(-0.5, 0.5))), -side * v * math.cos(0.3)
        lo, hi = o["size"] / 2, (w if vertical else h) - o["size"] / 2
        if vertical:
            o["x"], o["vx"], o["vy"] = min(max(centre, lo), hi), across, along
        else:
            o["y"], o["vy"], o["vx"] = min(max(centre, lo), hi), across, along
    noise = float(rng.uniform(3.0, 8.0))
    for _ in range(num_frames):
        img = background.copy()
        masks = []
        for o in objects:
            mask = _shape_mask(CATEGORIES[o["k"]][0], w, h, o["x"], o["y"], o["size"], o["angle"])
            img[mask] = o["color"]
            masks.append(mask)
        if occluder is not None:
            img[occluder[0]] = occluder[1][occluder[0]]
        img += rng.normal(0.0, noise, img.shape)
        rows = []
        for i, (o, mask) in enumerate(zip(objects, masks)):
            visible = mask.copy()
            for later in masks[i + 1 :]:
                visible &= ~later
            if occluder is not None:
                visible &= ~occluder[0]
            area, full = int(visible.sum()), max(int(mask.sum()), 1)
            box = None
            if area:
                ys, xs = np.nonzero(visible)
                x0, y0 = int(xs.min()), int(ys.min())
                box = [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0]
            rows.append((i, o["k"], box, area / full))
        yield np.clip(np.round(img), 0, 255).astype(np.uint8), rows
        for o in objects:  # constant velocity, bouncing off the frame edges
            r = o["size"] / 2
            for pos, vel, limit in (("x", "vx", w), ("y", "vy", h)):
                o[pos] += o[vel]
                if o[pos] < r or o[pos] > limit - r:
                    o[vel] = -o[vel]
                    o[pos] = min(max(o[pos], r), limit - r)


def make_synthetic_sequences(
    out_dir: str | Path,
    num_sequences: int = 4,
    num_frames: int = 60,
    frame_size: tuple[int, int] = (320, 240),
    seed: int = 0,
    num_objects: tuple[int, int] = (3, 6),
    object_size: tuple[float, float] = (26.0, 46.0),
    speed: tuple[float, float] = (1.5, 4.0),
    pillar_fraction: float = 0.75,
    min_visibility: float = 0.25,
    fps: float = 30.0,
) -> list[SequenceInfo]:
    """Write ``num_sequences`` sequences (layout in the module docstring); returns their :class:`SequenceInfo`.

    Args:
        frame_size: (width, height) in pixels.
        seed: the same seed gives byte-identical files; sequence ``i`` depends only on ``(seed, i)``.
        num_objects: inclusive range of objects per sequence; object_size: their extent in pixels;
        speed: pixels per frame.
        pillar_fraction: share of sequences with an occluding pillar.
        min_visibility: objects less visible than this are left out of ``annotations.json`` (they are
            in ``gt.txt`` with their visibility).
    """
    w, h = (int(v) for v in frame_size)
    if not (isinstance(num_sequences, int) and num_sequences >= 0 and isinstance(num_frames, int) and num_frames >= 1):
        raise ConfigError(f"num_sequences >= 0 and num_frames >= 1 must be integers, got {num_sequences!r}, "
                          f"{num_frames!r}")
    if not (2 * object_size[1] < min(w, h) and 0 < object_size[0] <= object_size[1]):
        raise ConfigError(f"object_size {object_size!r} must be increasing and under half the frame's short side")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    images, annotations, infos = [], [], []
    for s in range(num_sequences):
        rng = np.random.default_rng([int(seed), 7, s])
        name = f"seq{s:03d}"
        frames_dir = root / name / "img"
        frames_dir.mkdir(parents=True, exist_ok=True)
        n_obj = int(rng.integers(num_objects[0], num_objects[1] + 1))
        gt_lines = []
        pillar = bool(rng.random() < pillar_fraction)
        for f, (pixels, rows) in enumerate(_sequence(rng, w, h, num_frames, n_obj, object_size, speed, pillar), 1):
            file_name = f"{name}/img/{f:06d}.jpg"
            Image.fromarray(pixels, "RGB").save(root / file_name, format="JPEG", quality=92, subsampling=0)
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
            for i, k, box, vis in rows:
                if box is None:
                    gt_lines.append(f"{f},{i + 1},0,0,0,0,1,{CATEGORIES[k][1]},0.000")
                    continue
                gt_lines.append(f"{f},{i + 1},{box[0]},{box[1]},{box[2]},{box[3]},1,{CATEGORIES[k][1]},{vis:.3f}")
                if vis >= min_visibility:
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                        "category_id": CATEGORIES[k][1], "bbox": box, "area": box[2] * box[3],
                                        "iscrowd": 0})
        gt = root / name / "gt.txt"
        gt.write_text("\n".join(gt_lines) + "\n", encoding="utf-8")
        infos.append(SequenceInfo(name, frames_dir, gt, num_frames, (w, h), fps))
    doc = {"info": {"description": "efficientdet synthetic tracking sequences", "seed": int(seed)},
           "images": images, "annotations": annotations,
           "categories": [{"id": cid, "name": cname, "supercategory": "shape"} for cname, cid in CATEGORIES]}
    (root / "annotations.json").write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")
    return infos


def read_mot_ground_truth(path: str | Path) -> dict[int, dict[str, np.ndarray]]:
    """A MOTChallenge ``gt.txt`` -> ``{frame: {"ids" (n,), "boxes" (n, 4) xyxy, "category_ids" (n,),
    "visibility" (n,)}}``; frames with no rows are absent."""
    frames: dict[int, list[list[float]]] = {}
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            f, i, x, y, bw, bh, _conf, cid, vis = (float(v) for v in line.split(","))
        except ValueError as e:
            raise ConfigError(f"{path}:{lineno}: expected 9 comma-separated numbers "
                              "(frame,id,x,y,w,h,conf,category_id,visibility)") from e
        frames.setdefault(int(f), []).append([i, x, y, x + bw, y + bh, cid, vis])
    out = {}
    for f, rows in frames.items():
        a = np.array(rows, dtype=np.float64)
        out[f] = {"ids": a[:, 0].astype(np.int64), "boxes": a[:, 1:5], "category_ids": a[:, 5].astype(np.int64),
                  "visibility": a[:, 6]}
    return out
