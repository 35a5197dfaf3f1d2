"""``efficientdet export`` and ``efficientdet benchmark`` sub-commands (registered by efficientdet.cli)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``export``: model + weights -> .onnx or TorchScript file."""
    from ..cli import image_size, positive_int, unit_float

    p = sub.add_parser(
        "export",
        help="export a model to ONNX or TorchScript",
        description="Export a model to one self-contained ONNX file (or a TorchScript archive). Input: normalised "
        "float32 (B, 3, S, S). Outputs: raw (B, N, C) logits + (B, N, 4) deltas, or with --nms fixed-size boxes "
        "(network pixels), scores, labels (-1 = padding) and num_detections.",
    )
    p.add_argument("--model", default="efficientdet_d0", help="variant name (default d0)")
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
    p.add_argument("--image-size", type=image_size, default=None, help="network input size S")
    p.add_argument("--opset", type=positive_int, default=17, help="ONNX opset (>= 17, default 17)")
    p.add_argument("--score-threshold", type=unit_float, default=0.001, help="--nms: minimum score (default 0.001)")
    p.add_argument("--iou", type=unit_float, default=0.5, help="--nms: IoU threshold (default 0.5)")
    p.add_argument("--max-det", type=positive_int, default=100, help="--nms: detections per image (default 100)")
    p.add_argument("--no-fuse", dest="fuse", action="store_false", help="keep BatchNorm layers (default: folded)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from ..factory import create_model

    if args.weights is None and not args.random_weights:
        raise ConfigError("export needs --weights FILE (or --random-weights for a test export)")
    if args.weights is not None and args.random_weights:
        raise ConfigError("pass either --weights or --random-weights, not both")
    model = create_model(args.model, weights=args.weights, image_size=args.image_size).eval()
    suffix = ".onnx" if args.format == "onnx" else ".pt"
    out = Path(args.out) if args.out else Path(f"{model.config.name}{suffix}")
    common = dict(batch=args.batch, dynamic_batch=args.dynamic_batch, nms=args.nms, half=args.half,
                  score_threshold=args.score_threshold, iou_threshold=args.iou, max_det=args.max_det, fuse=args.fuse)
    if args.format == "onnx":
        from .onnx import export_onnx

        path = export_onnx(model, out, opset=args.opset, **common)
    else:
        from .torchscript import export_torchscript

        path = export_torchscript(model, out, **common)
    size_mb = path.stat().st_size / 1e6
    kind = "boxes/scores/labels/num_detections" if args.nms else "cls_logits/box_deltas"
    batch = "dynamic" if args.dynamic_batch else str(args.batch)
    clip = " (+ optional image_sizes (B, 2) to clip boxes to each image)" if args.nms and args.format == "onnx" else ""
    hint = "; run it without PyTorch: efficientdet.deploy.OnnxModel" if args.format == "onnx" else ""
    print(f"wrote {path} ({size_mb:.1f} MB, {args.format}, input images ({batch}, 3, {model.config.image_size}, "
          f"{model.config.image_size}) normalised float32{clip}, outputs {kind}{hint})")
    return 0


def add_benchmark_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``benchmark``: params, FLOPs, latency and throughput per variant (paper Table 2 layout)."""
    from ..cli import image_size, positive_float, positive_int, unit_float

    p = sub.add_parser(
        "benchmark",
        help="latency/throughput of the model family on this machine",
        description="Params, FLOPs, batch-1 end-to-end latency (preprocess/network/postprocess) and throughput "
        "per variant, with random weights.",
    )
    p.add_argument("--models", default="d0,d1,d2,d3,d4,d5,d6,d7", help="comma-separated variants (default d0..d7)")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                   help="torch (default) or onnxruntime (the export with NMS inside, cached: its 'net' column "
                        "includes the post-processing)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op threads (default: torch's)")
    p.add_argument("--batch-size", type=positive_int, default=1, help="batch size for the throughput column")
    p.add_argument("--runs", type=positive_int, default=20, help="timed runs (median; default 20)")
    p.add_argument("--warmup", type=positive_int, default=3, help="untimed runs first (default 3)")
    p.add_argument("--image-size", type=image_size, default=None, help="override every variant's input size")
    p.add_argument("--score-threshold", type=unit_float, default=0.25, help="post-processing threshold (0.25)")
    p.add_argument("--json", help="write the results as JSON")
    p.add_argument("--budget-ms", type=positive_float, default=None,
                   help="find the largest variant whose batch-1 latency fits (measured small to large)")
    p.add_argument("--from-json", metavar="REPORT",
                   help="with --budget-ms: choose from a report written by --json (e.g. measured on the target "
                        "machine) instead of measuring")
    p.set_defaults(func=cmd_benchmark)


def cmd_benchmark(args: argparse.Namespace) -> int:
    import torch

    from ..variants import get_config
    from .benchmark import HEADER, format_table, run_benchmark

    if args.from_json:
        return _budget_from_report(args)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        raise ConfigError("--models is empty; pass e.g. --models d0,d1")
    for m in models:
        get_config(m)  # one-line error for unknown names before any timing
    if args.threads:
        torch.set_num_threads(args.threads)
    print(HEADER, flush=True)
    report = run_benchmark(models, budget_ms=args.budget_ms, backend=args.backend, device=args.device,
                           batch_size=args.batch_size, runs=args.runs, warmup=args.warmup,
                           image_size=args.image_size, score_threshold=args.score_threshold)
    if args.budget_ms is not None:
        print(format_table(report).splitlines()[-1])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


def _budget_from_report(args: argparse.Namespace) -> int:
    """``benchmark --from-json REPORT --budget-ms B``: the budget applied to a saved report's rows, in their order."""
    from ..errors import DataError
    from .benchmark import BenchResult, budget_choice, format_table

    if args.budget_ms is None:
        raise ConfigError("--from-json needs --budget-ms: it only chooses a variant from a saved report")
    path = Path(args.from_json)
    try:
        report = json.loads(path.read_text())
        rows = [BenchResult(**r) for r in report["results"]]
    except FileNotFoundError:
        raise DataError(f"--from-json {path}: no such file; pass a report written by 'benchmark --json'") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"--from-json {path}: not a report written by 'benchmark --json' ({exc})") from None
    report.update(budget_ms=args.budget_ms, **budget_choice(rows, args.budget_ms, [r.model for r in rows]))
    print(format_table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0
