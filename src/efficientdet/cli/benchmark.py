"""``efficientdet benchmark``: params, FLOPs, latency and throughput per variant on this machine."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError, DataError
from ..inference.config import PREDICT
from .common import image_size, positive_float, positive_int, unit_float, write_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``benchmark``: params, FLOPs, latency and throughput per variant (paper Table 2 layout)."""
    p = sub.add_parser(
        "benchmark",
        help="latency/throughput of the model family on this machine",
        description="Params, FLOPs, batch-1 end-to-end latency (preprocess/network/postprocess) and throughput "
        "per variant, with random weights.",
    )
    p.add_argument("--models", default="d0,d1,d2,d3,d4,d5,d6,d7",
                   help="comma-separated variants (default d0..d7; segmentation rows too: d0_seg ...)")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                   help="torch (default) or onnxruntime (the export with NMS inside, cached: its 'net' column "
                        "includes the post-processing)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op threads (default: torch's)")
    p.add_argument("--batch-size", type=positive_int, default=1, help="batch size for the throughput column")
    p.add_argument("--runs", type=positive_int, default=20, help="timed runs (median; default 20)")
    p.add_argument("--warmup", type=positive_int, default=3, help="untimed runs first (default 3)")
    p.add_argument("--image-size", type=image_size, default=None, help="override every variant's input size")
    p.add_argument("--score-threshold", type=unit_float, default=PREDICT.score_threshold,
                   help=f"post-processing threshold ({PREDICT.score_threshold})")
    p.add_argument("--json", help="write the results as JSON")
    p.add_argument("--budget-ms", type=positive_float, default=None,
                   help="find the largest variant whose batch-1 latency fits (measured small to large)")
    p.add_argument("--from-json", metavar="REPORT",
                   help="with --budget-ms: choose from a report written by --json (e.g. measured on the target "
                        "machine) instead of measuring")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..benchmark import HEADER, format_table, run_benchmark
    from ..variants import get_config

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
        write_json(args.json, report)
    return 0


def _budget_from_report(args: argparse.Namespace) -> int:
    """``benchmark --from-json REPORT --budget-ms B``: the budget applied to a saved report's rows, in their order."""
    from ..benchmark import BenchResult, budget_choice, format_table

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
        write_json(args.json, report)
    return 0
