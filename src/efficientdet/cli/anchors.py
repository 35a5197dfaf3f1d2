"""``efficientdet anchors``: how well a model's anchors fit a data set, and a better fitting proposal."""

from __future__ import annotations

import argparse
import sys

from .common import image_size


def run(args: argparse.Namespace) -> int:
    from ..anchor_fit import input_boxes, p2_hint, propose_anchors, propose_p2
    from ..data import read_dataset
    from ..data.read import require_images
    from ..variants import get_config

    data = read_dataset(args.format, args.train_images, args.train_annotations,
                        class_names=args.names if args.format in ("voc", "yolo", "auto") and args.names else None)
    if data.report.counts:
        print(data.report.summary(), file=sys.stderr)
    require_images(data, args.train_annotations, args.train_images)
    overrides = {"image_size": args.image_size} if args.image_size else {}
    config = get_config(args.model, **overrides)
    boxes = input_boxes(data, config.image_size)
    prop = propose_anchors(boxes, config.image_size, config.anchor_scale, config.aspect_ratios, config.min_level,
                           config.max_level, config.num_scales, iou_threshold=args.iou)
    print(f"{len(data)} images, {len(boxes)} boxes (crowd boxes left out), {config.name} at {config.image_size}px "
          f"(boxes scaled as in evaluation: long side -> {config.image_size}px)\n")
    print("current anchors\n" + prop.current.format() + "\n")
    print("proposed anchors\n" + prop.proposed.format() + "\n")
    ratios = " ".join(f"[{a:g},{b:g}]" for a, b in prop.proposed.aspect_ratios)
    if prop.improves:
        print(f"proposal: anchor_scale {prop.proposed.anchor_scale:g}, aspect ratios {ratios}: best possible recall "
              f"{prop.current.recall:.3f} -> {prop.proposed.recall:.3f}; 'efficientdet train --anchors auto' (the "
              "default) applies it, or pass --model-override "
              f"anchor_scale={prop.proposed.anchor_scale:g} --model-override "
              f"'aspect_ratios=[{', '.join(f'[{a:g}, {b:g}]' for a, b in prop.proposed.aspect_ratios)}]'")
    else:
        print("proposal: keep the current anchors (no anchor_scale / aspect ratios raise recall by a point)")
    if prop.image_size > config.image_size:
        report = prop.image_size_report
        extra = (f" ({report.too_small} of {report.num_boxes} boxes too small there)" if report else "")
        print(f"input size: {prop.proposed.too_small} boxes are too small for any anchor at "
              f"{config.image_size}px; --image-size {prop.image_size} is the smallest size with at most 1% "
              f"too small{extra}")
    else:
        print(f"input size: {config.image_size}px is large enough (at most 1% of the boxes too small)")
    p2 = propose_p2(boxes, prop, config.min_level, config.max_level, config.num_scales)
    if p2 is not None:
        print(p2_hint(p2))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("anchors", help="check and fit the anchors to a data set",
                       description="Report, per pyramid level, how many training boxes get an anchor at the "
                       "matcher's IoU, the best possible recall and the objects too small for any anchor; "
                       "propose anchor_scale, aspect ratios (k-means on IoU + recall search) and an input size.")
    p.add_argument("--train-images", required=True, help="training images directory")
    p.add_argument("--train-annotations", required=True, help="COCO json, or VOC/YOLO annotations directory")
    p.add_argument("--format", default="auto", choices=("auto", "coco", "voc", "yolo"))
    p.add_argument("--names", help="VOC/YOLO: class names file (one per line)")
    p.add_argument("--model", default="efficientdet_d0", help="variant name (default efficientdet_d0)")
    p.add_argument("--image-size", type=image_size, help="network input side (default: the model's)")
    p.add_argument("--iou", type=float, default=0.5, help="matcher IoU threshold (default 0.5)")
    p.set_defaults(func=run)
