"""Detect in many still images (a folder, a glob, a list of files) with the work overlapped.

While the network runs on batch *k*, a reader thread decodes and letterboxes batch *k+1* and a writer
thread draws and saves the pictures of batch *k-1* (:func:`efficientdet.pipeline.run_pipeline`), so
the per-image time of a folder approaches the network's own. Unreadable images are reported and
counted, never silently dropped; the order of the results is the order of the inputs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .detections import Detections
from .errors import EfficientDetError
from .images import load_image
from .pipeline import batched, detection_stages, run_pipeline

SAVE_SUFFIXES = {".jpg", ".jpeg", ".png"}


@dataclass
class FolderSummary:
    """What :func:`predict_files` did: COCO-style records (``file_name`` = the display name), counts."""

    records: list[dict] = field(default_factory=list)
    images: int = 0
    detections: int = 0
    skipped: list[str] = field(default_factory=list)


def annotated_path(out_dir: Path, name: str) -> Path:
    """Where the annotated copy of ``name`` goes: same relative path, PNG unless it was a JPEG or PNG."""
    target = out_dir / name
    return target if target.suffix.lower() in SAVE_SUFFIXES else target.with_suffix(".png")


def predict_files(
    detector: Any,
    items: Sequence[tuple[str | Path, str]],
    out_dir: str | Path | None = None,
    batch_size: int = 1,
    on_image: Callable[[str, Any, Detections], None] | None = None,
    pipelined: bool = True,
) -> FolderSummary:
    """Run ``detector`` on ``items`` = ``[(path, display name), ...]``.

    Writes an annotated copy of each image under ``out_dir`` (when given) and calls ``on_image(name, image,
    detections)`` in input order (from the writer thread when ``pipelined``). An image that cannot be read is
    reported on stderr and listed in ``summary.skipped``.
    """
    from .visualize import draw_detections

    out = Path(out_dir) if out_dir is not None else None
    summary = FolderSummary()
    prepare_batch, infer = detection_stages(detector)

    def prepare(chunk: list[tuple[str | Path, str]]) -> tuple[list[str], list[Any], Any]:
        names, images = [], []
        for path, name in chunk:
            try:
                images.append(load_image(path))
                names.append(name)
            except EfficientDetError as exc:
                summary.skipped.append(name)
                print(f"error: {exc} (skipped)", file=sys.stderr)
        return names, images, prepare_batch(images) if images else None

    def run(prepared: tuple[list[str], list[Any], Any]) -> tuple[list[str], list[Any], list[Detections]]:
        names, images, batch = prepared
        return names, images, (infer(batch) if batch is not None else [])

    def finish(chunk: Any, result: tuple[list[str], list[Any], list[Detections]]) -> None:
        for name, image, det in zip(*result):
            summary.images += 1
            summary.detections += len(det)
            summary.records.extend(det.to_coco(file_name=name))
            if on_image is not None:
                on_image(name, image, det)
            if out is not None:
                target = annotated_path(out, name)
                target.parent.mkdir(parents=True, exist_ok=True)
                draw_detections(image, det).save(target)

    run_pipeline(batched(items, batch_size), run, prepare, finish, threaded=pipelined)
    return summary
