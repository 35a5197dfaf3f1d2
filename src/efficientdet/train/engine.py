"""One training step, one training epoch, and validation (the same code path as ``efficientdet eval``)."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import torch

from ..data.records import DetectionData
from ..detector import Detector
from ..errors import EfficientDetError
from ..eval.run import evaluate_model
from ..matcher import match_anchors
from ..model.efficientdet import flatten_outputs
from . import distributed as dist

if TYPE_CHECKING:
    from .trainer import Trainer


class TrainingStopped(EfficientDetError):
    """Training cannot go on (diverged: too many non-finite steps, or non-finite weights)."""

    exit_code = 1


def train_step(t: Trainer, images: torch.Tensor, targets: list[dict]) -> dict[str, float] | None:
    """Forward, loss, backward, clip, optimizer step and EMA update for one batch.

    Returns the loss terms as floats, or ``None`` when the step was skipped because the loss or the
    gradient norm was not finite (no optimizer step, no EMA update). In a ``torchrun`` job the loss
    is normalised by the positives of the GLOBAL batch, so the averaged DDP gradient equals the
    single-process gradient of the same global batch.
    """
    t.set_train_mode()
    t.schedule.apply(t.optimizer, t.step)
    images = images.to(t.device, non_blocking=True)
    if t.cfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    match = match_anchors(t.anchors, [x["boxes"] for x in targets], [x["labels"] for x in targets],
                          [x["iscrowd"] for x in targets])
    with t.autocast():
        cls, box = t.forward_model(images)
    cls, box = flatten_outputs(cls, box, t.num_classes)
    terms = t.loss_fn(cls, box, match.cls_targets, match.box_targets)
    loss = terms["loss"]
    scale = 1.0
    if dist.world_size() > 1:
        positives = dist.all_reduce(terms["num_positives"].detach().clone())
        scale = float(dist.world_size() * (terms["num_positives"] + 1) / (positives + 1))
        loss = loss * scale
    finite = dist.all_reduce(torch.isfinite(loss.detach()).float().reshape(1), "min")
    if not bool(finite.item()):
        return None
    t.optimizer.zero_grad(set_to_none=True)
    if t.scaler is not None:
        t.scaler.scale(loss).backward()
        t.scaler.unscale_(t.optimizer)
    else:
        loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(t.trainable, t.cfg.clip_grad)
    if not math.isfinite(float(norm)):
        if t.scaler is not None:  # fp16 overflow: GradScaler lowers its scale, not a divergence
            t.scaler.update()
            return {"loss": math.nan, "amp_skip": 1.0}
        return None
    if t.scaler is not None:
        t.scaler.step(t.optimizer)
        t.scaler.update()
    else:
        t.optimizer.step()
    t.ema.update(t.model)
    return {"loss": float(loss.detach()) / scale, "cls_loss": float(terms["cls_loss"].detach()),
            "box_loss": float(terms["box_loss"].detach()), "grad_norm": float(norm)}


def train_one_epoch(t: Trainer, epoch: int) -> dict[str, float] | None:
    """Run the rest of ``epoch`` (from ``t.batch_in_epoch``); returns the epoch's mean loss terms.

    Returns ``None`` when a stop was requested (SIGINT/SIGTERM) after the current step; ``last.pt``
    is then saved by the caller. Raises :class:`TrainingStopped` after ``max_nan_steps`` non-finite
    steps in a row.
    """
    from tqdm import tqdm

    t.sampler.set_epoch(epoch, t.batch_in_epoch)
    bar = tqdm(total=t.steps_per_epoch, initial=t.batch_in_epoch, desc=f"epoch {epoch + 1}/{t.cfg.epochs}",
               disable=not (t.cfg.progress and dist.is_main()), dynamic_ncols=True, leave=True)
    tick = time.perf_counter()
    for images, targets in t.loader:
        terms = train_step(t, images, targets)
        t.step += 1
        t.batch_in_epoch += 1
        if terms is None:
            t.nan_streak += 1
            t.nan_steps += 1
            if t.nan_streak >= t.cfg.max_nan_steps:
                bar.close()
                raise TrainingStopped(
                    f"{t.nan_streak} non-finite losses in a row at step {t.step} (epoch {epoch + 1}); stopped "
                    "without saving these weights: lower the lr (--lr), check the labels"
                )
        elif "amp_skip" not in terms:
            t.nan_streak = 0
            for k in ("loss", "cls_loss", "box_loss"):
                t.epoch_sums[k] = t.epoch_sums.get(k, 0.0) + terms[k]
            t.epoch_sums["n"] = t.epoch_sums.get("n", 0.0) + 1
        now = time.perf_counter()
        dt, tick = now - tick, now
        t.step_times.append(dt)
        if terms is not None and bar.disable is False:
            mean_dt = sum(t.step_times[-20:]) / len(t.step_times[-20:])
            bar.set_postfix(loss=f"{terms['loss']:.4f}", cls=f"{terms.get('cls_loss', math.nan):.4f}",
                            box=f"{terms.get('box_loss', math.nan):.5f}", lr=f"{t.optimizer.param_groups[0]['lr']:.2e}",
                            img_s=f"{t.cfg.batch_size / mean_dt:.1f}",
                            eta=_fmt_time(mean_dt * (t.total_steps - t.step)), refresh=False)
        bar.update(1)
        every = t.cfg.save_interval_steps
        if every and t.step % every == 0 and t.batch_in_epoch < t.steps_per_epoch:
            t.save_last()
        if t.stop_requested():
            bar.close()
            return None
    bar.close()
    n = max(1.0, t.epoch_sums.get("n", 0.0))
    return {k: t.epoch_sums.get(k, math.nan) / n if t.epoch_sums.get("n") else math.nan
            for k in ("loss", "cls_loss", "box_loss")}


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: DetectionData, batch_size: int = 8,
             device: torch.device | str = "cpu") -> tuple[dict, list[dict]]:
    """COCO metrics of ``model`` (the EMA model) on ``data`` through :class:`Detector` with the official
    score threshold 0.001, exactly as ``efficientdet eval`` computes them. Returns ``(metrics, detections)``."""
    detector = Detector(model, device=device, score_threshold=0.001)
    return evaluate_model(detector, data, batch_size=batch_size)


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"
