"""Command line: ``efficientdet <command> ...``. Parses arguments and calls the library, nothing else.

Errors caused by input (files, fields, options) print one line on stderr and exit with code 2;
``--debug`` (anywhere on the command line) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path

from .errors import ConfigError, EfficientDetError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors that suggest the closest valid option."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if "unrecognized arguments" in message:
            options = _all_options(self)
            hints = []
            for word in message.split(":", 1)[1].split():
                if word.startswith("-"):
                    match = difflib.get_close_matches(word.split("=")[0], options, n=1, cutoff=0.6)
                    hints.append(f"{word} (did you mean {match[0]}?)" if match else word)
            if hints:
                message = "unrecognized arguments: " + " ".join(hints)
        print(f"{self.prog}: error: {message}; see '{self.prog} --help'", file=sys.stderr)
        raise SystemExit(2)


def _all_options(parser: argparse.ArgumentParser) -> list[str]:
    """Option strings of ``parser`` and of all its sub-commands."""
    options = []
    for action in parser._actions:
        options += action.option_strings
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                options += _all_options(child)
    return sorted(set(options))


def _typed(cast: type, what: str, ok, requirement: str):
    """An argparse ``type=`` that converts with ``cast`` and checks ``ok(value)`` (NaN never passes)."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{value} {requirement}")
        return value

    return parse


positive_int = _typed(int, "an integer", lambda v: v > 0, "must be a positive integer")
non_negative_int = _typed(int, "an integer", lambda v: v >= 0, "must be >= 0")
unit_float = _typed(float, "a number", lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]")
positive_float = _typed(float, "a number", lambda v: v > 0, "must be > 0")
non_negative_float = _typed(float, "a number", lambda v: v >= 0, "must be >= 0")


def image_size(text: str) -> int:
    value = positive_int(text)
    if value % 128:
        # any size works, but the official geometry wants a multiple of 2**7
        print(f"warning: --image-size {value} is not a multiple of 128; anchors and features stay aligned "
              "only approximately", file=sys.stderr)
    return value


# -- predict ------------------------------------------------------------------------------------------------
def expand_sources(sources: list[str]) -> tuple[list[tuple[Path, str]], list[str]]:
    """Files, directories (recursive) and globs -> [(path, display name)], plus sources that matched nothing."""
    import glob

    found: list[tuple[Path, str]] = []
    missing: list[str] = []
    for src in sources:
        path = Path(src)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            found += [(p, str(p.relative_to(path))) for p in files]
            if not files:
                missing.append(f"{src}: directory contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        elif path.is_file():
            found.append((path, path.name))
        elif any(ch in src for ch in "*?["):
            files = sorted(Path(p) for p in glob.glob(src, recursive=True) if Path(p).is_file())
            found += [(p, p.name) for p in files]
            if not files:
                missing.append(f"{src}: pattern matches no files")
        else:
            missing.append(f"{src}: no such file or directory")
    return found, missing


def _add_model_options(p: argparse.ArgumentParser, weights_required: bool = False) -> None:
    p.add_argument("--model", default=None,
                   help="variant name (see 'efficientdet models'); default: the one saved in --weights, else d0")
    p.add_argument("--weights", required=weights_required,
                   help="checkpoint file (this project's or effdet's), a published name, e.g. tf_efficientdet_d0, "
                        "or an exported .onnx file (run in onnxruntime)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--image-size", type=image_size, default=None, help="override the network input size")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default=None,
                   help="inference runtime (default torch; onnxruntime for an .onnx --weights file)")


