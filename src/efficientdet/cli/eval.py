"""``efficientdet eval``: COCO box metrics of a model (or of a results file) on a data set."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ..errors import ConfigError
from ..inference.config import DEFAULTS
from .common import add_model_options, add_tile_options, make_detector, positive_int, tiled, write_json


def run_segment(args: argparse.Namespace) -> int:
    """``eval --task segment``: mIoU & co. from one confusion matrix at the original resolution."""
    from ..data.read import require_images
    from ..data.segmentation import read_segmentation
    from ..eval.segmentation import evaluate_segmentation, format_seg_metrics, score_mask_folder

    names = args.names
    model = None
    if args.predictions:
        if args.weights:
            raise ConfigError("--predictions scores a folder of predicted masks: do not pass --weights with it")
    else:
        if not args.weights:  # --images may be left out for a VOC root (its JPEGImages/)
            raise ConfigError("eval --task segment needs --weights and --images (or --predictions MASK_DIR)")
        from ..inference.onnxrt import is_onnx_file

        if is_onnx_file(args.weights):  # an exported segmentation file: onnxruntime, no PyTorch network
            from ..inference.seg_onnxrt import OnnxSegmenter

            if args.image_size is not None or str(args.device) != "cpu":
                raise ConfigError(f"{args.weights}: an exported file runs on the CPU at its exported size; drop "
                                  "--image-size and --device")
            model = OnnxSegmenter(args.weights, threads=getattr(args, "threads", None))
        else:
            from ..factory import create_model

            model = create_model(args.model, weights=args.weights, image_size=args.image_size).to(args.device)
        if not model.config.seg_head:
            raise ConfigError(f"{args.weights}: a detection model has no segmentation head; eval it without --task "
                              "segment")
        names = names or getattr(model, "seg_class_names", None) or getattr(model, "class_names", None)
    data = read_segmentation(args.images, args.annotations, names=names, split="val", strict=args.strict)
    if data.report.counts:
        print(data.report.summary(), file=sys.stderr)
    require_images(data, args.annotations, args.images)
    if model is None:
        metrics = score_mask_folder(args.predictions, data)
    else:
        metrics = evaluate_segmentation(model, data, batch_size=args.batch_size, device=args.device,
                                        save_dir=args.save_predictions)
    print(f"{len(data)} images, {metrics['pixels']:,} labelled pixels")
    print(format_seg_metrics(metrics))
    if args.json:
        write_json(args.json, metrics)
    return 0


def _folder_ground_truth(args: argparse.Namespace, records: object) -> dict:
    """VOC / YOLO ground truth as a COCO dict for ``--predictions``, its classes numbered as the prediction
    ``records`` name them (``predict --json`` records carry ``category_name``; else the reader's 1..C)."""
    from ..data import read_dataset
    from ..data.read import require_images
    from ..data.records import align_classes

    if not args.images:
        raise ConfigError(f"--predictions with {args.annotations} (VOC / YOLO annotations) needs --images too")
    data = read_dataset(args.format, args.images, args.annotations, strict=args.strict)
    if data.report.counts:
        print(data.report.summary(), file=sys.stderr)
    require_images(data, args.annotations, args.images)
    named = {}
    for r in records if isinstance(records, list) else []:
        if isinstance(r, dict) and isinstance(r.get("category_name"), str) and isinstance(r.get("category_id"), int):
            named.setdefault(r["category_name"], r["category_id"])
    if named:
        data, notes = align_classes(data, list(named), list(named.values()),
                                    against=f"classes predicted in {Path(args.predictions).name}")
        for note in notes:
            print(f"warning: {note}", file=sys.stderr)
    else:
        print(f"warning: {args.predictions} names no classes (no category_name); its category ids are matched to "
              f"{args.annotations}'s classes numbered 1..{data.num_classes} in {data.class_names[:5]}... order",
              file=sys.stderr)
    return data.to_coco()


def run(args: argparse.Namespace) -> int:
    from ..eval.coco import evaluate_detections, format_metrics, load_predictions, read_results

    if args.task is None:  # from the weights: a segmentation-only checkpoint or export is scored by mIoU
        from ..inference.tasks import SEGMENT, weights_task

        args.task = "segment" if args.weights and weights_task(args.weights) == SEGMENT else "detect"
    if args.task == "segment":
        return run_segment(args)

    if args.predictions:
        if args.weights:
            raise ConfigError("--predictions scores a results file: do not pass --weights with it")
        if args.tile is not None:
            raise ConfigError("--tile runs a model: it does not apply to --predictions")
        truth: object = args.annotations
        results: object = args.predictions
        if Path(args.annotations).is_dir():  # VOC xml / YOLO txt: read with the images, as COCO ground truth
            results = read_results(args.predictions)
            truth = _folder_ground_truth(args, results)
        elif args.images:
            raise ConfigError("--predictions with a COCO json needs no --images; drop it")
        preds = load_predictions(results, truth, source=str(args.predictions))
        metrics = evaluate_detections(truth, preds, backend=args.coco_backend)
        if getattr(preds, "num_unmatched", 0):
            print(f"warning: {preds.num_unmatched} prediction(s) name images not in {args.annotations} "
                  "(skipped)", file=sys.stderr)
    else:
        if not args.images or not args.weights:
            raise ConfigError("eval needs --weights and --images (or --predictions FILE to score a results file)")
        from ..data import read_dataset
        from ..data.read import require_images
        from ..eval.run import evaluate_model
        from ..inference import sharding

        data = read_dataset(args.format, args.images, args.annotations, strict=args.strict)
        rank, world = sharding.join(args.device)  # under torchrun: this process's slice of the images
        if data.report.counts and rank == 0:
            print(data.report.summary(), file=sys.stderr)
        require_images(data, args.annotations, args.images)
        detector = sharding.rank_zero_first(rank, world, lambda: make_detector(
            args, threads=sharding.threads_per_process(), score_threshold=DEFAULTS.score_threshold,
            max_det=DEFAULTS.max_det, soft_nms=args.soft_nms or None))
        # the data set's classes as the model numbers them: by name for VOC / YOLO (their readers number the
        # classes 1..C themselves), by category id for COCO json when the ids are the model's
        from ..data.read import resolve_format
        from ..data.records import align_classes

        coco = resolve_format(args.format, args.annotations) == "coco"
        data, notes = align_classes(data, detector.class_names, detector.category_ids, by_id=coco,
                                    against="classes of the model")
        for note in notes if rank == 0 else []:
            print(f"warning: {note}", file=sys.stderr)
        detector = tiled(detector, args, DEFAULTS.max_det)
        if world > 1:
            from ..eval.coco import evaluate_detections
            from ..eval.run import predict_dataset

            mine = dataclasses.replace(data, samples=sharding.shard(data.samples, rank, world))
            parts = sharding.gather(predict_dataset(detector, mine, args.batch_size), world)
            sharding.leave(world)
            if rank:
                return 0
            dets = [d for part in parts for d in part]  # input order: the slices in rank order
            names = {int(cid): name for cid, name in zip(data.category_ids, data.class_names)}
            metrics = evaluate_detections(data.to_coco(), dets, class_names=names, backend=args.coco_backend)
        else:
            metrics, dets = evaluate_model(detector, data, batch_size=args.batch_size, backend=args.coco_backend,
                                           show_progress=sys.stderr.isatty())
        if args.save_predictions:
            Path(args.save_predictions).write_text(json.dumps(dets) + "\n")
    print(format_metrics(metrics))
    if args.json:
        write_json(args.json, metrics)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="COCO mAP (or mIoU with --task segment) of a model or of saved predictions",
                       description="COCO box metrics (pycocotools) of a model on a data set, or of a "
                                   "COCO results file with --predictions. --task segment: mIoU, per-class IoU, pixel "
                                   "and mean accuracy, fwIoU from one confusion matrix at each image's original "
                                   "resolution (255 ignored).")
    p.add_argument("--task", choices=("detect", "segment"), default=None,
                   help="detect (COCO box metrics) or segment (masks: --annotations is a folder of PNG masks named "
                        "by the image stems, a VOC root (val list) or COCO json); default: segment for a "
                        "segmentation-only checkpoint or export, else detect")
    p.add_argument("--names", help="segment: labels.txt, class i on line i, background first (default: the "
                                   "checkpoint's classes)")
    add_model_options(p)
    p.add_argument("--images", help="images folder")
    p.add_argument("--annotations", required=True, help="COCO JSON (or VOC/YOLO folder with --format; masks with "
                                                         "--task segment)")
    p.add_argument("--format", default="auto", choices=("auto", "coco", "voc", "yolo"))
    p.add_argument("--predictions", help="score this COCO results JSON (--task segment: this folder of predicted "
                                         "PNG masks, <stem>.png) instead of running a model")
    p.add_argument("--json", help="write the metrics as JSON")
    p.add_argument("--soft-nms", action="store_true", help="Gaussian soft-NMS (official evaluation)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--strict", action="store_true", help="fail on any annotation problem instead of skipping")
    p.add_argument("--coco-backend", choices=("pycocotools", "faster-coco-eval"), default="pycocotools")
    p.add_argument("--save-predictions", help="also write the model's detections (COCO results JSON; --task "
                                              "segment: a folder of predicted palette PNGs)")
    add_tile_options(p)
    p.set_defaults(func=run)
