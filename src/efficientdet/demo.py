"""End-to-end demo (``make demo``): synthetic data -> train from scratch on CPU -> evaluate -> predict.

``python -m efficientdet.demo --out demo_out`` writes ``demo_out/data`` (the synthetic shapes set),
``demo_out/run`` (the training run folder: weights, metrics.csv, plots, TensorBoard) and
``demo_out/predictions`` (held-out images with their detections drawn), then the segmentation demo in
``demo_out/seg`` (:mod:`efficientdet.demo_seg`: mIoU of a small segmentation model). No network access, no
pretrained weights: a small EfficientDet (EfficientNet-style ``tinynet_e`` backbone, 32-channel
2-layer BiFPN, 2-layer heads, 192 px) trains from scratch in a few minutes on 2 CPU cores with
``train``'s own defaults (``recipe=auto``, ``anchors=auto``: what a user gets without options) and
reaches AP50 ~0.99 on the validation split of the shapes set (BENCHMARKS.md, "Demo").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

#: the small architecture (ModelConfig overrides on top of efficientdet_d0)
DEMO_MODEL = {"backbone": "tinynet_e", "fpn_channels": 32, "fpn_layers": 2, "head_layers": 2,
              "backbone_drop_path": 0.0}
#: synthetic data: a bit larger and fewer objects than the default set, at the demo resolution
DEMO_DATA = {"image_size": ((192, 224), (192, 224)), "max_objects": 3, "min_object_size": 28.0,
             "max_object_frac": 0.6}


def run_demo(out: str | Path = "demo_out", epochs: int = 26, num_train: int = 320, num_val: int = 50,
             image_size: int = 192, workers: int = 1, seed: int = 0) -> dict:
    """Generate data, train, evaluate and predict; returns the final metrics and paths.

    Returns ``{"metrics", "train_seconds", "run_dir", "predictions"}``; ``metrics`` are the COCO numbers
    of the best EMA weights on the validation split (``efficientdet eval`` computes the same).
    """
    from .data import make_synthetic_dataset, read_dataset
    from .eval.coco import format_metrics
    from .images import load_image
    from .inference.detector import Detector
    from .train.config import TrainConfig
    from .train.trainer import evaluate, train
    from .visualize import draw_detections

    out = Path(out)
    t0 = time.perf_counter()
    paths = make_synthetic_dataset(out / "data", num_train=num_train, num_val=num_val, seed=seed, **DEMO_DATA)
    heldout = make_synthetic_dataset(out / "heldout", num_train=0, num_val=6, seed=seed + 1, **DEMO_DATA)
    print(f"synthetic data: {num_train} train / {num_val} val images in {paths['root']} "
          f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    cfg = TrainConfig(
        train_images=str(paths["train_images"]), train_annotations=str(paths["train_annotations"]),
        val_images=str(paths["val_images"]), val_annotations=str(paths["val_annotations"]),
        model="efficientdet_d0", image_size=image_size, model_overrides=dict(DEMO_MODEL), epochs=epochs,
        batch_size=8, amp=False, workers=workers, seed=seed,  # recipe and anchors: train's defaults (auto)
        recompute_stages=0,  # a 192 px model needs little memory: no recomputation
        out=str(out / "run"), val_interval=max(1, epochs // 3), tensorboard=True, plots=True,
    )
    t1 = time.perf_counter()
    result = train(cfg)
    train_seconds = time.perf_counter() - t1
    if result.interrupted:
        print(f"demo interrupted; continue with: efficientdet train --resume {result.run_dir}", file=sys.stderr)
        return {"metrics": result.metrics, "train_seconds": train_seconds, "run_dir": result.run_dir,
                "predictions": None}

    from .factory import create_model

    best = create_model("efficientdet_d0", weights=result.best or result.last)
    val = read_dataset("coco", paths["val_images"], paths["val_annotations"])
    metrics, _ = evaluate(best, val, batch_size=8)
    print(f"\nbest weights on the validation split:\n{format_metrics(metrics)}")

    pred_dir = out / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    detector = Detector(best, score_threshold=0.3)
    files = sorted(Path(heldout["val_images"]).iterdir())
    for path, det in zip(files, detector([str(p) for p in files])):
        draw_detections(load_image(path), det).save(pred_dir / f"{path.stem}.png")
    print(f"\ndemo done in {time.perf_counter() - t0:.0f} s (training {train_seconds:.0f} s): "
          f"AP50 {metrics['AP50']:.3f}, AP {metrics['AP']:.3f} on {len(val)} validation images\n"
          f"  annotated held-out images  {pred_dir}\n"
          f"  plots                      {result.run_dir}/{{loss,ap,pr_curve,val_predictions}}.png\n"
          f"  metrics per epoch          {result.run_dir / 'metrics.csv'}\n"
          f"  weights                    {result.best or result.last}")
    return {"metrics": metrics, "train_seconds": train_seconds, "run_dir": result.run_dir, "predictions": pred_dir}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m efficientdet.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out")
    parser.add_argument("--epochs", type=int, default=26)
    parser.add_argument("--num-train", type=int, default=320)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seg-epochs", type=int, default=16, help="epochs of the segmentation demo (0: skip it)")
    args = parser.parse_args(argv)
    from .memory import tune_malloc

    tune_malloc()  # as the efficientdet command does
    run_demo(args.out, epochs=args.epochs, num_train=args.num_train, workers=args.workers)
    if args.seg_epochs > 0:  # the paper's section 5.2: a segmentation model too (demo_seg.py)
        from .demo_seg import run_seg_demo

        run_seg_demo(Path(args.out) / "seg", epochs=args.seg_epochs, workers=args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
