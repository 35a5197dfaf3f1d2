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

from ..loss import DetectionLoss, segmentation_loss
from ..matcher import match_anchors
from ..model.efficientdet import flatten_outputs
from . import distributed as dist
from .state import TrainState


@dataclass(frozen=True)
class StepSetup:
    """What stays fixed over a run: the module to call (the DDP wrapper in a ``torchrun`` job), anchors,
    loss, device, mixed-precision dtype (``None`` = float32), clipping norm and input memory format.

    ``tasks``: ``("detect",)``, ``("segment",)`` or both; a segmentation-only run has no anchors or
    detection loss (``None``); ``seg_weight`` weighs the segmentation loss in the total."""

    forward: nn.Module
    anchors: torch.Tensor | None
    loss_fn: DetectionLoss | None
    device: torch.device
    amp_dtype: torch.dtype | None
    clip_grad: float
    channels_last: bool
    trainable: tuple[nn.Parameter, ...]
    tasks: tuple[str, ...] = ("detect",)
    seg_weight: float = 1.0

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
    same global batch. The segmentation loss (pixel-wise cross-entropy, 255 ignored, ``targets[i]["mask"]``,
    weighted by ``setup.seg_weight``) is likewise a mean over the labelled pixels of the global batch.
    Counters are the caller's.
    """
    state.schedule.apply(state.optimizer, state.step)
    images = images.to(setup.device, non_blocking=True)
    if setup.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    detect = "detect" in setup.tasks
    if detect:
        match = match_anchors(setup.anchors, [x["boxes"] for x in targets], [x["labels"] for x in targets],
                              [x["iscrowd"] for x in targets])
    with setup.autocast():
        outputs = setup.forward(images)
    terms: dict[str, torch.Tensor] = {}
    loss = torch.zeros((), device=setup.device)
    scale = 1.0
    if detect:
        cls, box = flatten_outputs(outputs[0], outputs[1], state.model.config.num_classes)
        terms = setup.loss_fn(cls, box, match.cls_targets, match.box_targets)
        loss = terms["loss"]
        if dist.world_size() > 1:
            positives = dist.all_reduce(terms["num_positives"].detach().clone())
            scale = float(dist.world_size() * (terms["num_positives"] + 1) / (positives + 1))
            loss = loss * scale
    if "segment" in setup.tasks:
        masks = torch.stack([x["mask"] for x in targets]).to(setup.device, non_blocking=True).long()
        seg = segmentation_loss(outputs if isinstance(outputs, torch.Tensor) else outputs[2], masks)
        terms["seg_loss"] = seg
        if dist.world_size() > 1:  # a mean over the GLOBAL batch's labelled pixels, as in one process
            valid = (masks != 255).sum().float().reshape(1)
            seg = seg * (dist.world_size() * valid / dist.all_reduce(valid.clone()).clamp(min=1))[0]
        loss = loss + setup.seg_weight * seg
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
    total = float(terms["loss"].detach()) if detect else 0.0
    if "seg_loss" in terms:
        total += setup.seg_weight * float(terms["seg_loss"].detach())
    out = {"loss": total, "grad_norm": float(norm)}
    for k in ("cls_loss", "box_loss", "seg_loss"):
        if k in terms:
            out[k] = float(terms[k].detach())
    return out
