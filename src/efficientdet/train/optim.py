"""Optimizer parameter groups and the per-step learning-rate schedule (linear warm-up + cosine)."""

from __future__ import annotations

import math

import torch
from torch import nn

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, weight_decay: float, backbone_lr_scale: float = 1.0) -> list[dict]:
    """Two groups: weights with ``weight_decay``; norm-layer parameters and biases without.

    As the official code (which excludes ``batch_normalization`` and ``bias`` variables from the L2
    loss), BiFPN fusion weights keep their decay. Frozen parameters (``requires_grad=False``) are left
    out. Each group carries ``name`` (``"decay"`` / ``"no_decay"``) for logging and tests, and
    ``lr_scale`` (its lr as a fraction of the schedule's). With ``backbone_lr_scale != 1`` the backbone's
    parameters form two more groups (``backbone_decay`` / ``backbone_no_decay``, after the others) at
    that fraction.
    """
    backbone = getattr(model, "backbone", None)
    in_backbone = {id(p) for p in backbone.parameters()} if backbone is not None and backbone_lr_scale != 1.0 else set()
    groups: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": [], "backbone_decay": [], "backbone_no_decay": []}
    seen: set[int] = set()
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            kind = "no_decay" if isinstance(module, NORM_TYPES) or pname == "bias" else "decay"
            groups[("backbone_" if id(p) in in_backbone else "") + kind].append(p)
    out = [{"params": groups[name], "weight_decay": 0.0 if name.endswith("no_decay") else float(weight_decay),
            "name": name, "lr_scale": float(backbone_lr_scale) if name.startswith("backbone_") else 1.0}
           for name in groups]
    return [g for g in out if g["params"] or not g["name"].startswith("backbone_")]


def build_optimizer(
    model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float, backbone_lr_scale: float = 1.0
) -> torch.optim.Optimizer:
    """SGD (momentum, official) or AdamW over :func:`param_groups`; ``lr`` is the peak lr."""
    groups = param_groups(model, weight_decay, backbone_lr_scale)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))


class WarmupCosine:
    """lr(step) for 0-based optimizer steps: linear warm-up then cosine decay to 0.

    ``lr(0) = base * warmup_factor``, rising linearly to ``base`` at ``step = warmup_steps``, then
    ``base * 0.5 * (1 + cos(pi * (step - warmup_steps) / (total_steps - warmup_steps)))``, which is
    ``base / 2`` half-way through the decay and tends to 0 at ``total_steps``. It is a pure function
    of the step, so resuming only needs the step count.
    """

    def __init__(self, base_lr: float, total_steps: int, warmup_steps: int, warmup_factor: float = 0.1) -> None:
        self.base_lr = float(base_lr)
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = min(max(0, int(warmup_steps)), self.total_steps)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            frac = step / self.warmup_steps
            return self.base_lr * (self.warmup_factor + (1.0 - self.warmup_factor) * frac)
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * t))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's lr for ``step`` (times its ``lr_scale``, if any); returns the schedule's lr."""
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "warmup_factor": self.warmup_factor}
