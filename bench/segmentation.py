"""Segmentation quality against a peer, same budget: our D0-seg vs torchvision's LR-ASPP MobileNetV3-Large.

Both networks start from random weights (no ImageNet, no COCO), see the same VOC-layout data set
(``--kind synth``: ``efficientdet synth --task segment``, 4 flat shapes on smooth backgrounds;
``--kind photos``: 10 textured shape classes from 10 px to half the image on cluttered scikit-image
photographs, the segmentation twin of ``bench/recipes.py``'s ``photos`` detection set), the same
augmentation (our ``TrainTransform``: flip, scale jitter, crop, 255 padding), the same optimiser and
schedule (AdamW, 1 warm-up epoch, cosine), batch, input size and epochs, and are scored by the same
code (:func:`efficientdet.eval.segmentation.evaluate_segmentation`: one confusion matrix at each
image's original resolution, 255 ignored). FLOPs (multiply-adds, batch 1) are counted with PyTorch's
flop counter for both at the training input size.

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


def make_photo_segmentation(root: str | Path, num_train: int, num_val: int, seed: int = 0) -> dict[str, Path]:
    """A VOC-layout set (``JPEGImages``, ``SegmentationClass`` palette PNGs, ``ImageSets/Segmentation``,
    ``labels.txt``): 1-6 textured, outlined shapes of 10 classes (10 px to half the short side, later ones
    on top) on crops of scikit-image photographs; class i + 1 inside shape i, 0 elsewhere (outlines too)."""
    import sys

    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    sys.path.insert(0, str(Path(__file__).parent))
    from recipes import CLASSES, _backgrounds, _shape_polygon, photo_canvas

    from efficientdet.masks import save_palette_mask

    root = Path(root)
    if (root / "ImageSets" / "Segmentation" / "val.txt").is_file():
        return {"root": root}
    images, masks, lists = root / "JPEGImages", root / "SegmentationClass", root / "ImageSets" / "Segmentation"
    for d in (images, masks, lists):
        d.mkdir(parents=True, exist_ok=True)
    bgs = _backgrounds()
    for split, (count, offset) in enumerate(((num_train, 0), (num_val, num_train))):
        ids = []
        for i in range(count):
            rng = np.random.default_rng([seed, split, i, 11])
            canvas = photo_canvas(bgs, rng)
            h, w = canvas.shape[:2]
            label = np.zeros((h, w), np.uint8)
            for _ in range(int(rng.integers(1, 7))):
                k = int(rng.integers(len(CLASSES)))
                r = math.exp(rng.uniform(math.log(10), math.log(0.5 * min(w, h)))) / 2
                cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
                shape = Image.new("L", (w, h), 0)
                draw = ImageDraw.Draw(shape)
                if CLASSES[k] in ("circle", "ring"):
                    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
                    if CLASSES[k] == "ring":
                        draw.ellipse((cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55), fill=0)
                else:
                    draw.polygon(_shape_polygon(CLASSES[k], cx, cy, r, rng.uniform(-0.3, 0.3)), fill=255)
                inside = np.asarray(shape) > 0
                if inside.sum() < 12:
                    continue
                canvas[inside] = np.clip(rng.uniform(30, 255, 3) + rng.normal(0, rng.uniform(5, 30), (h, w, 1))[inside],
                                         0, 255)
                edge = (np.asarray(shape.filter(ImageFilter.MaxFilter(3))) > 0) & ~inside
                canvas[edge] = canvas[edge] * 0.4
                label[inside] = k + 1
                label[edge] = 0
            stem = f"{offset + i:05d}"
            Image.fromarray(canvas.clip(0, 255).astype(np.uint8)).save(images / f"{stem}.jpg", quality=92)
            save_palette_mask(label, masks / f"{stem}.png")
            ids.append(stem)
        (lists / ("train.txt" if split == 0 else "val.txt")).write_text("".join(f"{s}\n" for s in ids))
    (root / "labels.txt").write_text("".join(f"{n}\n" for n in ("background", *CLASSES)), encoding="utf-8")
    return {"root": root}


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
    from efficientdet.loss import dice_loss, segmentation_loss

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
            logits = model(images.contiguous(memory_format=torch.channels_last))
            loss = segmentation_loss(logits, masks)
            if args.dice:
                loss = loss + args.dice * dice_loss(logits, masks)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            step += 1
            epoch_loss += float(loss.detach())
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
    p.add_argument("--data", default=None, help="where the data set is written (default bench_out/seg_KIND)")
    p.add_argument("--kind", choices=("synth", "photos"), default="synth",
                   help="synth: efficientdet synth --task segment; photos: 10 textured classes on photographs")
    p.add_argument("--num-train", type=int, default=600)
    p.add_argument("--num-val", type=int, default=100)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--lr", default="2e-3,1e-2",
                   help="peak learning rates (comma-separated): each model trains at each, its best is reported")
    p.add_argument("--ours-drop-path", type=float, default=0.0,
                   help="our backbone's stochastic depth (train's auto recipe turns it off below 10k steps)")
    p.add_argument("--ours-overrides", default="{}",
                   help='JSON of model settings for ours, e.g. \'{"seg_head": "decoder", "min_level": 3}\'')
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--scale-min", type=float, default=0.5)
    p.add_argument("--scale-max", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dice", type=float, default=0.0, help="weight of a soft Dice loss added to the cross-entropy "
                   "(both models; efficientdet.loss.dice_loss: over the batch, as train does)")
    p.add_argument("--models", default="ours,peer")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from efficientdet import create_model
    from efficientdet.data.segmentation import read_segmentation
    from efficientdet.data.synth_seg import make_synthetic_segmentation

    data = args.data or f"bench_out/seg_{args.kind}"
    if args.kind == "photos":
        paths = make_photo_segmentation(data, args.num_train, args.num_val, args.seed)
    else:
        paths = make_synthetic_segmentation(data, num_train=args.num_train, num_val=args.num_val, seed=args.seed)
    train_data = read_segmentation(None, paths["root"], split="train")
    val_data = read_segmentation(None, paths["root"], split="val")
    k = train_data.num_classes
    result: dict = {"cpu": cpu_name(), "threads": args.threads, "torch": torch.__version__,
                    "data": args.kind,
                    "budget": {k2: getattr(args, k2) for k2 in ("num_train", "num_val", "epochs", "batch", "size",
                                                                 "lr", "weight_decay", "scale_min", "scale_max",
                                                                 "ours_drop_path", "dice", "ours_overrides")}
                    | ({"dice_per": "batch"} if args.dice else {}),
                    "optimizer": "AdamW, 1 warm-up epoch from 0.1x, cosine to 0, clip 10; no EMA; random init"}
    builders = {
        "ours": lambda: create_model("d0_seg", image_size=args.size, seg_class_names=train_data.class_names,
                                     **{"backbone_drop_path": args.ours_drop_path, **json.loads(args.ours_overrides)}),
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
