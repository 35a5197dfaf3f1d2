"""The run folder: ``config.yaml``, ``weights/``, ``metrics.csv``, TensorBoard events and PNG plots."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

COLUMNS = ("epoch", "loss", "cls_loss", "box_loss", "seg_loss", "lr", "AP", "AP50", "AP75", "APs", "APm", "APl",
           "AR100", "mIoU", "pixel_accuracy", "mean_accuracy", "fwIoU", "nan_steps", "time")


def next_run_dir(root: str | Path = "runs/train", name: str = "exp") -> Path:
    """``root/exp``, then ``root/exp2``, ``exp3`` ... (the first that does not exist; ultralytics style)."""
    root = Path(root)
    taken = {1 if m.group(1) == "" else int(m.group(1))
             for p in (root.iterdir() if root.is_dir() else []) if (m := re.fullmatch(rf"{name}(\d*)", p.name))}
    n = 1
    while n in taken:
        n += 1
    return root / (name if n == 1 else f"{name}{n}")


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of ``metrics.csv`` as floats (empty cells -> NaN)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()} for row in csv.DictReader(f)]


INT_COLUMNS = ("epoch", "nan_steps")


def _cell(key: str, value: Any) -> Any:
    """A csv cell: empty for missing / NaN; counters as integers (rows read back come as floats)."""
    if value is None or value != value:
        return ""
    return int(value) if key in INT_COLUMNS else value


class MetricsLog:
    """Appends one ``metrics.csv`` row per epoch and mirrors scalars to TensorBoard (optional)."""

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.path = run_dir / "metrics.csv"
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard not installed: csv only
                self.writer = None

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None and value is not None and math.isfinite(value):
            self.writer.add_scalar(tag, value, step)

    def epoch(self, row: dict[str, Any], step: int) -> None:
        """Write ``row``; rows of the same or later epochs (left by a killed run, redone on resume) go."""
        kept = [r for r in read_metrics(self.path) if r["epoch"] < row["epoch"]]
        with self.path.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            for r in [*kept, row]:
                w.writerow({k: _cell(k, r.get(k)) for k in COLUMNS})
        for k in COLUMNS[1:]:
            if row.get(k) is not None and k not in ("time", "nan_steps"):
                val = k.startswith("A") or k in ("mIoU", "pixel_accuracy", "mean_accuracy", "fwIoU")
                self.scalar(f"{'val' if val else 'train'}/{k}", float(row[k]), step)
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _plt():
    import logging
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # plots are a by-product: matplotlib's warnings (legend without artists, font fallbacks, tight_layout)
    # must not reach the user's terminal
    warnings.filterwarnings("ignore", module=r"matplotlib(\..*)?")
    logging.getLogger("matplotlib").setLevel(logging.ERROR)
    return plt


def plot_curves(metrics_csv: Path, out_dir: Path) -> list[Path]:
    """``loss.png`` (total/cls/box/seg vs epoch), ``ap.png`` (AP, AP50, AP75 vs epoch) and ``miou.png``
    (mIoU, pixel and mean accuracy vs epoch); a plot without any value (e.g. AP of a segmentation run)
    is not written."""
    rows = read_metrics(metrics_csv)
    if not rows:
        return []
    plt = _plt()
    epochs = [r["epoch"] for r in rows]
    written = []
    titles = {"loss": "training loss", "ap": "validation AP (EMA weights)", "miou": "validation mIoU (EMA weights)"}
    for name, keys in (("loss", ("loss", "cls_loss", "box_loss", "seg_loss")), ("ap", ("AP", "AP50", "AP75")),
                       ("miou", ("mIoU", "pixel_accuracy", "mean_accuracy"))):
        series = {k: [r.get(k, math.nan) for r in rows] for k in keys}
        series = {k: ys for k, ys in series.items() if any(math.isfinite(y) for y in ys)}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for k, ys in series.items():
            ax.plot(epochs, ys, marker="o", label=k)
        ax.set_xlabel("epoch")
        ax.set_title(titles[name])
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # e.g. no AP curve without validation data
            ax.legend()
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def precision_recall(ground_truth: dict, detections: list[dict]) -> tuple[np.ndarray, list[int]]:
    """COCOeval's precision array at IoU 0.5, area 'all', 100 detections: (101 recall points, K classes).

    -1 marks undefined entries (no ground truth). Returns ``(precision, category ids)``.
    """
    from ..eval.coco import evaluate_detections

    metrics = evaluate_detections(ground_truth, detections, return_precision=True)
    return np.asarray(metrics["precision_iou50"]), list(metrics["category_ids"])


def plot_pr(ground_truth: dict, detections: list[dict], names: dict[int, str], path: Path) -> Path:
    """Precision-recall curve per class at IoU 0.5 (``pr_curve.png``), AP50 in the legend."""
    precision, cat_ids = precision_recall(ground_truth, detections)
    plt = _plt()
    recall = np.linspace(0, 1, precision.shape[0])
    fig, ax = plt.subplots(figsize=(6, 5))
    for k, cid in enumerate(cat_ids):
        p = precision[:, k]
        if (p < 0).all():
            continue
        ax.plot(recall, np.clip(p, 0, None), label=f"{names.get(cid, cid)} AP50={np.mean(p[p > -1]):.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("precision-recall at IoU 0.5 (val)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def image_grid(images: list, path: Path, cols: int = 4, cell: int = 256) -> Path:
    """Tile PIL images (each fitted into ``cell`` x ``cell``) into one PNG."""
    from PIL import Image

    rows = max(1, math.ceil(len(images) / cols))
    grid = Image.new("RGB", (cols * cell, rows * cell), (32, 32, 32))
    for i, img in enumerate(images):
        im = img.copy()
        im.thumbnail((cell, cell))
        grid.paste(im, ((i % cols) * cell, (i // cols) * cell))
    grid.save(path)
    return path
