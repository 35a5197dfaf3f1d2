"""``efficientdet serve``: the HTTP detection service (implementation in :mod:`efficientdet.serve`)."""

from __future__ import annotations

import argparse
import sys

from .common import add_model_options, non_negative_float, non_negative_int, positive_float, positive_int, unit_float


def run(args: argparse.Namespace) -> int:
    """Load the model, then serve until Ctrl-C / SIGTERM (exit 0 after the requests in flight finish)."""
    from ..serve.app import ServeSettings, create_app
    from ..serve.engine import build_detector
    from ..serve.server import serve_app

    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"warning: listening on {args.host} without --api-key: anyone who can reach it can use it",
              file=sys.stderr)
    detector = build_detector(args.weights, model=args.model, backend=args.backend, device=args.device,
                              max_det=args.max_det, image_size=args.image_size, precision=args.precision,
                              calibration=args.calibration)
    settings = ServeSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                             max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels, api_key=args.api_key,
                             score_threshold=args.score_threshold, weights=args.weights)
    return serve_app(create_app(detector, settings), host=args.host, port=args.port, log_level=args.log_level)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP detection / segmentation service with a browser page",
                       description="Serve a model over HTTP: POST /v1/detect (boxes), POST /v1/segment "
                                   "(segmentation and joint models: a class-index PNG mask), GET /v1/model, "
                                   "/healthz, /readyz, /metrics and a browser page at /. Concurrent requests "
                                   "are batched. The default backend here is torch (per-request IoU, batches of "
                                   "any size); --backend onnxruntime has its NMS inside the graph, so requests "
                                   "keep its IoU.")
    add_model_options(p, weights_required=True)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=non_negative_int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--max-batch", type=positive_int, default=8,
                   help="images per forward pass at most (default 8; 1 turns batching off)")
    p.add_argument("--max-wait-ms", type=non_negative_float, default=10.0,
                   help="how long a request waits for others to share its forward pass (default 10)")
    p.add_argument("--max-upload-mb", type=positive_float, default=20.0,
                   help="larger uploads are refused with 413 (default 20)")
    p.add_argument("--max-pixels", type=positive_int, default=40_000_000,
                   help="larger images are refused with 400 before decoding (default 40000000)")
    p.add_argument("--max-det", type=positive_int, default=100,
                   help="the largest max_det a request may ask for (default 100)")
    p.add_argument("--score-threshold", type=unit_float, default=0.25,
                   help="score threshold of requests that do not give one (default 0.25)")
    p.add_argument("--api-key", default=None,
                   help="require this key on /v1/* (header 'X-API-Key: KEY' or 'Authorization: Bearer KEY')")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=run)
