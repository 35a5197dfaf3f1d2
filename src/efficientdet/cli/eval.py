"""``efficientdet eval``: COCO box metrics of a model (or of a results file) on a data set."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ConfigError
from ..inference.config import DEFAULTS
from .common import add_model_options, make_detector, positive_int


def run(args: argparse.Namespace) -> int:
    from ..eval.coco import evaluate_detections, format_metrics, load_predictions

    if args.predictions:
        if args.images or args.weights:
            raise ConfigError("--predictions scores a results file: do not pass --images/--weights with it")
        preds = load_predictions(args.predictions, args.annotations)
        metrics = evaluate_detections(args.annotations, preds, backend=args.coco_backend)
        if getattr(preds, "num_unmatched", 0):
            print(f"warning: {preds.num_unmatched} prediction(s) name images not in {args.annotations} "
                  "(skipped)", file=sys.stderr)
    else:
        if not args.images or not args.weights:
            raise ConfigError("eval needs --weights and --images (or --predictions FILE to score a results file)")
        from ..data import read_dataset
        from ..eval.run import evaluate_model

        data = read_dataset(args.format, args.images, args.annotations, strict=args.strict)
        if data.report.counts:
            print(data.report.summary(), file=sys.stderr)
        detector = make_detector(args, score_threshold=DEFAULTS.score_threshold,
                                 max_det=DEFAULTS.max_det, soft_nms=args.soft_nms or None)
        metrics, dets = evaluate_model(detector, data, batch_size=args.batch_size, backend=args.coco_backend,
                                       show_progress=sys.stderr.isatty())
        if args.save_predictions:
            Path(args.save_predictions).write_text(json.dumps(dets) + "\n")
    print(format_metrics(metrics))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(metrics, indent=1) + "\n")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="COCO mAP of a model (or of a results file) on a data set",
                       description="COCO box metrics (pycocotools) of a model on a data set, or of a "
                                   "COCO results file with --predictions.")
    add_model_options(p)
    p.add_argument("--images", help="images folder")
    p.add_argument("--annotations", required=True, help="COCO JSON (or VOC/YOLO folder with --format)")
    p.add_argument("--format", default="auto", choices=("auto", "coco", "voc", "yolo"))
    p.add_argument("--predictions", help="score this COCO results JSON instead of running a model")
    p.add_argument("--json", help="write the metrics as JSON")
    p.add_argument("--soft-nms", action="store_true", help="Gaussian soft-NMS (official evaluation)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--strict", action="store_true", help="fail on any annotation problem instead of skipping")
    p.add_argument("--coco-backend", choices=("pycocotools", "faster-coco-eval"), default="pycocotools")
    p.add_argument("--save-predictions", help="also write the model's detections (COCO results JSON)")
    p.set_defaults(func=run)
