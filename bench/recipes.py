"""Training recipes on custom data: ``auto`` vs ``official`` vs effdet, same budget (issue 15).

Three generated data sets (COCO format, written once under ``--root``):

* ``shapes``: the demo's synthetic shapes (``efficientdet.data.synth`` with the demo's options);
* ``photos``: cluttered real photographs (scikit-image's sample images, random crops and rescales)
  as backgrounds with 10 classes of textured shapes from 10 px to half the image's short side;
* ``few``: the ``photos`` kind with few images per class (each training image shows one class).

Each run trains through the public API (``efficientdet.train.train(TrainConfig(...))``) and reports
the validation AP/AP50 of the final EMA weights, its wall time and the recipe; effdet runs train
effdet 0.4.1's ``DetBenchTrain`` (its model, anchors, loss) with its published recipe (momentum SGD
0.09 per 64 images, 5 warm-up epochs, cosine, EMA 0.9998, weight decay 4e-5) on the same images,
loader and augmentation, and are scored by the same COCO evaluation.

    HF_HUB_OFFLINE=1 python bench/recipes.py --data photos --method auto official effdet \\
        --model d0 --image-size 256 --epochs 10 --num-train 800

Every result is appended as one JSON line to ``--results`` (default ``bench/recipes_result.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "cross", "ring", "star", "diamond", "hexagon", "bar", "tee")


def _cpu_name() -> str:
    """The CPU's model name, as BENCHMARKS.md names every figure's machine (the library's probe)."""
    from efficientdet.inference.precision import cpu_info

    return cpu_info().name


def _backgrounds() -> list[np.ndarray]:
    from skimage import data

    names = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "brick",
             "grass", "gravel", "camera", "coins", "moon", "page", "text", "retina", "colorwheel", "cell", "clock",
             "stereo_motorcycle"]
    out = []
    for name in names:
        img = getattr(data, name)()
        img = img[0] if isinstance(img, tuple) else img
        img = np.asarray(img)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        out.append(img[..., :3].astype(np.uint8))
    return out


def _shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]] | None:
    if kind == "square":
        pts = [(-r, -r), (r, -r), (r, r), (-r, r)]
    elif kind == "triangle":
        pts = [(0, -r), (r, r * 0.8), (-r, r * 0.8)]
    elif kind == "cross":
        t = r / 3
        pts = [(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t), (-r, -t),
               (-t, -t)]
    elif kind == "star":
        pts = [((r if i % 2 == 0 else r * 0.45) * math.sin(i * math.pi / 5),
                -(r if i % 2 == 0 else r * 0.45) * math.cos(i * math.pi / 5)) for i in range(10)]
    elif kind == "diamond":
        pts = [(0, -r), (r * 0.6, 0), (0, r), (-r * 0.6, 0)]
    elif kind == "hexagon":
        pts = [(r * math.cos(i * math.pi / 3), r * math.sin(i * math.pi / 3)) for i in range(6)]
    elif kind == "bar":
        pts = [(-r, -r * 0.3), (r, -r * 0.3), (r, r * 0.3), (-r, r * 0.3)]
    elif kind == "tee":
        t = r / 3
        pts = [(-r, -r), (r, -r), (r, -r + 2 * t), (t, -r + 2 * t), (t, r), (-t, r), (-t, -r + 2 * t),
               (-r, -r + 2 * t)]
    else:
        return None
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def _draw_object(canvas: np.ndarray, rng: np.random.Generator, k: int, size: float) -> list[float] | None:
    """Paint class ``k`` (textured, outlined) into ``canvas``; returns the visible xywh box."""
    h, w = canvas.shape[:2]
    r = size / 2
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    mask_img = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(mask_img)
    kind = CLASSES[k]
    angle = rng.uniform(-0.3, 0.3)
    if kind == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif kind == "ring":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        d.ellipse((cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55), fill=0)
    else:
        d.polygon(_shape_polygon(kind, cx, cy, r, angle), fill=255)
    mask = np.asarray(mask_img) > 0
    if mask.sum() < 12:
        return None
    color = rng.uniform(30, 255, 3)
    texture = rng.normal(0, rng.uniform(5, 30), (h, w, 1))
    canvas[mask] = np.clip(color + texture[mask], 0, 255)
    edge = np.asarray(mask_img.filter(__import__("PIL.ImageFilter", fromlist=["MaxFilter"]).MaxFilter(3))) > 0
    canvas[edge & ~mask] = canvas[edge & ~mask] * 0.4  # a dark outline separates it from clutter
    ys, xs = np.nonzero(mask | edge)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]


