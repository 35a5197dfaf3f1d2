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

from ..loss import DetectionLoss, dice_from_statistics, dice_statistics, segmentation_loss
from ..matcher import match_anchors
from ..model.efficientdet import flatten_outputs
from . import distributed as dist
from .state import TrainState


@dataclass(frozen=True)
class StepSetup:
    """What stays fixed over a run: the module to call (the DDP wrapper in a ``torchrun`` job), anchors,
    loss, device, mixed-precision dtype (``None`` = float32), clipping norm and input memory format.

    ``tasks``: ``("detect",)``, ``("segment",)`` or both; a segmentation-only run has no anchors or
    detection loss (``None``); ``seg_weight`` weighs the segmentation loss in the total, ``seg_dice`` the soft
    Dice term inside it (cross-entropy + ``seg_dice`` x Dice)."""

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
    seg_dice: float = 0.0

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def global_dice(logits: torch.Tensor, masks: torch.Tensor, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The soft Dice loss of the batch of all ``world`` processes, as ``(value, share)``.

    In one process both are :func:`~efficientdet.loss.dice_loss`. In a torchrun job the per-class sums
    (:func:`~efficientdet.loss.dice_statistics`) are all-reduced, so ``value`` is the global batch's Dice
    (detached, for the log); ``share`` has that value and the gradient of this process's pixels only:
    ``a . inter + b . denom`` with ``a``, ``b`` the derivatives of the global Dice by the global sums, times
    ``world`` because DDP averages the processes' gradients. The averaged gradient is then that of one
    process on the whole batch."""
    inter, denom, target_sum = dice_statistics(logits, masks)
    if world == 1:
        value = dice_from_statistics(inter, denom, target_sum)
        return value, value
    total = dist.all_reduce(torch.stack([inter, denom, target_sum]).detach().clone())
    g_inter, g_denom = total[0].clone().requires_grad_(), total[1].clone().requires_grad_()
    with torch.enable_grad():
        value = dice_from_statistics(g_inter, g_denom, total[2])
    a, b = torch.autograd.grad(value, (g_inter, g_denom))
    share = ((a * inter).sum() + (b * denom).sum()) * world
    return value.detach(), share - share.detach() + value.detach()


def train_step(state: TrainState, setup: StepSetup, images: torch.Tensor, targets: list[dict],
               accumulate: int = 1) -> dict[str, float] | None:
    """Train on one batch; returns the loss terms as floats, or ``None`` when the step was skipped.

    Skipped (no optimizer step, no EMA update) when the loss or the gradient norm is not finite. The
    learning rate for ``state.step`` is applied first. In a ``torchrun`` job the loss is normalised by the
    positives of the GLOBAL batch, so the averaged DDP gradient equals the single-process gradient of the
    same global batch. The segmentation loss (pixel-wise cross-entropy, 255 ignored, ``targets[i]["mask"]``,
    weighted by ``setup.seg_weight``) is likewise a mean over the labelled pixels of the global batch, and its Dice term
    (``setup.seg_dice``) the Dice of the global batch (:func:`global_dice`). With
    ``accumulate`` N the batch runs as N sequential micro-batches (activation memory of one micro-batch)
    whose losses are re-weighted from their own positives (labelled pixels) to the whole batch's, so the
    summed gradient is the whole batch's (BatchNorm statistics and the Dice term are per micro-batch). Counters are the
    caller's.
    """
    state.schedule.apply(state.optimizer, state.step)
    images = images.to(setup.device, non_blocking=True)
    if setup.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    detect = "detect" in setup.tasks
    segment = "segment" in setup.tasks
    n = images.shape[0]
    parts = max(1, min(int(accumulate), n))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    world = dist.world_size()
    det_scale = seg_scale = 1.0
    if detect:
        match = match_anchors(setup.anchors, [x["boxes"] for x in targets], [x["labels"] for x in targets],
                              [x["iscrowd"] for x in targets])
        batch_positives = (match.cls_targets >= 0).sum().float()
        if world > 1:  # normalised by the positives of the GLOBAL batch
            det_scale = float(world * (batch_positives + 1) / (dist.all_reduce(batch_positives.clone()) + 1))
    if segment:
        masks = torch.stack([x["mask"] for x in targets]).to(setup.device, non_blocking=True).long()
        labelled = masks != 255
        batch_valid = labelled.sum().float()
        labelled_images = labelled.flatten(1).any(dim=1).float()  # (B,): the micro-batch Dice weights
        batch_images = labelled_images.sum()
        if world > 1:  # a mean over the GLOBAL batch's labelled pixels, as in one process
            seg_scale = float(world * batch_valid / dist.all_reduce(batch_valid.clone()).clamp(min=1))
    state.optimizer.zero_grad(set_to_none=True)
    scaler = state.scaler
    sums: dict[str, float] = {}
    for i in range(parts):
        sl = slice(bounds[i], bounds[i + 1])
        last = i == parts - 1
        sync = contextlib.nullcontext() if last or not hasattr(setup.forward, "no_sync") else setup.forward.no_sync()
        with sync:
            with setup.autocast():
                outputs = setup.forward(images[sl])
            loss = torch.zeros((), device=setup.device)
            parts_terms: dict[str, torch.Tensor] = {}
            if detect:
                cls, box = flatten_outputs(outputs[0], outputs[1], state.model.config.num_classes)
                terms = setup.loss_fn(cls, box, match.cls_targets[sl], match.box_targets[sl])
                weight = (terms["num_positives"].detach() + 1.0) / (batch_positives + 1.0)  # micro -> batch
                loss = loss + terms["loss"] * weight * det_scale
                for k in ("loss", "cls_loss", "box_loss"):
                    parts_terms[k] = terms[k] * weight
            if segment:
                micro = masks[sl]
                logits = outputs if isinstance(outputs, torch.Tensor) else outputs[2]
                seg = segmentation_loss(logits, micro) * (labelled[sl].sum().float() / batch_valid.clamp(min=1))
                seg_global = seg * seg_scale
                if setup.seg_dice:  # Dice over the global batch (over each micro-batch with accumulate > 1)
                    local, share = global_dice(logits, micro, world)
                    weight = labelled_images[sl].sum() / batch_images.clamp(min=1)
                    seg = seg + setup.seg_dice * local * weight
                    seg_global = seg_global + setup.seg_dice * share * weight
                loss = loss + setup.seg_weight * seg_global
                parts_terms["seg_loss"] = seg
            finite = dist.all_reduce(torch.isfinite(loss.detach()).float().reshape(1), "min")
            if not bool(finite.item()):  # every process skips together (no half-finished DDP reduction)
                state.optimizer.zero_grad(set_to_none=True)
                return None
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
        for k, v in parts_terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
    if scaler is not None:
        scaler.unscale_(state.optimizer)
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
    out = {k: v for k, v in sums.items() if k != "loss"}
    out["loss"] = sums.get("loss", 0.0) + setup.seg_weight * sums.get("seg_loss", 0.0)
    out["grad_norm"] = float(norm)
    return out
