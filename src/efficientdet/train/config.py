"""Training configuration: one frozen dataclass, saved as ``config.yaml`` in every run folder.

Defaults follow the official recipe (SPEC §4): SGD momentum 0.9, weight decay 4e-5 (not on norms or
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


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs (see the module docstring for the recipe).

    Attributes (units): ``lr`` is the peak learning rate for the global batch (``None``: 0.08 x
    batch_size / 64); ``warmup_epochs`` may be fractional; ``ema_warmup_steps`` is the time constant
    tau of the EMA warm-up ``decay_t = ema_decay * (1 - exp(-updates / tau))`` (0 disables it), so
    short runs are not dominated by the random initial weights; ``amp`` ``None`` = automatic (fp16 +
    GradScaler on CUDA, bf16 autocast on CPUs with AMX); ``checkpoint_stages`` ``None`` = 2 on the CPU,
    0 on CUDA; ``scale_min``/``scale_max`` are the
    scale-jitter factors of the image size; ``save_interval_steps`` (0 = off) also checkpoints
    mid-epoch; ``max_nan_steps`` non-finite steps in a row stop the run; ``patience`` (evaluations
    without AP improvement) stops early; ``model_overrides`` are :class:`ModelConfig` fields.
    """

    train_images: str
    train_annotations: str
    model: str = "efficientdet_d0"
    val_images: str | None = None
    val_annotations: str | None = None
    format: str = "auto"
    class_names: str | None = None
    epochs: int = 300
    batch_size: int = 8
    image_size: int | None = None
    lr: float | None = None
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 4e-5
    warmup_epochs: float = 1.0
    warmup_factor: float = 0.1
    clip_grad: float = 10.0
    ema_decay: float = 0.9998
    ema_warmup_steps: float = 2000.0
    amp: bool | None = None
    channels_last: bool = True  # about 1.3x faster training on CPU (BENCHMARKS.md)
    freeze_backbone: bool = False
    checkpoint_stages: int | None = None  # recompute stem + first N backbone stages in backward; None: 2 on CPU
    freeze_bn: bool = False
    weights: str | None = None
    pretrained_backbone: str | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)
    scale_min: float = 0.1
    scale_max: float = 2.0
    hflip: float = 0.5
    seed: int = 0
    deterministic: bool = False
    workers: int = 2
    device: str = "auto"
    out: str | None = None
    val_interval: int = 1
    eval_batch_size: int = 8
    max_nan_steps: int = 10
    save_interval_steps: int = 0
    strict: bool = False
    patience: int | None = None
    progress: bool = True
    tensorboard: bool = True
    plots: bool = True

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
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if (self.val_images is None) != (self.val_annotations is None):
            raise ConfigError("give both --val-images and --val-annotations, or neither")

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