def photo_canvas(bgs: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """A float64 (h, w, 3) crop of a randomly scaled background, 256-384 x 224-384 px."""
    bg = bgs[int(rng.integers(len(bgs)))]
    w, h = int(rng.integers(256, 385)), int(rng.integers(224, 385))
    scale = rng.uniform(max(w / bg.shape[1], h / bg.shape[0]), max(1.0, 1.5 * max(w / bg.shape[1], h / bg.shape[0])))
    big = np.asarray(Image.fromarray(bg).resize((max(w, int(bg.shape[1] * scale)), max(h, int(bg.shape[0] * scale))),
                                                Image.BILINEAR))
    y0, x0 = int(rng.integers(0, big.shape[0] - h + 1)), int(rng.integers(0, big.shape[1] - w + 1))
    return big[y0:y0 + h, x0:x0 + w].astype(np.float64).copy()


def make_photo_dataset(root: Path, num_train: int, num_val: int, seed: int = 0, few: int = 0) -> dict[str, Path]:
    """``photos`` (few=0) or ``few`` (few=N: N training images per class, one class per image)."""
    bgs = _backgrounds()
    paths = {}
    for split, count in (("train", num_train if not few else few * len(CLASSES)), ("val", num_val)):
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        img_dir = root / split / "images"
        img_dir.mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(count):
            canvas = photo_canvas(bgs, rng)
            h, w = canvas.shape[:2]
            n = int(rng.integers(1, 7)) if not few or split == "val" else int(rng.integers(1, 4))
            klass = i % len(CLASSES)
            for _ in range(n):
                k = klass if few and split == "train" else int(rng.integers(len(CLASSES)))
                size = math.exp(rng.uniform(math.log(10), math.log(0.5 * min(w, h))))
                box = _draw_object(canvas, rng, k, size)
                if box is not None:
                    anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": k + 1, "bbox": box,
                                 "area": box[2] * box[3], "iscrowd": 0})
            name = f"{i:05d}.jpg"
            Image.fromarray(canvas.clip(0, 255).astype(np.uint8)).save(img_dir / name, quality=92)
            images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        doc = {"images": images, "annotations": anns,
               "categories": [{"id": k + 1, "name": n} for k, n in enumerate(CLASSES)]}
        (root / split / "annotations.json").write_text(json.dumps(doc))
        paths[f"{split}_images"] = img_dir
        paths[f"{split}_annotations"] = root / split / "annotations.json"
    return paths


