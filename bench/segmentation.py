"""Segmentation quality against a peer, same budget: our D0-seg vs torchvision's LR-ASPP MobileNetV3-Large.

Both networks start from random weights (no ImageNet, no COCO), see the same synthetic VOC-layout data
set (``efficientdet synth --task segment``), the same augmentation (our ``TrainTransform``: flip, scale
jitter, crop, 255 padding), the same optimiser and schedule (AdamW, 1 warm-up epoch, cosine), batch,
input size and epochs, and are scored by the same code (:func:`efficientdet.eval.segmentation.evaluate_segmentation`:
one confusion matrix at each image's original resolution, 255 ignored). FLOPs (multiply-adds, batch 1)
are counted with PyTorch's flop counter for both at the training input size.

    .venv/bin/python bench/segmentation.py [--num-train 600 --num-val 100 --epochs 10 --batch 8 --size 256]

Prints one JSON object (also written to ``--json``); BENCHMARKS.md records the run.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader


def cpu_name() -> str:
    """The CPU's model name, as BENCHMARKS.md names every figure's machine (the library's probe)."""
    from efficientdet.inference.precision import cpu_info

    return cpu_info().name


class Peer(nn.Module):
    """LR-ASPP MobileNetV3-Large behind the interface our evaluation uses (``config``, logits out)."""

    def __init__(self, num_classes: int, image_size: int) -> None:
        super().__init__()
        from torchvision.models.segmentation import lraspp_mobilenet_v3_large

        from efficientdet.variants import get_config

        self.net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes)
        # only the fields evaluation reads: input size, normalisation (ImageNet, as torchvision's), classes
        self.config = get_config("d0_seg", image_size=image_size, seg_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


def flops(model: nn.Module, size: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    model.eval()
    with counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    return counter.get_total_flops() // 2


def train_and_eval(name: str, model: nn.Module, train_data, val_data, args, lr: float) -> dict:
    from efficientdet.data.segmentation import SegmentationDataset, collate_segmentation
    from efficientdet.data.transforms import TrainTransform
    from efficientdet.eval.segmentation import evaluate_segmentation
    from efficientdet.loss import segmentation_loss

    torch.manual_seed(args.seed)
    cfg = model.config
    transform = TrainTransform(args.size, cfg.mean, cfg.std, scale_range=(args.scale_min, args.scale_max))
    g = torch.Generator()
    steps_per_epoch = len(train_data) // args.batch
    total = steps_per_epoch * args.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=args.weight_decay)
    warmup = steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (0.1 + 0.9 * step / warmup)
        return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    model = model.to(memory_format=torch.channels_last)
    step, t0, losses = 0, time.perf_counter(), []
    for epoch in range(args.epochs):
        model.train()
        g.manual_seed(args.seed * 1000 + epoch)
        order = torch.randperm(len(train_data), generator=g).tolist()
        sampler = [(i, args.seed * 100_000 + epoch * len(order) + k) for k, i in enumerate(order)]
        loader = DataLoader(SegmentationDataset(train_data, transform), batch_size=args.batch, sampler=sampler,
                            collate_fn=collate_segmentation, num_workers=args.workers, drop_last=True)
        epoch_loss = 0.0
        for images, masks, _ in loader:
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss = segmentation_loss(model(images.contiguous(memory_format=torch.channels_last)), masks)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            step += 1
            epoch_loss += float(loss)
        losses.append(epoch_loss / max(1, steps_per_epoch))
        print(f"{name} lr {lr:g}: epoch {epoch + 1}/{args.epochs} loss {losses[-1]:.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    train_s = time.perf_counter() - t0
    metrics = evaluate_segmentation(model, val_data, batch_size=8)
    return {"mIoU": metrics["mIoU"], "pixel_accuracy": metrics["pixel_accuracy"],
            "mean_accuracy": metrics["mean_accuracy"], "fwIoU": metrics["fwIoU"],
            "per_class_IoU": {k: v["IoU"] for k, v in metrics["per_class"].items()},
            "epoch_loss": [round(v, 4) for v in losses], "train_seconds": round(train_s, 1), "steps": step}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="bench_out/seg_synth", help="where the synthetic set is written")
    p.add_argument("--num-train", type=int, default=600)
    p.add_argument("--num-val", type=int, default=100)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--lr", default="2e-3,1e-2",
                   help="peak learning rates (comma-separated): each model trains at each, its best is reported")
    p.add_argument("--ours-drop-path", type=float, default=0.0,
                   help="our backbone's stochastic depth (train's auto recipe turns it off below 10k steps)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--scale-min", type=float, default=0.5)
    p.add_argument("--scale-max", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", default="ours,peer")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from efficientdet import create_model
    from efficientdet.data.segmentation import read_segmentation
    from efficientdet.data.synth_seg import make_synthetic_segmentation

    paths = make_synthetic_segmentation(args.data, num_train=args.num_train, num_val=args.num_val, seed=args.seed)
    train_data = read_segmentation(None, paths["root"], split="train")
    val_data = read_segmentation(None, paths["root"], split="val")
    k = train_data.num_classes
    result: dict = {"cpu": cpu_name(), "threads": args.threads, "torch": torch.__version__,
                    "budget": {k2: getattr(args, k2) for k2 in ("num_train", "num_val", "epochs", "batch", "size",
                                                                 "lr", "weight_decay", "scale_min", "scale_max",
                                                                 "ours_drop_path")},
                    "optimizer": "AdamW, 1 warm-up epoch from 0.1x, cosine to 0, clip 10; no EMA; random init"}
    builders = {
        "ours": lambda: create_model("d0_seg", image_size=args.size, seg_class_names=train_data.class_names,
                                     backbone_drop_path=args.ours_drop_path),
        "peer": lambda: Peer(k, args.size),
    }
    for name in args.models.split(","):
        runs = []
        for lr in (float(v) for v in str(args.lr).split(",")):
            torch.manual_seed(args.seed)
            model = builders[name]()
            label = "efficientdet_d0_seg" if name == "ours" else "lraspp_mobilenet_v3_large"
            row = {"model": label, "lr": lr, "params": sum(p.numel() for p in model.parameters()),
                   "flops": flops(model, args.size)}
            row.update(train_and_eval(name, model, train_data, val_data, args, lr))
            runs.append(row)
            print(json.dumps({name: {k2: v for k2, v in row.items() if k2 != "per_class_IoU"}}), flush=True)
        result[name] = max(runs, key=lambda r: r["mIoU"])  # each model at its best learning rate
        result[f"{name}_runs"] = [{k2: r[k2] for k2 in ("lr", "mIoU", "pixel_accuracy", "train_seconds")}
                                  for r in runs]
    if "ours" in result and "peer" in result:
        result["mIoU_ratio"] = result["ours"]["mIoU"] / max(result["peer"]["mIoU"], 1e-9)
        result["flops_ratio"] = result["ours"]["flops"] / result["peer"]["flops"]
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
