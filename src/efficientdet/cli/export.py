"""``efficientdet export``: a model as one ONNX file or a TorchScript archive."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from ..inference.config import DEFAULTS
from .common import image_size, positive_int, unit_float


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``export``: model + weights -> .onnx or TorchScript file."""
    p = sub.add_parser(
        "export",
        help="export a model to ONNX or TorchScript",
        description="Export a model to one self-contained ONNX file (or a TorchScript archive). Input: normalised "
        "float32 (B, 3, S, S). Outputs: raw (B, N, C) logits + (B, N, 4) deltas, or with --nms fixed-size boxes "
        "(network pixels), scores, labels (-1 = padding) and num_detections.",
    )
    p.add_argument("--model", default=None, help="variant name (default: the checkpoint's, else d0)")
    p.add_argument("--task", choices=("detect", "segment"), default=None,
                   help="which head to export (default: the model's; a joint model exports detection unless "
                        "segment: the arg-max class map (B, S, S) uint8 in the graph)")
    p.add_argument("--weights", help="checkpoint file or published name (required unless --random-weights)")
    p.add_argument("--random-weights", action="store_true", help="export random weights (testing only)")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--out", help="output file (default <model>.onnx / <model>.pt)")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=positive_int, default=1, help="fixed batch size (default 1)")
    batch.add_argument("--dynamic-batch", action="store_true", help="variable batch dimension")
    nms = p.add_mutually_exclusive_group()
    nms.add_argument("--nms", dest="nms", action="store_true", help="post-processing (top-k, decode, NMS) in the graph")
    nms.add_argument("--no-nms", dest="nms", action="store_false", help="raw outputs (default)")
    p.set_defaults(nms=False)
    p.add_argument("--half", action="store_true", help="float16 weights and compute (input/outputs stay float32)")
    p.add_argument("--int8", action="store_true",
                   help="static int8 quantisation (onnxruntime; int8 weights per channel, uint8 activations) "
                        "calibrated on --calibration images")
    p.add_argument("--calibration", metavar="DIR", help="--int8: folder of representative images")
    p.add_argument("--calibration-images", type=positive_int, default=32,
                   help="--int8: calibration images used (default 32, the first in sorted order)")
    p.add_argument("--image-size", type=image_size, default=None, help="network input size S")
    p.add_argument("--opset", type=positive_int, default=17, help="ONNX opset (>= 17, default 17)")
    p.add_argument("--score-threshold", type=unit_float, default=DEFAULTS.score_threshold,
                   help=f"--nms: minimum score (default {DEFAULTS.score_threshold})")
    p.add_argument("--iou", type=unit_float, default=DEFAULTS.iou_threshold,
                   help=f"--nms: IoU threshold (default {DEFAULTS.iou_threshold})")
    p.add_argument("--max-det", type=positive_int, default=DEFAULTS.max_det,
                   help=f"--nms: detections per image (default {DEFAULTS.max_det})")
    p.add_argument("--no-fuse", dest="fuse", action="store_false", help="keep BatchNorm layers (default: folded)")
    p.set_defaults(func=run)


def _export_segmentation(args: argparse.Namespace, model) -> int:
    from ..inference.seg_export import export_seg_onnx

    if args.format != "onnx" or args.nms or args.half:
        raise ConfigError("segmentation export: ONNX only, without --nms/--half (the arg-max is in the graph)")
    out = Path(args.out) if args.out else Path(f"{model.config.name}.onnx")
    path = export_seg_onnx(model, out, batch=args.batch, dynamic_batch=args.dynamic_batch, opset=args.opset,
                           fuse=args.fuse)
    s = model.config.image_size
    batch = "dynamic" if args.dynamic_batch else str(args.batch)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, onnx, input images ({batch}, 3, {s}, {s}) normalised "
          f"float32, output masks ({batch}, {s}, {s}) uint8 class indices on the canvas; run it without PyTorch: "
          "efficientdet.deploy.OnnxSegmenter)")
    return 0


def run(args: argparse.Namespace) -> int:
    from ..factory import create_model

    if args.weights is None and not args.random_weights:
        raise ConfigError("export needs --weights FILE (or --random-weights for a test export)")
    if args.weights is not None and args.random_weights:
        raise ConfigError("pass either --weights or --random-weights, not both")
    if args.int8 and (args.format != "onnx" or args.half):
        raise ConfigError("--int8 makes an ONNX file from the float32 graph: use --format onnx without --half")
    if args.int8 and not args.calibration:
        raise ConfigError("--int8 needs --calibration DIR (a folder of representative images)")
    if args.calibration and not args.int8:
        raise ConfigError("--calibration is for --int8; add --int8 or drop --calibration")
    calibration = []
    if args.int8:
        from ..inference.quantize import calibration_files

        calibration = calibration_files(args.calibration, args.calibration_images)
    model = create_model(args.model, weights=args.weights, image_size=args.image_size).eval()
    task = args.task or ("detect" if model.config.detect else "segment")
    if task not in model.config.tasks:
        raise ConfigError(f"--task {task}: {model.config.name} has no {task} head")
    if task == "segment":
        return _export_segmentation(args, model)
    suffix = ".onnx" if args.format == "onnx" else ".pt"
    out = Path(args.out) if args.out else Path(f"{model.config.name}{suffix}")
    common = dict(batch=args.batch, dynamic_batch=args.dynamic_batch, nms=args.nms, half=args.half,
                  score_threshold=args.score_threshold, iou_threshold=args.iou, max_det=args.max_det, fuse=args.fuse)
    if args.format == "onnx":
        from ..export.onnx import export_onnx

        path = export_onnx(model, out, opset=args.opset, **common)
        if args.int8:
            from ..inference.quantize import quantize_int8

            cfg = model.config
            fp32 = path.rename(path.with_suffix(".fp32.tmp.onnx"))
            try:
                path = quantize_int8(fp32, path, calibration, cfg.image_size, cfg.mean, cfg.std)
            finally:
                fp32.unlink(missing_ok=True)
    else:
        from ..export.torchscript import export_torchscript

        path = export_torchscript(model, out, **common)
    size_mb = path.stat().st_size / 1e6
    kind = "boxes/scores/labels/num_detections" if args.nms else "cls_logits/box_deltas"
    batch = "dynamic" if args.dynamic_batch else str(args.batch)
    clip = " (+ optional image_sizes (B, 2) to clip boxes to each image)" if args.nms and args.format == "onnx" else ""
    hint = "; run it without PyTorch: efficientdet.deploy.OnnxModel" if args.format == "onnx" else ""
    precision = f", int8 (calibrated on {len(calibration)} images)" if args.int8 else ""
    size = model.config.image_size
    print(f"wrote {path} ({size_mb:.1f} MB, {args.format}{precision}, input images ({batch}, 3, {size}, {size}) "
          f"normalised float32{clip}, outputs {kind}{hint})")
    return 0
