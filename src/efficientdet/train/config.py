"""Training configuration: one frozen dataclass, saved as ``config.yaml`` in every run folder.

Defaults follow the official recipe: SGD momentum 0.9, weight decay 4e-5 (not on norms or
biases), lr 0.08 per 64 images (linear scaling), 1 warm-up epoch from 0.1 x lr, cosine decay to 0,
gradient clipping at norm 10, EMA decay 0.9998, flip + scale jitter 0.1-2.0.

``batch_size`` is the GLOBAL batch (summed over all processes of a ``torchrun`` job); each process
takes ``batch_size / world_size`` images per step, so results do not depend on the process count.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")
#: settings that do not change the result; ``--resume`` may change them
RUNTIME_FIELDS = ("workers", "device", "progress", "tensorboard")


def opt(default: Any, help: str, check: str | None = None, choices: tuple[str, ...] | None = None,
        flag: str | None = None, aliases: tuple[str, ...] = ()) -> Any:
    """A field with its command-line description: ``efficientdet train``'s options are generated from these
    (help, value check by name, choices, the option name when it differs from ``--field-name``)."""
    meta = {"help": help, "check": check, "choices": choices, "flag": flag, "aliases": aliases}
    if callable(default):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs (see the module docstring for the recipe).

    Attributes (units): ``lr`` is the peak learning rate for the global batch (``None``: 0.08 x
    batch_size / 64); ``warmup_epochs`` may be fractional; ``ema_warmup_steps`` is the time constant
    tau of the EMA warm-up ``decay_t = ema_decay * (1 - exp(-updates / tau))`` (0 disables it), so
    short runs are not dominated by the random initial weights; ``amp`` ``None`` = automatic (fp16 +
    GradScaler on CUDA, bf16 autocast on CPUs with AMX); ``recompute_stages`` ``None`` = 2 on the CPU,
    0 on CUDA; ``scale_min``/``scale_max`` are the
    scale-jitter factors of the image size; ``save_interval_steps`` (0 = off) also checkpoints
    mid-epoch; ``max_nan_steps`` non-finite steps in a row stop the run; ``patience`` (evaluations
    without AP improvement) stops early; ``model_overrides`` are :class:`ModelConfig` fields.
    """

    train_images: str = opt("", "training images directory")
    train_annotations: str = opt("", "COCO json, or VOC/YOLO annotations directory; segmentation: a folder of PNG "
                                 "masks named by the image stems, a VOC root (ImageSets/Segmentation lists) or "
                                 "COCO json")
    task: str = opt("detect", "what to train: detect, segment (semantic masks) or detect,segment (one network, "
                    "both heads, both losses; COCO json with polygons)",
                    choices=("detect", "segment", "detect,segment"))
    model: str = opt("efficientdet_d0", "variant name")
    val_images: str | None = opt(None, "validation images directory")
    val_annotations: str | None = opt(None, "validation annotations")
    format: str = opt("auto", "annotation format", choices=("auto", "coco", "voc", "yolo"))
    names: str | None = opt(None, "class names file, one per line (VOC/YOLO boxes; segmentation: labels.txt, line i = "
                                  "class i, background first)")
    epochs: int = opt(300, "training epochs", check="positive_int")
    batch_size: int = opt(8, "GLOBAL batch size (summed over all processes)", check="positive_int")
    image_size: int | None = opt(None, "network input side (default: the model's)", check="image_size")
    lr: float | None = opt(None, "peak learning rate (default 0.08 x batch / 64)", check="positive_float")
    optimizer: str = opt("sgd", "optimizer", choices=OPTIMIZERS)
    momentum: float = opt(0.9, "SGD momentum", check="positive_float")
    weight_decay: float = opt(4e-5, "weight decay (not on norms and biases)", check="non_negative_float")
    warmup_epochs: float = opt(1.0, "linear warm-up length in epochs (may be fractional)", check="non_negative_float")
    warmup_factor: float = opt(0.1, "warm-up starts at this fraction of the peak lr", check="unit_float")
    clip_grad: float = opt(10.0, "gradient norm clipping", check="positive_float")
    ema_decay: float = opt(0.9998, "EMA decay of the weights", check="non_negative_float")
    ema_warmup_steps: float = opt(2000.0, "EMA warm-up time constant: decay * (1 - exp(-updates / N)); 0 = off",
                                  check="non_negative_float")
    amp: bool | None = opt(None, "mixed precision (default: fp16 on CUDA, bf16 on CPUs with AMX bf16 units)")
    channels_last: bool = opt(True, "channels-last memory format (faster convolutions on CPU and GPU)")
    freeze_backbone: bool = opt(False, "train the feature network and heads only")
    recompute_stages: int | None = opt(
        None, "recompute the stem and first N backbone stages in backward: less memory, ~5%% slower "
        "(default: 2 on the CPU, 0 on CUDA)", check="non_negative_int", flag="--checkpoint-stages",
        aliases=("--recompute-stages",))
    freeze_bn: bool = opt(False, "keep every BatchNorm in eval mode (running stats fixed)")
    weights: str | None = opt(None, "initial weights: published name or file (class head re-initialised)")
    pretrained_backbone: str | None = opt(None, "ImageNet backbone weights file")
    model_overrides: dict[str, Any] = opt(dict, "ModelConfig field override, e.g. fpn_channels=32 (repeatable)",
                                          check="override", flag="--model-override")
    scale_min: float = opt(0.1, "scale jitter low (x image size)", check="positive_float")
    scale_max: float = opt(2.0, "scale jitter high (x image size)", check="positive_float")
    hflip: float = opt(0.5, "horizontal flip probability", check="unit_float")
    seed: int = opt(0, "random seed (data order, augmentation, initialisation)", check="int")
    deterministic: bool = opt(False, "deterministic algorithms (bit-exact resume)")
    workers: int = opt(2, "data loader processes", check="non_negative_int")
    device: str = opt("auto", "training device", choices=("auto", "cpu", "cuda"))
    out: str | None = opt(None, "run folder (default runs/train/expN)")
    val_interval: int = opt(1, "evaluate every N epochs", check="positive_int")
    eval_batch_size: int = opt(8, "validation batch size", check="positive_int")
    max_nan_steps: int = opt(10, "stop after N non-finite steps in a row", check="positive_int")
    save_interval_steps: int = opt(0, "also save last.pt every N steps (0 = only after each epoch)",
                                   check="non_negative_int")
    strict: bool = opt(False, "fail on any annotation problem instead of dropping it")
    patience: int | None = opt(None, "stop after N evaluations without AP gain", check="positive_int")
    progress: bool = opt(True, "progress bar")
    tensorboard: bool = opt(True, "TensorBoard event files")
    plots: bool = opt(True, "PNG plots at the end of the run")
    seg_loss_weight: float = opt(1.0, "weight of the segmentation loss next to the detection loss (detect,segment)",
                                 check="positive_float")

    def __post_init__(self) -> None:
        checks = [
            ("epochs", self.epochs >= 1, "a positive integer"),
            ("batch_size", self.batch_size >= 1, "a positive integer"),
            ("image_size", self.image_size is None or self.image_size >= 1, "a positive integer"),
            ("lr", self.lr is None or self.lr > 0, "> 0"),
            ("warmup_epochs", self.warmup_epochs >= 0, ">= 0"),
            ("warmup_factor", 0 <= self.warmup_factor <= 1, "in [0, 1]"),
            ("ema_decay", 0 <= self.ema_decay < 1, "in [0, 1)"),
            ("scale_min", 0 < self.scale_min <= self.scale_max, "> 0 and <= scale_max"),
            ("max_nan_steps", self.max_nan_steps >= 1, "a positive integer"),
            ("val_interval", self.val_interval >= 1, "a positive integer"),
            ("workers", self.workers >= 0, ">= 0"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be {what}")
        if self.task not in ("detect", "segment", "detect,segment", "segment,detect"):
            raise ConfigError(f"task {self.task!r} is not one of detect, segment, detect,segment")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if (self.val_images is None) != (self.val_annotations is None):
            raise ConfigError("give both --val-images and --val-annotations, or neither")

    @property
    def tasks(self) -> tuple[str, ...]:
        """``("detect",)``, ``("segment",)`` or ``("detect", "segment")``."""
        return tuple(t for t in ("detect", "segment") if t in self.task.split(","))

    @property
    def peak_lr(self) -> float:
        """The learning rate after warm-up: ``lr`` or the linear-scaling rule 0.08 x batch / 64."""
        return float(self.lr) if self.lr is not None else 0.08 * self.batch_size / 64

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/pickle-safe values (str, int, float, bool, None, dict)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a :class:`ConfigError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        data = dict(data)
        for old, new in (("class_names", "names"), ("checkpoint_stages", "recompute_stages")):  # older runs
            if old in data and new not in data:
                data[new] = data.pop(old)
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown training config keys {unknown}; valid keys: {', '.join(sorted(names))}")
        return cls(**data)

    def save_yaml(self, path: str | Path) -> Path:
        import yaml

        path = Path(path)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")
        return path

    @classmethod
    def load_yaml(cls, path: str | Path) -> TrainConfig:
        import yaml

        return cls.from_dict(yaml.safe_load(Path(path).read_text(encoding="utf-8")))
