"""``efficientdet predict``: detect objects in image files, folders and globs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ConfigError, EfficientDetError
from ..inference.config import PREDICT
from .common import add_model_options, expand_sources, make_detector, positive_int, unit_float


def run(args: argparse.Namespace) -> int:
    """``efficientdet predict``: 0 when every input was processed, 1 when some were skipped."""
    from ..images import load_image
    from ..visualize import draw_detections

    items, problems = expand_sources(args.sources)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if not items:
        raise ConfigError("no images to predict on; pass image files, directories or globs")
    detector = make_detector(args, score_threshold=args.score_threshold, iou_threshold=args.iou,
                             max_det=args.max_det, soft_nms=args.soft_nms or None)
    out_dir = Path(args.out) if args.out else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    skipped = 0
    total = 0
    for start in range(0, len(items), args.batch_size):
        chunk = items[start : start + args.batch_size]
        images, names = [], []
        for path, name in chunk:
            try:
                images.append(load_image(path))
                names.append(name)
            except EfficientDetError as exc:
                skipped += 1
                print(f"error: {exc} (skipped)", file=sys.stderr)
        if not images:
            continue
        for name, img, det in zip(names, images, detector(images, batch_size=args.batch_size)):
            total += len(det)
            counts = ", ".join(f"{n} {c}" for c, n in det.counts().items()) or "no detections"
            t = det.timings
            print(f"{name}: {img.width}x{img.height} {counts} ({t['preprocess_ms']:.1f} ms preprocess, "
                  f"{t['inference_ms']:.1f} ms inference, {t['postprocess_ms']:.1f} ms postprocess)")
            records.extend(det.to_coco(file_name=name))
            if out_dir:
                target = out_dir / name
                target.parent.mkdir(parents=True, exist_ok=True)
                draw_detections(img, det).save(target.with_suffix(target.suffix if target.suffix.lower() in
                                                                  {".jpg", ".jpeg", ".png"} else ".png"))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(records, indent=1) + "\n")
    done = len(items) - skipped
    summary = f"{done} image(s), {total} detection(s)"
    if out_dir:
        summary += f"; annotated images in {out_dir}"
    if args.json:
        summary += f"; detections in {args.json}"
    print(summary)
    if skipped or problems:
        print(f"error: {skipped + len(problems)} input(s) skipped (see above)", file=sys.stderr)
        return 1
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="detect objects in images", description="Detect objects in images.")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="image files, directories or globs")
    add_model_options(p)
    p.add_argument("--score-threshold", type=unit_float, default=PREDICT.score_threshold,
                   help=f"minimum score (default {PREDICT.score_threshold})")
    p.add_argument("--iou", type=unit_float, default=None, help=f"NMS IoU threshold (default {PREDICT.iou_threshold})")
    p.add_argument("--soft-nms", action="store_true", help="Gaussian soft-NMS instead of hard NMS")
    p.add_argument("--max-det", type=positive_int, default=PREDICT.max_det,
                   help=f"detections per image (default {PREDICT.max_det})")
    p.add_argument("--batch-size", type=positive_int, default=1, help="images per forward pass (default 1)")
    p.add_argument("--out", help="folder for annotated images")
    p.add_argument("--json", help="write detections as COCO-style results JSON")
    p.set_defaults(func=run)


