"""``efficientdet train``: options -> :class:`TrainConfig` -> :func:`train`."""

from __future__ import annotations

import argparse
from typing import Any


def _override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with a YAML value (``fpn_channels=32``, ``fusion=sum``)."""
    import yaml

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def add_train_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``train`` on the ``efficientdet`` sub-command parser."""
    from ..cli import image_size, non_negative_float, non_negative_int, positive_float, positive_int

    p = sub.add_parser(
        "train", help="train or fine-tune a model",
        description="Train EfficientDet (official recipe: SGD, lr 0.08 per 64 images, warm-up + cosine, EMA). "
        "--batch-size is the GLOBAL batch over all torchrun processes. Run folder: runs/train/expN.")
    p.add_argument("--model", default="efficientdet_d0", help="variant name (default efficientdet_d0)")
    p.add_argument("--train-images", help="training images directory")
    p.add_argument("--train-annotations", help="COCO json, or VOC/YOLO annotations directory")
    p.add_argument("--val-images", help="validation images directory")
    p.add_argument("--val-annotations", help="validation annotations")
    p.add_argument("--format", default="auto", choices=("auto", "coco", "voc", "yolo"))
    p.add_argument("--names", help="VOC/YOLO: class names file (one per line)")
    p.add_argument("--epochs", type=positive_int, default=300)
    p.add_argument("--batch-size", type=positive_int, default=8, help="global batch size (all processes)")
    p.add_argument("--image-size", type=image_size, default=None, help="network input side (default: the model's)")
    p.add_argument("--lr", type=positive_float, default=None, help="peak lr (default 0.08 * batch / 64)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    p.add_argument("--momentum", type=positive_float, default=0.9)
    p.add_argument("--weight-decay", type=non_negative_float, default=4e-5)
    p.add_argument("--warmup-epochs", type=non_negative_float, default=1.0)
    p.add_argument("--clip-grad", type=positive_float, default=10.0)
    p.add_argument("--ema-decay", type=non_negative_float, default=0.9998)
    p.add_argument("--ema-warmup-steps", type=non_negative_float, default=2000.0,
                   help="EMA warm-up time constant: decay * (1 - exp(-updates / N)); 0 = off")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: fp16 on CUDA, bf16 on CPUs with AMX bf16 units)")
    p.add_argument("--checkpoint-stages", type=non_negative_int, default=None, metavar="N",
                   help="recompute the stem and first N backbone stages in backward: less memory, ~5%% slower "
                        "(default: 2 on the CPU, 0 on CUDA)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels-last memory format (default on: faster convolutions on CPU and GPU)")
    p.add_argument("--freeze-backbone", action="store_true")
    p.add_argument("--freeze-bn", action="store_true", help="keep every BatchNorm in eval mode (running stats fixed)")
    p.add_argument("--weights", help="initial weights: published name or file (class head re-initialised)")
    p.add_argument("--pretrained-backbone", help="ImageNet backbone weights file")
    p.add_argument("--model-override", type=_override, action="append", default=[], metavar="KEY=VALUE",
                   help="ModelConfig field override, e.g. fpn_channels=32 (repeatable)")
    p.add_argument("--scale-min", type=positive_float, default=0.1, help="scale jitter low (x image size)")
    p.add_argument("--scale-max", type=positive_float, default=2.0, help="scale jitter high (x image size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (bit-exact resume)")
    p.add_argument("--workers", type=non_negative_int, default=None, help="data loader processes (default 2)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="default auto")
    p.add_argument("--out", help="run folder (default runs/train/expN)")
    p.add_argument("--resume", metavar="PATH", help="continue a run: its folder or weights/last.pt")
    p.add_argument("--val-interval", type=positive_int, default=1, help="evaluate every N epochs")
    p.add_argument("--max-nan-steps", type=positive_int, default=10, help="stop after N non-finite steps in a row")
    p.add_argument("--save-interval-steps", type=non_negative_int, default=0, help="also save last.pt every N steps")
    p.add_argument("--patience", type=positive_int, default=None, help="stop after N evaluations without AP gain")
    p.add_argument("--strict", action="store_true", help="fail on any annotation problem instead of dropping it")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-tensorboard", action="store_true")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=cmd_train)
    return p


def config_from_args(args: argparse.Namespace):  # -> TrainConfig
    """The :class:`TrainConfig` the options describe."""
    from ..errors import ConfigError
    from .config import TrainConfig

    if not args.resume and not (args.train_images and args.train_annotations):
        raise ConfigError("--train-images and --train-annotations are required (or --resume RUN)")
    return TrainConfig(
        train_images=args.train_images or "", train_annotations=args.train_annotations or "", model=args.model,
        val_images=args.val_images, val_annotations=args.val_annotations, format=args.format,
        class_names=args.names, epochs=args.epochs, batch_size=args.batch_size, image_size=args.image_size,
        lr=args.lr, optimizer=args.optimizer, momentum=args.momentum, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, clip_grad=args.clip_grad, ema_decay=args.ema_decay,
        ema_warmup_steps=args.ema_warmup_steps, amp=args.amp, channels_last=args.channels_last,
        freeze_backbone=args.freeze_backbone, checkpoint_stages=args.checkpoint_stages, freeze_bn=args.freeze_bn,
        weights=args.weights,
        pretrained_backbone=args.pretrained_backbone, model_overrides=dict(args.model_override),
        scale_min=args.scale_min, scale_max=args.scale_max, seed=args.seed, deterministic=args.deterministic,
        out=args.out, val_interval=args.val_interval,
        max_nan_steps=args.max_nan_steps, save_interval_steps=args.save_interval_steps, strict=args.strict,
        patience=args.patience, tensorboard=not args.no_tensorboard, plots=not args.no_plots,
    )


def cmd_train(args: argparse.Namespace) -> int:
    """Handler of ``efficientdet train``: 0 when done, 130 when stopped by a signal (resumable)."""
    from .trainer import train

    cfg = config_from_args(args)
    runtime = {k: v for k, v in (("workers", args.workers), ("device", args.device)) if v is not None}
    if args.no_progress:
        runtime["progress"] = False
    result = train(None if args.resume else cfg, resume=args.resume, runtime=runtime)
    return 130 if result.interrupted else 0
