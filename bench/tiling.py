"""Sliced inference on large images with small objects: AP_small with tiles vs without, same weights.

1. generates 256 px training crops and held-out large images (>= 2048 px, 30-60 objects of 10-26 px
   each) with :func:`efficientdet.data.synth_large.make_large_image_dataset`, deterministic;
2. trains a small EfficientDet (tinynet_e backbone, 256 px input) on the crops with the public API
   (``efficientdet.train.train(TrainConfig(...))``, CPU) unless ``--weights``;
3. scores the same weights on the large images with pycocotools (``efficientdet.eval``): the whole
   image letterboxed to the network's 256 px, the whole image at ``--image-size-large`` px, and
   :class:`efficientdet.inference.tiling.TiledDetector` (256 px tiles, 0.2 overlap, plus the whole image).

    PYTHONPATH=src python bench/tiling.py --out runs/bench_tiling --json bench/tiling_result.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from efficientdet.data.synth_large import make_large_image_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tracking import MODEL, cpu_name  # noqa: E402  (the same small architecture and CPU probe)


def train_detector(data: dict, out: Path, epochs: int, image_size: int, workers: int) -> Path:
    from efficientdet.train import TrainConfig, train

    cfg = TrainConfig(
        train_images=str(data["images"]), train_annotations=str(data["annotations"]), model="efficientdet_d0",
        image_size=image_size, model_overrides=dict(MODEL), epochs=epochs, batch_size=8, optimizer="adamw",
        lr=4e-3, warmup_epochs=1.0, ema_warmup_steps=200.0, scale_min=0.8, scale_max=1.25, amp=False,
        workers=workers, recompute_stages=0, out=str(out), tensorboard=False, plots=False, progress=False,
    )
    result = train(cfg)
    return Path(result.best or result.last)


class CachedDetector:
    """The wrapped detector's result per distinct image (by pixels), so that the tiled variants, which
    differ only in how they merge, run the network once per tile."""

    def __init__(self, detector) -> None:
        self.detector, self.cache = detector, {}

    def __call__(self, images, batch_size: int = 8):
        import hashlib

        keys = [(img.size, hashlib.blake2b(img.tobytes(), digest_size=16).digest()) for img in images]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        for i, det in zip(todo, self.detector([images[i] for i in todo], batch_size=batch_size)):
            self.cache[keys[i]] = det
        return [self.cache[k] for k in keys]


def run(args: argparse.Namespace) -> dict:
    from efficientdet import Detector
    from efficientdet.data import read_dataset
    from efficientdet.eval.run import evaluate_model
    from efficientdet.inference.tiling import TiledDetector

    out = Path(args.out)
    t0 = time.perf_counter()
    large = make_large_image_dataset(out / "large", num_images=args.num_large, seed=1)
    import torch

    result: dict = {"cpu": cpu_name(), "num_large": args.num_large, "torch_threads": torch.get_num_threads()}
    weights = Path(args.weights) if args.weights else None
    if weights is None:
        crops = make_large_image_dataset(out / "crops", num_images=args.num_crops, image_size=((256, 256), (256, 256)),
                                         num_objects=(1, 6), seed=0)
        print(f"data: {args.num_crops} crops, {args.num_large} large images ({time.perf_counter() - t0:.0f} s)",
              file=sys.stderr)
        t1 = time.perf_counter()
        weights = train_detector(crops, out / "run", args.epochs, 256, args.workers)
        result["train_seconds"] = round(time.perf_counter() - t1, 1)
        result["num_crops"], result["epochs"] = args.num_crops, args.epochs
    result["weights"] = str(weights)
    data = read_dataset("coco", large["images"], large["annotations"])
    result["large_image_sizes"] = [(s.width, s.height) for s in data.samples]
    result["objects"] = sum(len(s.boxes) for s in data.samples)

    rows = {}
    base = Detector("efficientdet_d0", weights=weights, score_threshold=0.001)
    cached = CachedDetector(base)
    variants = [("whole image at 256 px", base),
                (f"whole image at {args.image_size_large} px",
                 Detector("efficientdet_d0", weights=weights, score_threshold=0.001, image_size=args.image_size_large)),
                ("tiles 256 + whole image (nms)", TiledDetector(cached, tile=256, overlap=args.overlap)),
                ("tiles 256 + whole image (wbf)", TiledDetector(cached, tile=256, overlap=args.overlap, merge="wbf")),
                ("tiles 256 only (nms)", TiledDetector(cached, tile=256, overlap=args.overlap, full_image=False))]
    for name, detector in variants:
        t = time.perf_counter()
        metrics, _ = evaluate_model(detector, data, batch_size=8)
        seconds = time.perf_counter() - t
        rows[name] = {k: round(metrics[k], 4) for k in ("AP", "AP50", "APs", "ARs")}
        rows[name]["seconds_per_image"] = round(seconds / len(data.samples), 2)  # the tiled rows after the first
        # reuse the network's tile outputs (CachedDetector): their time is the merge's
        print(f"{name}: {rows[name]}", file=sys.stderr)
    result["results"] = rows
    base = rows["whole image at 256 px"]["APs"]
    result["APs_ratio_tiles_vs_whole_256"] = (round(rows["tiles 256 + whole image (nms)"]["APs"] / base, 2)
                                              if base > 0 else None)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_tiling")
    p.add_argument("--weights", help="skip training and use this checkpoint")
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--num-crops", type=int, default=300)
    p.add_argument("--num-large", type=int, default=4)
    p.add_argument("--overlap", type=float, default=0.2)
    p.add_argument("--image-size-large", type=int, default=1024)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    from efficientdet.memory import tune_malloc

    tune_malloc()
    result = run(args)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