def dataset(kind: str, root: Path, num_train: int, num_val: int) -> dict[str, Path]:
    folder = root / f"{kind}_{num_train}_{num_val}"
    if (folder / "val" / "annotations.json").is_file():
        return {f"{s}_{p}": folder / s / ("images" if p == "images" else "annotations.json")
                for s in ("train", "val") for p in ("images", "annotations")}
    t0 = time.perf_counter()
    if kind == "shapes":
        from efficientdet.data import make_synthetic_dataset
        from efficientdet.demo import DEMO_DATA

        paths = make_synthetic_dataset(folder, num_train=num_train, num_val=num_val, seed=0, **DEMO_DATA)
    elif kind == "photos":
        paths = make_photo_dataset(folder, num_train, num_val)
    elif kind == "few":
        paths = make_photo_dataset(folder, 0, num_val, few=max(1, num_train // len(CLASSES)))
    else:
        raise SystemExit(f"unknown data set {kind}")
    print(f"data {kind}: written in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return paths


def run_ours(paths: dict, method: str, args: argparse.Namespace, out: Path) -> dict:
    """``auto``: train's defaults (recipe auto, anchors auto); ``official``: the paper's recipe with the model's
    anchors (train before issue 15); ``demo-adamw``: the demo's former hand-set recipe, model anchors."""
    from efficientdet.train import TrainConfig, train

    fields: dict = {}
    if method == "demo-adamw":
        fields.update(optimizer="adamw", lr=4e-3, weight_decay=4e-5, warmup_epochs=1.0, ema_decay=0.9998,
                      ema_warmup_steps=200.0, scale_min=0.6, scale_max=1.4)
    for override in args.set or []:
        key, value = override.split("=", 1)
        fields[key] = value if key == "optimizer" else float(value)
    overrides = dict(json.loads(args.model_overrides)) if args.model_overrides else {}
    cfg = TrainConfig(
        train_images=str(paths["train_images"]), train_annotations=str(paths["train_annotations"]),
        val_images=str(paths["val_images"]), val_annotations=str(paths["val_annotations"]),
        model=args.model, image_size=args.image_size, epochs=args.epochs, batch_size=args.batch_size,
        pretrained_backbone=args.pretrained_backbone, model_overrides=overrides, workers=args.workers,
        out=str(out), val_interval=args.epochs, progress=True, tensorboard=False, plots=False, seed=args.seed,
        recipe="official" if method == "official" else "auto", anchors="auto" if method == "auto" else "default",
        **fields,
    )
    t0 = time.perf_counter()
    result = train(cfg)
    used = TrainConfig.load_yaml(Path(out) / "config.yaml")
    recipe = {k: getattr(used, k) for k in ("optimizer", "lr", "weight_decay", "warmup_epochs", "ema_decay",
                                            "ema_warmup_steps", "scale_min", "scale_max", "anchors")}
    recipe["anchor_scale"] = used.model_overrides.get("anchor_scale")
    return {"AP": result.metrics.get("AP"), "AP50": result.metrics.get("AP50"), "APs": result.metrics.get("APs"),
            "seconds": round(time.perf_counter() - t0, 1), "steps": result.step, "recipe": recipe}


def run_effdet(paths: dict, args: argparse.Namespace, out: Path) -> dict:
    """effdet 0.4.1's model + loss with its published recipe, same data, loader and augmentation."""
    import torch
    from effdet import DetBenchPredict, DetBenchTrain, EfficientDet, get_efficientdet_config
    from timm.utils import ModelEmaV2

    from efficientdet.data import DetectionDataset, TrainTransform, collate, read_dataset
    from efficientdet.eval.coco import evaluate_detections
    from efficientdet.variants import canonical_name

    torch.manual_seed(args.seed)
    train_data = read_dataset("coco", paths["train_images"], paths["train_annotations"])
    val_data = read_dataset("coco", paths["val_images"], paths["val_annotations"])
    name = "tf_" + canonical_name(args.model)
    cfg = get_efficientdet_config(name)
    cfg.num_classes = train_data.num_classes
    cfg.image_size = (args.image_size, args.image_size)
    overrides = dict(json.loads(args.model_overrides)) if args.model_overrides else {}
    names = {"backbone": "backbone_name", "fpn_channels": "fpn_channels", "fpn_layers": "fpn_cell_repeats",
             "head_layers": "box_class_repeats"}
    for key, value in overrides.items():
        if key == "backbone_drop_path":
            cfg.backbone_args = dict(cfg.get("backbone_args") or {}, drop_path_rate=value)
        else:
            setattr(cfg, names[key], value)
    model = EfficientDet(cfg, pretrained_backbone=False)
    bench = DetBenchTrain(model).train()
    mean, std = (0.5,) * 3 if "lite" in name else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    mean, std = (mean if isinstance(mean[0], float) and len(mean) == 3 else mean), std
    loader = torch.utils.data.DataLoader(
        DetectionDataset(train_data, TrainTransform(args.image_size, mean, std, scale_range=(0.1, 2.0))),
        batch_size=args.batch_size, shuffle=True, drop_last=True, collate_fn=collate, num_workers=args.workers)
    steps_per_epoch = len(loader)
    total = steps_per_epoch * args.epochs
    lr = 0.09 * args.batch_size / 64
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 4e-5}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=lr, momentum=0.9)
    ema = ModelEmaV2(model, decay=0.9998)
    warm = 5 * steps_per_epoch
    t0 = time.perf_counter()
    step = 0
    for _epoch in range(args.epochs):
        for images, targets in loader:
            f = min(1.0, (step + 1) / warm) if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) /
                                                                                     max(1, total - warm)))
            for g in opt.param_groups:
                g["lr"] = lr * (0.1 + 0.9 * f) if step < warm else lr * f
            boxes = [t["boxes"][:, [1, 0, 3, 2]] for t in targets]  # effdet wants yxyx
            labels = [t["labels"].float() + 1 for t in targets]  # 1-based, as effdet's loader gives
            m = max(1, max(len(b) for b in boxes))
            bb = torch.full((len(boxes), m, 4), -1.0)
            cc = torch.full((len(boxes), m), -1.0)
            for i, (b, c) in enumerate(zip(boxes, labels)):
                bb[i, :len(b)], cc[i, :len(c)] = b, c
            loss = bench(images, {"bbox": bb, "cls": cc})["loss"]
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            ema.update(model)
            step += 1
    seconds = time.perf_counter() - t0
    predict = DetBenchPredict(ema.module).eval()
    from efficientdet.preprocess import letterbox, normalize

    dets = []
    with torch.no_grad():
        for s in val_data.samples:
            canvas, sc = letterbox(Image.open(s.path).convert("RGB"), args.image_size, mean)
            x = normalize(torch.from_numpy(canvas).unsqueeze(0), mean, std)
            out = predict(x)[0]  # (100, 6) xyxy score class(1-based) in input pixels
            for row in out.tolist():
                x1, y1, x2, y2, score, cls = row
                if score <= 0.001:
                    continue
                dets.append({"image_id": s.image_id, "category_id": val_data.category_ids[int(cls) - 1],
                             "bbox": [x1 / sc, y1 / sc, (x2 - x1) / sc, (y2 - y1) / sc], "score": score})
    metrics = evaluate_detections(val_data.to_coco(), dets)
    return {"AP": metrics.get("AP"), "AP50": metrics.get("AP50"), "APs": metrics.get("APs"),
            "seconds": round(seconds, 1), "steps": step,
            "recipe": {"optimizer": "sgd", "lr": lr, "warmup_epochs": 5, "ema_decay": 0.9998, "scale": [0.1, 2.0]}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", default=["shapes"], choices=["shapes", "photos", "few"])
    p.add_argument("--method", nargs="+", default=["auto", "official"],
                   choices=["auto", "official", "demo-adamw", "effdet"])
    p.add_argument("--model", default="d0")
    p.add_argument("--model-overrides", default=None, help="JSON dict of ModelConfig overrides")
    p.add_argument("--pretrained-backbone", default=None)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-train", type=int, default=800)
    p.add_argument("--num-val", type=int, default=100)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (on a shared, oversubscribed CPU 1 thread was 5-7x faster than 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="*", help="recipe field overrides, e.g. lr=0.004")
    p.add_argument("--root", default="bench_data")
    p.add_argument("--results", default=str(Path(__file__).with_name("recipes_result.jsonl")))
    p.add_argument("--tag", default="")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    root = Path(args.root)
    for kind in args.data:
        paths = dataset(kind, root, args.num_train, args.num_val)
        for method in args.method:
            out = root / "runs" / f"{kind}-{method}-{args.model}-{args.tag or 'run'}-{int(time.time())}-{os.getpid()}"
            r = run_effdet(paths, args, out) if method == "effdet" else run_ours(paths, method, args, out)
            row = {"data": kind, "method": method, "model": args.model, "overrides": args.model_overrides,
                   "pretrained_backbone": args.pretrained_backbone, "image_size": args.image_size,
                   "epochs": args.epochs, "batch_size": args.batch_size, "num_train": args.num_train,
                   "tag": args.tag, "cpu": _cpu_name(), **r}
            print(json.dumps(row), flush=True)
            with open(args.results, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
