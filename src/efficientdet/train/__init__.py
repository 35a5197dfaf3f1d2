"""Training: :func:`train` (``efficientdet train``), :class:`TrainConfig`, resumable run folders, DDP.

Imports are lazy so that ``efficientdet`` commands other than ``train`` do not pay for them.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "TrainConfig": ".config",
    "train": ".trainer",
    "Trainer": ".trainer",
    "TrainResult": ".trainer",
    "TrainingStopped": ".trainer",
    "TrainState": ".state",
    "train_step": ".step",
    "evaluate": ".trainer",
    "ModelEma": ".ema",
    "WarmupCosine": ".optim",
    "param_groups": ".optim",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