def _make_detector(args: argparse.Namespace, score_threshold: float, max_det: int):
    iou = getattr(args, "iou", None)
    from .deploy import is_onnx_file

    if is_onnx_file(args.weights):  # an exported model: onnxruntime, no PyTorch for --nms files
        return _onnx_model(args, score_threshold, max_det, iou)
    from .detector import Detector

    kwargs = dict(weights=args.weights, device=args.device, score_threshold=score_threshold,
                  iou_threshold=0.5 if iou is None else iou, max_det=max_det, soft_nms=args.soft_nms,
                  image_size=args.image_size)
    if args.backend not in (None, "torch"):
        try:
            from .export.runtime import create_detector
        except ImportError as exc:
            raise ConfigError(f"--backend {args.backend} is not available ({exc}); use --backend torch") from exc
        return create_detector(args.model, backend=args.backend, **kwargs)
    return Detector(args.model, **kwargs)


def _onnx_model(args: argparse.Namespace, score_threshold: float, max_det: int, iou: float | None):
    from .deploy import OnnxModel
    from .variants import get_config

    name = args.weights
    if args.device != "cpu" or args.image_size is not None or args.backend == "torch":
        raise ConfigError(f"{name}: an exported ONNX file runs in onnxruntime on the CPU at its exported size; "
                          "drop --device, --image-size and --backend torch")
    model = OnnxModel(name, score_threshold=score_threshold, max_det=max_det, iou_threshold=iou,
                      soft_nms=args.soft_nms)
    if args.model is not None and get_config(args.model).name != model.config.get("name"):
        raise ConfigError(f"{name}: the file holds {model.config.get('name')}, not {args.model}; drop --model")
    return model


def cmd_predict(args: argparse.Namespace) -> int:
    from .images import load_image
    from .visualize import draw_detections

    items, problems = expand_sources(args.sources)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if not items:
        raise ConfigError("no images to predict on; pass image files, directories or globs")
    detector = _make_detector(args, args.score_threshold, args.max_det)
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


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="detect objects in images", description="Detect objects in images.")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="image files, directories or globs")
    _add_model_options(p)
    p.add_argument("--score-threshold", type=unit_float, default=0.25, help="minimum score (default 0.25)")
    p.add_argument("--iou", type=unit_float, default=None, help="NMS IoU threshold (default 0.5)")
    p.add_argument("--soft-nms", action="store_true", help="Gaussian soft-NMS instead of hard NMS")
    p.add_argument("--max-det", type=positive_int, default=100, help="detections per image (default 100)")
    p.add_argument("--batch-size", type=positive_int, default=1, help="images per forward pass (default 1)")
    p.add_argument("--out", help="folder for annotated images")
    p.add_argument("--json", help="write detections as COCO-style results JSON")
    p.set_defaults(func=cmd_predict)


# -- models -------------------------------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from .anchors import generate_anchors
    from .complexity import measure
    from .variants import VARIANTS, compound_scaling
    from .weights import PUBLISHED_AP, PUBLISHED_FILES

    rows = []
    configs = list(VARIANTS.values())
    if args.phi is not None:
        configs.append(compound_scaling(args.phi))
    for cfg in configs:
        m = measure(cfg)
        n_anchors = len(generate_anchors(cfg.image_size, cfg.min_level, cfg.max_level, cfg.anchor_scale,
                                         cfg.num_scales, cfg.aspect_ratios)) if cfg.detect else 0
        rows.append({"name": cfg.name, "input_size": cfg.image_size, "params": m["params"], "flops": m["flops"],
                     "paper_flops": cfg.paper_flops, "backbone": cfg.backbone, "fpn_channels": cfg.fpn_channels,
                     "fpn_layers": cfg.fpn_layers, "head_layers": cfg.head_layers, "fusion": cfg.fusion,
                     "anchors": n_anchors, "tasks": list(cfg.tasks), "levels": [cfg.min_level, cfg.max_level],
                     "paper_params": cfg.reference_params if cfg.seg_head else None,
                     "published_weights": PUBLISHED_FILES.get(cfg.name),
                     "coco_ap": PUBLISHED_AP.get(cfg.name)})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'model':<22}{'input':>6}{'params':>12}{'FLOPs':>10}{'paper':>8}  backbone")
    for r in rows:
        paper = f"{r['paper_flops'] / 1e9:.1f}B" if r["paper_flops"] else "-"
        print(f"{r['name']:<22}{r['input_size']:>6}{r['params']:>12,}{r['flops'] / 1e9:>9.2f}B{paper:>8}  "
              f"{r['backbone']}")
    return 0


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the model family with parameters and FLOPs",
                       description="List every variant: input size, parameters and FLOPs (multiply-adds) "
                                   "measured from the model.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--phi", type=float, default=None, help="also show the compound-scaling row for this phi")
    p.set_defaults(func=cmd_models)


