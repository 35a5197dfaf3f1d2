"""What a training run shows about its data: an augmented batch (``train_batch.png``) and label
statistics against the anchors (``labels.png``), written at the start of a run."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .run_dir import _plt, image_grid

PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212))


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(B, 3, H, W) normalised float tensor -> (B, H, W, 3) uint8 RGB."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    x = (images.detach().float().cpu() * s + m).clamp(0, 1) * 255
    return x.round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def save_train_batch(images: torch.Tensor, targets: list[dict], mean: Sequence[float], std: Sequence[float],
                     class_names: Sequence[str | None], path: str | Path, max_images: int = 16) -> Path:
    """Draw a training batch as the network sees it (after augmentation) with its boxes and class names.

    ``images`` (B, 3, S, S) normalised; ``targets[i]["boxes"]`` (N, 4) xyxy input pixels and
    ``["labels"]`` (N,) 0-based; a segmentation target's ``["mask"]`` (S, S) class indices is blended in
    (VOC colours, 255 = ignored left as is). Writes a grid PNG at ``path``.
    """
    from PIL import Image, ImageDraw

    from ..masks import overlay_mask

    pixels = denormalize(images[:max_images], mean, std)
    drawn = []
    for img, target in zip(pixels, targets):
        im = Image.fromarray(img)
        if "mask" in target:
            im = overlay_mask(im, np.asarray(target["mask"], np.uint8), alpha=0.45)
        d = ImageDraw.Draw(im)
        boxes = target["boxes"].tolist() if "boxes" in target else []
        labels = target["labels"].tolist() if "labels" in target else []
        for box, label in zip(boxes, labels):
            color = PALETTE[int(label) % len(PALETTE)]
            d.rectangle(box, outline=color, width=2)
            name = class_names[int(label)] if int(label) < len(class_names) else None
            d.text((box[0] + 2, max(0, box[1] - 11)), str(name if name is not None else label), fill=color)
        drawn.append(im)
    side = int(images.shape[-1])
    return image_grid(drawn, Path(path), cols=min(4, max(1, len(drawn))), cell=min(side, 320))


def save_label_statistics(boxes: np.ndarray, labels: np.ndarray, class_names: Sequence[str | None],
                          anchor_sizes: Sequence[tuple[float, float]], path: str | Path, image_size: int) -> Path:
    """``labels.png``: boxes per class (bars) and box width vs height at the input size (log-log points)
    with the anchor shapes (crosses), so objects far from every anchor are visible at a glance.

    ``boxes`` (N, 4) xyxy input pixels (:func:`efficientdet.anchor_fit.input_boxes`), ``labels`` (N,);
    ``anchor_sizes`` the distinct (width, height) of the anchors in input pixels.
    """
    plt = _plt()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # never leak matplotlib's warnings to the user's terminal
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
        k = len(class_names)
        counts = np.bincount(labels.astype(np.int64), minlength=k)[:k] if len(labels) else np.zeros(k, int)
        names = [str(n if n is not None else i) for i, n in enumerate(class_names)]
        ax1.bar(range(k), counts, color="#3b7dd8")
        ax1.set_xticks(range(k))
        ax1.set_xticklabels(names, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center", fontsize=8)
        ax1.set_ylabel("boxes")
        ax1.set_title(f"boxes per class ({int(counts.sum())} in all)")
        if len(boxes):
            w = np.maximum(boxes[:, 2] - boxes[:, 0], 0.5)
            h = np.maximum(boxes[:, 3] - boxes[:, 1], 0.5)
            ax2.scatter(w, h, s=4, alpha=0.4, color="#3b7dd8", label="boxes")
        if len(anchor_sizes):
            aw, ah = np.asarray(anchor_sizes, dtype=np.float64).T
            ax2.scatter(aw, ah, s=40, marker="x", color="#d62728", label="anchors")
        ax2.set_xscale("log")
        ax2.set_yscale("log")
        ax2.set_xlabel(f"width (px at {image_size}px input)")
        ax2.set_ylabel("height (px)")
        ax2.set_title("box sizes vs anchor sizes")
        ax2.grid(alpha=0.3, which="both")
        if ax2.get_legend_handles_labels()[0]:
            ax2.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return Path(path)


def anchor_shapes(image_size: int, min_level: int, max_level: int, anchor_scale: float, num_scales: int,
                  aspect_ratios: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Distinct (width, height) of the anchors, input pixels (stride 2**level for a square input)."""
    out = []
    for level in range(min_level, max_level + 1):
        stride = 2**level
        for s in range(num_scales):
            for ax, ay in aspect_ratios:
                base = anchor_scale * stride * 2 ** (s / num_scales)
                out.append((base * ax, base * ay))
    return out


__all__ = ["anchor_shapes", "denormalize", "save_label_statistics", "save_train_batch"]
