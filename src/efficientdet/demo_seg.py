"""The segmentation half of ``make demo``: synthetic VOC-layout masks -> train a small segmentation
EfficientDet from scratch on CPU -> mIoU on the validation split -> overlays of held-out images.

Writes ``<out>/data`` (the set ``efficientdet synth --task segment`` writes), ``<out>/run`` (the run
folder: weights, metrics.csv, loss / mIoU plots, validation overlays) and ``<out>/predictions``.
The network: the ``efficientdet_d0_seg`` layout (BiFPN over P3-P7, the official decoder) with the demo's
small ``tinynet_e`` backbone and a 32-channel 2-layer BiFPN, 160 px.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

#: ModelConfig overrides on top of efficientdet_d0_seg
DEMO_SEG_MODEL = {"backbone": "tinynet_e", "fpn_channels": 32, "fpn_layers": 2, "backbone_drop_path": 0.0}
DEMO_SEG_DATA = {"image_size": ((160, 200), (150, 200)), "max_objects": 4, "min_object_size": 24.0,
                 "max_object_frac": 0.6}


def run_seg_demo(out: str | Path = "demo_out/seg", epochs: int = 16, num_train: int = 160, num_val: int = 30,
                 image_size: int = 160, workers: int = 1, seed: int = 0) -> dict:
    """Generate data, train, evaluate and predict; returns ``{"metrics", "train_seconds", "run_dir",
    "predictions"}`` (``metrics``: ``efficientdet eval --task segment`` numbers of the best EMA weights)."""
    from .data.segmentation import read_segmentation
    from .data.synth_seg import make_synthetic_segmentation
    from .eval.segmentation import evaluate_segmentation, format_seg_metrics
    from .factory import create_model
    from .images import load_image
    from .inference.segmenter import Segmenter
    from .masks import overlay_mask
    from .train.config import TrainConfig
    from .train.trainer import train

    out = Path(out)
    t0 = time.perf_counter()
    paths = make_synthetic_segmentation(out / "data", num_train=num_train, num_val=num_val, seed=seed,
                                        **DEMO_SEG_DATA)
    heldout = make_synthetic_segmentation(out / "heldout", num_train=0, num_val=4, seed=seed + 1, **DEMO_SEG_DATA)
    print(f"synthetic segmentation data: {num_train} train / {num_val} val images in {paths['root']} "
          f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    root, images = str(paths["root"]), str(paths["images"])
    cfg = TrainConfig(
        task="segment", train_images=images, train_annotations=root, val_images=images, val_annotations=root,
        names=str(paths["labels"]), model="efficientdet_d0_seg", image_size=image_size,
        model_overrides=dict(DEMO_SEG_MODEL), epochs=epochs, batch_size=8,  # recipe: train's default (auto)
        amp=False, workers=workers, seed=seed, recompute_stages=0, out=str(out / "run"),
        val_interval=max(1, epochs // 2), tensorboard=False, plots=True,
    )
    t1 = time.perf_counter()
    result = train(cfg)
    train_seconds = time.perf_counter() - t1
    if result.interrupted:
        print(f"segmentation demo interrupted; continue with: efficientdet train --resume {result.run_dir}",
              file=sys.stderr)
        return {"metrics": result.metrics, "train_seconds": train_seconds, "run_dir": result.run_dir,
                "predictions": None}
    best = create_model(None, weights=result.best or result.last)
    val = read_segmentation(images, root, split="val")
    metrics = evaluate_segmentation(best, val, batch_size=8)
    print(f"\nbest segmentation weights on the validation split:\n{format_seg_metrics(metrics)}")
    pred_dir = out / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    files = sorted(Path(heldout["images"]).iterdir())
    for path, mask in zip(files, Segmenter(best)([str(p) for p in files])):
        overlay_mask(load_image(path), mask).save(pred_dir / f"{path.stem}.png")
    print(f"\nsegmentation demo done in {time.perf_counter() - t0:.0f} s (training {train_seconds:.0f} s): "
          f"mIoU {metrics['mIoU']:.3f}, pixel accuracy {metrics['pixel_accuracy']:.3f} on {len(val)} validation "
          f"images\n  overlays of held-out images  {pred_dir}\n"
          f"  plots                        {result.run_dir}/{{loss,miou,val_overlays}}.png\n"
          f"  weights                      {result.best or result.last}")
    return {"metrics": metrics, "train_seconds": train_seconds, "run_dir": result.run_dir, "predictions": pred_dir}
