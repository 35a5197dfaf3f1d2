"""Exponential moving average of model weights (evaluated and saved instead of the raw weights)."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEma:
    """``ema = d * ema + (1 - d) * model`` after every optimizer step, for parameters and float buffers.

    The decay warms up as ``d_t = decay * (1 - exp(-t / warmup_steps))`` (t = updates so far, counting
    this one; ``warmup_steps`` 0 disables it) so a short run's average is not dominated by the random
    initial weights: with the official 0.9998 and tau 2000, d is 0.095 after 200 steps, 0.78 after 3000
    and reaches 0.9998 only on long runs. Integer buffers (BN ``num_batches_tracked``) are copied.
    ``module`` is a deep copy in eval mode, without gradients, with the source's attributes
    (``config``, ``class_names`` ...), so it can be evaluated and saved directly.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup_steps: float = 2000.0) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = float(decay)
        self.warmup_steps = float(warmup_steps)
        self.updates = 0

    def current_decay(self, updates: int) -> float:
        if self.warmup_steps <= 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-updates / self.warmup_steps))

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Blend ``model``'s state into the average; returns the decay used."""
        self.updates += 1
        d = self.current_decay(self.updates)
        source = model.state_dict()
        for name, value in self.module.state_dict().items():
            src = source[name].detach()
            if value.dtype.is_floating_point:
                value.mul_(d).add_(src.to(value.dtype), alpha=1.0 - d)
            else:
                value.copy_(src)
        return d

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
