"""``efficientdet synth``: a deterministic synthetic data set."""

from __future__ import annotations

import argparse

from .common import non_negative_int


def run(args: argparse.Namespace) -> int:
    if args.task == "segment":
        from ..data.synth_seg import make_synthetic_segmentation

        seg = make_synthetic_segmentation(args.out_dir, num_train=args.num_train, num_val=args.num_val, seed=args.seed)
        print(f"synthetic segmentation set (Pascal VOC layout) in {seg['root']}: images {seg['images']}, masks "
              f"{seg['masks']}, split lists {seg['train_list'].parent}, class names {seg['labels']}")
        return 0
    from ..data.synth import make_synthetic_dataset

    paths = make_synthetic_dataset(args.out_dir, num_train=args.num_train, num_val=args.num_val, seed=args.seed)
    print(f"synthetic data set in {paths['root']}: train {paths['train_images']} + {paths['train_annotations']}, "
          f"val {paths['val_images']} + {paths['val_annotations']}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="generate a synthetic data set (COCO boxes, or VOC-layout masks)",
                       description="Generate a deterministic synthetic shapes data set: COCO format for "
                                   "detection, Pascal VOC segmentation layout with --task segment.")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--num-train", type=non_negative_int, default=200)
    p.add_argument("--num-val", type=non_negative_int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--task", choices=("detect", "segment"), default="detect",
                   help="detect: COCO boxes; segment: JPEGImages/, SegmentationClass/ palette PNGs, ImageSets/")
    p.set_defaults(func=run)
