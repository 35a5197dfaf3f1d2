"""``TrainState``: everything that changes while training, and exactly what ``last.pt`` saves and
``--resume`` restores (weights, EMA, optimizer, schedule, loss scaler, counters, RNG states)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .ema import ModelEma
from .optim import WarmupCosine
from .resume import get_rng_state, set_rng_state


@dataclass
class TrainState:
    """The mutable state of a run.

    ``step`` counts optimizer steps attempted (global, skipped non-finite ones included); ``epoch`` the
    epochs completed; ``batch_in_epoch`` the batches of the current epoch done; ``epoch_sums`` the running
    sums of the epoch's loss terms (``n`` = finite steps).
    """

    model: nn.Module
    ema: ModelEma
    optimizer: torch.optim.Optimizer
    schedule: WarmupCosine
    scaler: Any = None  # torch.amp.GradScaler for fp16 on CUDA
    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0
    nan_streak: int = 0
    nan_steps: int = 0
    epoch_sums: dict[str, float] = field(default_factory=dict)
    best_ap: float = -1.0
    evals_since_best: int = 0

    COUNTERS = ("epoch", "step", "batch_in_epoch", "nan_streak", "nan_steps", "evals_since_best")

    def to_dict(self, config: dict) -> dict:
        """The ``train`` entry of ``last.pt`` (``weights_only``-loadable; the EMA weights are the file's model)."""
        return {
            "config": config,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "ema_updates": self.ema.updates,
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            **{k: getattr(self, k) for k in self.COUNTERS},
            "epoch_sums": dict(self.epoch_sums),
            "best_ap": self.best_ap,
            "rng": get_rng_state(),
        }

    def load(self, saved: dict, ema_weights: dict[str, torch.Tensor]) -> None:
        """Restore from :meth:`to_dict`'s output and the file's EMA weights (RNG states included)."""
        self.model.load_state_dict(saved["model"])
        self.ema.load_state_dict({"module": ema_weights, "updates": saved["ema_updates"]})
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scaler is not None and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        for k in self.COUNTERS:
            setattr(self, k, int(saved[k]))
        self.best_ap = float(saved["best_ap"])
        self.epoch_sums = dict(saved["epoch_sums"])
        set_rng_state(saved["rng"])
