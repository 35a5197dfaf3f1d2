"""Drawing detections on images."""

from __future__ import annotations

import colorsys

from PIL import Image, ImageDraw, ImageFont

from .detections import Detections


def class_color(label: int) -> tuple[int, int, int]:
    """A stable, distinct colour per class index (golden-ratio hue steps)."""
    h = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: Image.Image, det: Detections, width: int | None = None) -> Image.Image:
    """A copy of ``image`` with each box outlined and labelled ``name score``.

    Detections from a tracker (with a ``track_ids`` array) are coloured by track and labelled
    ``#id name score``.
    """
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    width = width or max(1, round(max(out.size) / 300))
    track_ids = getattr(det, "track_ids", None)
    tracks = [None] * len(det) if track_ids is None else [int(t) for t in track_ids]
    for box, score, label, name, track in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist(),
                                              det.names, tracks):
        color = class_color(int(label) if track is None else track)
        draw.rectangle(box, outline=color, width=width)
        text = f"{name} {score:.2f}" if track is None else f"#{track} {name} {score:.2f}"
        tx, ty = box[0], max(0, box[1] - 11)
        tw = draw.textlength(text, font=font)
        draw.rectangle([tx, ty, tx + tw + 2, ty + 11], fill=color)
        draw.text((tx + 1, ty), text, fill=(0, 0, 0), font=font)
    return out
