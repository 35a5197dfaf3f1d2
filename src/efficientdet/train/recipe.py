"""Training recipes: ``official`` (the paper's, SPEC §4) and ``auto`` (fitted to the run).

The official recipe (SGD momentum 0.9, lr 0.08 per 64 images, 1 warm-up epoch, EMA 0.9998, scale
jitter 0.1-2.0) is built for ~300 COCO epochs from an ImageNet backbone: hundreds of thousands of
steps. On a custom data set and a short schedule (say 1000 steps) its lr is too small for a randomly
initialised network, its EMA (window ~5000 steps) still mostly averages the first, useless weights at
the end, and its 0.1-2.0 jitter shows each object at a scale it will rarely see again, so nothing is
learnt (issue 15). ``auto`` keeps the official recipe for long pretrained schedules and otherwise
changes, as pure functions of the schedule:

* optimiser AdamW (adapts per-parameter step sizes: converges in few steps, from scratch and from
  ImageNet), lr 1e-2 at batch 8, scaled by sqrt(batch / 8), from scratch and from a pretrained
  backbone alike (the feature network and heads start from random weights either way); decoupled
  weight decay 1e-2 (not on norms/biases). Measured on 800 photographs (BENCHMARKS.md): D0 from
  scratch, 300 steps: AP50 0.001 at 2e-3, 0.036 at 6e-3, 0.100 at 1.2e-2, 0.102 at 2.4e-2 (the last
  three without stochastic depth); Lite0 from ImageNet, 1000 steps: 0.303 at 4e-3, 0.433 at 1e-2, and
  0.356 at 1e-2 with the backbone at a tenth of it (``backbone_lr_scale``, so that stays 1). These were
  measured before the heads' initialisation was fixed (session 7: D0 0.567, Lite0 0.652 at 1e-2), and
  not re-tuned since;
* warm-up: 5% of the steps, at most one epoch, from 0.1 x lr;
* EMA: averaging window ~8% of the steps (decay ``1 - 1 / (0.08 * steps)``, capped at 0.9998) with
  the warm-up time constant at 5% of the steps, so the averaged weights follow the trained ones;
* scale jitter by the number of epochs (how often each image is seen): 0.6-1.4 up to 30 epochs,
  0.4-1.6 up to 100, the official 0.1-2.0 beyond;
* no stochastic depth in the backbone below :data:`NO_DROP_PATH_STEPS` steps: dropping residual blocks
  regularises long runs but slows a short one down.

Everything is a function of (epochs, images, batch size, pretrained); :func:`choose_recipe` is pure,
so a run's choice can be printed, tested and saved with its config.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

RECIPES = ("auto", "official")
#: TrainConfig fields a recipe sets (an option given explicitly by the user always wins)
RECIPE_FIELDS = ("optimizer", "lr", "weight_decay", "warmup_epochs", "warmup_factor", "ema_decay",
                 "ema_warmup_steps", "scale_min", "scale_max", "backbone_lr_scale")
#: from this many optimizer steps on, a pretrained run keeps the official SGD recipe
LONG_SCHEDULE_STEPS = 30_000
#: below this many optimizer steps, auto turns the backbone's stochastic depth off
NO_DROP_PATH_STEPS = 10_000


@dataclass(frozen=True)
class Recipe:
    """Values of :data:`RECIPE_FIELDS` plus the recipe's name and a short reason (for the log)."""

    name: str
    optimizer: str
    lr: float
    weight_decay: float
    warmup_epochs: float
    warmup_factor: float
    ema_decay: float
    ema_warmup_steps: float
    scale_min: float
    scale_max: float
    reason: str = ""
    #: the backbone's lr as a fraction of ``lr``
    backbone_lr_scale: float = 1.0
    #: the backbone's stochastic-depth rate (a model setting; None: the model's own)
    backbone_drop_path: float | None = None

    def fields(self) -> dict[str, object]:
        """The :class:`~efficientdet.train.config.TrainConfig` values this recipe sets."""
        d = asdict(self)
        return {k: d[k] for k in RECIPE_FIELDS}

    def describe(self) -> str:
        """One line for the start of training, e.g. ``recipe auto: adamw lr 0.002 ...``."""
        return (f"recipe {self.name}: {self.optimizer} lr {self.lr:.3g} wd {self.weight_decay:g}, warm-up "
                f"{self.warmup_epochs:.2g} epochs, EMA {self.ema_decay:.4g} (warm-up {self.ema_warmup_steps:.0f} "
                f"steps), scale jitter {self.scale_min:g}-{self.scale_max:g}"
                + (f", backbone lr x{self.backbone_lr_scale:g}" if self.backbone_lr_scale != 1.0 else "")
                + (f", backbone drop path {self.backbone_drop_path:g}" if self.backbone_drop_path is not None else "")
                + (f" ({self.reason})" if self.reason else ""))


def official_recipe(batch_size: int) -> Recipe:
    """The paper's recipe (the historical TrainConfig defaults), unchanged."""
    return Recipe("official", "sgd", 0.08 * batch_size / 64, 4e-5, 1.0, 0.1, 0.9998, 2000.0, 0.1, 2.0,
                  "paper: SGD 0.08 per 64 images, 300 epochs")


def choose_recipe(name: str, epochs: int, num_images: int, batch_size: int, pretrained: bool) -> Recipe:
    """The recipe ``name`` (``auto`` or ``official``) for a schedule.

    Args:
        name: ``"auto"`` or ``"official"``.
        epochs: planned epochs.
        num_images: training images (steps per epoch = num_images // batch_size, at least 1).
        batch_size: global batch size.
        pretrained: whether the run starts from pretrained weights (an ImageNet backbone or a
            detection checkpoint).
    """
    if name not in RECIPES:
        from ..errors import ConfigError

        raise ConfigError(f"recipe {name!r} is not one of {', '.join(RECIPES)}")
    if name == "official":
        return official_recipe(batch_size)
    steps_per_epoch = max(1, num_images // max(1, batch_size))
    steps = max(1, epochs * steps_per_epoch)
    if pretrained and steps >= LONG_SCHEDULE_STEPS:
        from dataclasses import replace

        return replace(official_recipe(batch_size), name="auto",
                       reason=f"{steps} steps from pretrained weights: the official recipe")
    lr = 1e-2 * math.sqrt(batch_size / 8)
    warmup_epochs = min(1.0, 0.05 * steps / steps_per_epoch)
    ema_decay = min(0.9998, 1.0 - 1.0 / max(10.0, 0.08 * steps))
    ema_warmup = max(5.0, 0.05 * steps)
    if epochs <= 30:
        scale = (0.6, 1.4)
    elif epochs <= 100:
        scale = (0.4, 1.6)
    else:
        scale = (0.1, 2.0)
    reason = f"{steps} steps, {'pretrained' if pretrained else 'from scratch'}"
    return Recipe("auto", "adamw", round(lr, 6), 1e-2, round(warmup_epochs, 4), 0.1, round(ema_decay, 6),
                  round(ema_warmup, 1), scale[0], scale[1], reason,
                  backbone_drop_path=0.0 if steps < NO_DROP_PATH_STEPS else None)


__all__ = ["LONG_SCHEDULE_STEPS", "NO_DROP_PATH_STEPS", "RECIPES", "RECIPE_FIELDS", "Recipe", "choose_recipe",
           "official_recipe"]