# -- eval ---------------------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    from .eval.coco import evaluate_detections, format_metrics, load_predictions

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
        from .data import read_dataset
        from .eval.run import evaluate_model

        data = read_dataset(args.format, args.images, args.annotations, strict=args.strict)
        if data.report.counts:
            print(data.report.summary(), file=sys.stderr)
        detector = _make_detector(args, 0.001, 100)
        metrics, dets = evaluate_model(detector, data, batch_size=args.batch_size, backend=args.coco_backend,
                                       show_progress=sys.stderr.isatty())
        if args.save_predictions:
            Path(args.save_predictions).write_text(json.dumps(dets) + "\n")
    print(format_metrics(metrics))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(metrics, indent=1) + "\n")
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="COCO mAP of a model (or of a results file) on a data set",
                       description="COCO box metrics (pycocotools) of a model on a data set, or of a "
                                   "COCO results file with --predictions.")
    _add_model_options(p)
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
    p.set_defaults(func=cmd_eval)


# -- synth --------------------------------------------------------------------------------------------------
def cmd_synth(args: argparse.Namespace) -> int:
    from .data.synth import make_synthetic_dataset

    if args.task == "segment":
        from .data.synth_seg import make_synthetic_segmentation

        seg = make_synthetic_segmentation(args.out_dir, num_train=args.num_train, num_val=args.num_val, seed=args.seed)
        print(f"synthetic segmentation set (VOC layout) in {seg['root']}: images {seg['images']}, masks "
              f"{seg['masks']}, splits {seg['train_list'].parent}, class names {seg['labels']}")
        return 0
    paths = make_synthetic_dataset(args.out_dir, num_train=args.num_train, num_val=args.num_val, seed=args.seed)
    print(f"synthetic data set in {paths['root']}: train {paths['train_images']} + {paths['train_annotations']}, "
          f"val {paths['val_images']} + {paths['val_annotations']}")
    return 0


def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="generate a synthetic COCO-format data set",
                       description="Generate a deterministic synthetic shapes data set in COCO format.")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--num-train", type=non_negative_int, default=200)
    p.add_argument("--num-val", type=non_negative_int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--task", choices=("detect", "segment"), default="detect",
                   help="detect: COCO-format boxes; segment: Pascal VOC segmentation layout (palette PNG masks)")
    p.set_defaults(func=cmd_synth)


# -- train / export / benchmark (defined next to their implementations) --------------------------------------
def _add_train(sub) -> None:
    from .train.cli import add_train_parser

    add_train_parser(sub)


def _add_export(sub) -> None:
    from .export.cli import add_export_parser

    add_export_parser(sub)


def _add_benchmark(sub) -> None:
    from .export.cli import add_benchmark_parser

    add_benchmark_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="efficientdet", description="EfficientDet object detection: predict, train, evaluate, "
                    "export and benchmark.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"efficientdet {__import__('efficientdet').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for add in (_add_predict, _add_train, _add_eval, _add_export, _add_benchmark, _add_models, _add_synth):
        try:
            add(sub)
        except ImportError:  # a command whose implementation is not installed
            continue
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .memory import tune_malloc

    tune_malloc()  # reuse freed large blocks instead of page-faulting them in again (memory.py)
    try:
        return int(args.func(args) or 0)
    except EfficientDetError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # file-system problems: name the path, no traceback
        if debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}; check the path and its permissions", file=sys.stderr)
        return 2
    except Exception as exc:
        if debug:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"error: {type(exc).__name__}: {first} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
