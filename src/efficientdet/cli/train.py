"""``efficientdet train``: options generated from :class:`~efficientdet.train.config.TrainConfig` -> :func:`train`.

Every training option and its default has one home, the ``TrainConfig`` field (its help text, value
check and choices are the field's metadata); only options that were given reach the config, so the
defaults are the dataclass's.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from ..errors import ConfigError
from ..train.config import RUNTIME_FIELDS, TrainConfig
from .common import image_size, non_negative_float, non_negative_int, positive_float, positive_int, unit_float


def _override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with a YAML value (``fpn_channels=32``, ``fusion=sum``)."""
    import yaml

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


CHECKS = {"positive_int": positive_int, "non_negative_int": non_negative_int, "positive_float": positive_float,
          "non_negative_float": non_negative_float, "unit_float": unit_float, "image_size": image_size, "int": int,
          "override": _override}


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``train``: one option per :class:`TrainConfig` field, plus ``--resume``."""
    p = sub.add_parser(
        "train", help="train or fine-tune a model",
        description="Train EfficientDet. --recipe auto (default) fits optimiser, lr, warm-up, EMA and scale "
        "jitter to the schedule, data size and pretrained weights; --recipe official is the paper's (SGD, lr 0.08 "
        "per 64 images, EMA 0.9998, jitter 0.1-2.0); options given explicitly win. --anchors auto (default) fits "
        "the anchors to the training boxes when that raises recall. --batch-size is the GLOBAL batch over all "
        "torchrun processes. Run folder: runs/train/expN.")
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        flags = [meta.get("flag") or "--" + f.name.replace("_", "-"), *meta.get("aliases", ())]
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = f" (default {default})" if default not in (None, "", False) else ""
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": meta["help"] + shown}
        if f.type in ("bool", "bool | None"):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif meta.get("check") == "override":
            kwargs.update(type=_override, action="append", metavar="KEY=VALUE")
        else:
            if meta.get("check"):
                kwargs["type"] = CHECKS[meta["check"]]
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
        p.add_argument(*flags, **kwargs)
    p.add_argument("--resume", metavar="PATH", help="continue a run: its folder or weights/last.pt")
    p.set_defaults(func=run)
    return p


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`TrainConfig` fields the command line set (only those: the rest keep their defaults)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    if "model_overrides" in given:
        given["model_overrides"] = dict(given["model_overrides"])
    return given


def run(args: argparse.Namespace) -> int:
    """``efficientdet train``: 0 when done, 130 when stopped by a signal (resumable)."""
    from ..train.trainer import train

    given = given_options(args)
    if args.resume:
        ignored = sorted(set(given) - set(RUNTIME_FIELDS))
        if ignored:
            print(f"warning: --resume continues the saved configuration; ignoring "
                  f"{', '.join('--' + k.replace('_', '-') for k in ignored)}", file=sys.stderr)
        runtime = {k: v for k, v in given.items() if k in RUNTIME_FIELDS}
        result = train(None, resume=args.resume, runtime=runtime)
    else:
        segment = "segment" in str(given.get("task", "detect"))  # a VOC root names its JPEGImages/ itself
        if not (given.get("train_annotations") and (given.get("train_images") or segment)):
            raise ConfigError("--train-images and --train-annotations are required (or --resume RUN)")
        result = train(TrainConfig(**given))
    return 130 if result.interrupted else 0
