"""One training step: forward, loss, backward, clipping, optimizer step and EMA update.

Everything the step reads or changes is an argument: the :class:`~.state.TrainState` (weights,
optimizer, EMA, scaler) and the :class:`StepSetup` (the run's fixed pieces).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..loss import DetectionLoss
from ..matcher import match_anchors
from ..model.efficientdet import flatten_outputs
from . import distributed as dist
from .state import TrainState


@dataclass(frozen=True)
class StepSetup:
    """What stays fixed over a run: the module to call (the DDP wrapper in a ``torchrun`` job), anchors,
    loss, device, mixed-precision dtype (``None`` = float32), clipping norm and input memory format."""

    forward: nn.Module
    anchors: torch.Tensor
    loss_fn: DetectionLoss
    device: torch.device
    amp_dtype: torch.dtype | None
    clip_grad: float
    channels_last: bool
    trainable: tuple[nn.Parameter, ...]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def train_step(state: TrainState, setup: StepSetup, images: torch.Tensor, targets: list[dict]
               ) -> dict[str, float] | None:
    """Train on one batch; returns the loss terms as floats, or ``None`` when the step was skipped.

    Skipped (no optimizer step, no EMA update) when the loss or the gradient norm is not finite. The
    learning rate for ``state.step`` is applied first. In a ``torchrun`` job the loss is normalised by the
    positives of the GLOBAL batch, so the averaged DDP gradient equals the single-process gradient of the
    same global batch. Counters are the caller's.
    """
    state.schedule.apply(state.optimizer, state.step)
    images = images.to(setup.device, non_blocking=True)
    if setup.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    match = match_anchors(setup.anchors, [x["boxes"] for x in targets], [x["labels"] for x in targets],
                          [x["iscrowd"] for x in targets])
    with setup.autocast():
        cls, box = setup.forward(images)
    cls, box = flatten_outputs(cls, box, state.model.config.num_classes)
    terms = setup.loss_fn(cls, box, match.cls_targets, match.box_targets)
    loss = terms["loss"]
    scale = 1.0
    if dist.world_size() > 1:
        positives = dist.all_reduce(terms["num_positives"].detach().clone())
        scale = float(dist.world_size() * (terms["num_positives"] + 1) / (positives + 1))
        loss = loss * scale
    finite = dist.all_reduce(torch.isfinite(loss.detach()).float().reshape(1), "min")
    if not bool(finite.item()):
        return None
    state.optimizer.zero_grad(set_to_none=True)
    scaler = state.scaler
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(state.optimizer)
    else:
        loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(setup.trainable, setup.clip_grad)
    if not math.isfinite(float(norm)):
        if scaler is not None:  # fp16 overflow: GradScaler lowers its scale, not a divergence
            scaler.update()
            return {"loss": math.nan, "amp_skip": 1.0}
        return None
    if scaler is not None:
        scaler.step(state.optimizer)
        scaler.update()
    else:
        state.optimizer.step()
    state.ema.update(state.model)
    return {"loss": float(loss.detach()) / scale, "cls_loss": float(terms["cls_loss"].detach()),
            "box_loss": float(terms["box_loss"].detach()), "grad_norm": float(norm)}
