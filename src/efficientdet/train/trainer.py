"""The training driver: data, model, optimizer, EMA, schedule, checkpoints, resume, signals, DDP.

Use :func:`train` (or ``efficientdet train``). Determinism: every epoch's data order and each image's
augmentation come from ``(seed, epoch)`` only (:class:`~.distributed.EpochBatchSampler`), the torch /
numpy / python RNG states are saved in ``last.pt``, and with ``deterministic=True``
``torch.use_deterministic_algorithms`` is on, so a run resumed from any of its checkpoints (end of
an epoch or mid-epoch with ``save_interval_steps``) ends with bit-identical weights (CPU).
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..anchors import anchors_for
from ..data.records import DetectionData
from ..data.segmentation import SegmentationData
from ..errors import ConfigError, TrainingStopped
from ..loss import DetectionLoss
from ..weights import load_checkpoint, save_checkpoint
from . import distributed as dist
from .build import (
    amp_dtype,
    build_data,
    build_device,
    build_loader,
    build_model,
    build_state,
    log,
    resolve_anchors,
    resolve_recipe,
    wrap_distributed,
)
from .config import TrainConfig
from .precise_bn import calibration_loader, recompute_bn_statistics, trained_batch_norms
from .resume import resolve_resume, run_dir_of
from .run_dir import MetricsLog, image_grid, next_run_dir, plot_curves, plot_pr
from .step import StepSetup, train_step

METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
LOSS_KEYS = ("loss", "cls_loss", "box_loss", "seg_loss")


@dataclass
class TrainResult:
    """What a run produced: folder, checkpoints, last validation metrics, counters."""

    run_dir: Path
    last: Path | None
    best: Path | None
    metrics: dict = field(default_factory=dict)
    best_ap: float = -1.0
    epochs_completed: int = 0
    step: int = 0
    nan_steps: int = 0
    interrupted: bool = False
    plots: list[Path] = field(default_factory=list)


class Trainer:
    """Holds the whole training state; :meth:`run` trains to ``cfg.epochs`` (or until stopped)."""

    def __init__(self, cfg: TrainConfig, resume: str | Path | None = None, runtime: dict | None = None) -> None:
        ckpt = None
        if resume is not None:
            last = resolve_resume(resume)
            ckpt = load_checkpoint(last)
            saved = (ckpt.extra or {}).get("train")
            if not saved:
                raise ConfigError(f"--resume {resume}: {last} holds no training state (not a last.pt)")
            cfg = TrainConfig.from_dict(saved["config"])
        if runtime:  # options that do not change the result (workers, device, progress)
            cfg = cfg.replace(**runtime)
        self._was_deterministic = torch.are_deterministic_algorithms_enabled()
        self.device = build_device(cfg)
        self.train_data, self.val_data = build_data(cfg)
        if ckpt is None:  # a new run: recipe and anchors are decided once, then saved in config.yaml
            cfg = resolve_recipe(cfg, len(self.train_data))
            if "detect" in cfg.tasks:  # anchors are fitted on the detection boxes
                boxes = self.train_data.detection if "segment" in cfg.tasks else self.train_data
                cfg = resolve_anchors(cfg, boxes)
        self.cfg = cfg
        self.model = build_model(cfg, self.train_data, self.device, resuming=ckpt is not None)
        self.steps_per_epoch = len(self.train_data) // cfg.batch_size
        self.amp = amp_dtype(cfg, self.device)
        self.state = build_state(cfg, self.model, self.steps_per_epoch, self.device, self.amp)
        if ckpt is not None:
            self.state.load(ckpt.extra["train"], ckpt.state_dict)
            self.run_dir = run_dir_of(Path(ckpt.path))
            s = self.state
            log(f"resuming {self.run_dir} at epoch {s.epoch + 1}, batch {s.batch_in_epoch}, step {s.step}")
        else:
            self.run_dir = Path(cfg.out) if cfg.out else next_run_dir()
        self.weights_dir = self.run_dir / "weights"
        if dist.is_main():
            self.weights_dir.mkdir(parents=True, exist_ok=True)
            cfg.save_yaml(self.run_dir / "config.yaml")
        self.set_train_mode()
        self.bn_names = trained_batch_norms(self.model)  # the BatchNorms precise BN recomputes (not frozen ones)
        self._bn_logged = False
        self.model, forward = wrap_distributed(self.model, self.device)
        self.state.model = self.model
        detect = "detect" in cfg.tasks
        self.setup = StepSetup(forward, anchors_for(self.model.config).to(self.device) if detect else None,
                               DetectionLoss(self.model.config.num_classes) if detect else None, self.device, self.amp,
                               cfg.clip_grad, cfg.channels_last,
                               tuple(p for p in self.model.parameters() if p.requires_grad), cfg.tasks,
                               cfg.seg_loss_weight, cfg.seg_dice_weight)
        self.loader, self.sampler = build_loader(cfg, self.train_data, self.model, self.device)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.step_times: list[float] = []
        self.metrics: dict = {}
        self.last_dets: list[dict] = []
        self._stop_signal: int | None = None

    # -- pieces of the loop ---------------------------------------------------------------------------------
    def set_train_mode(self) -> None:
        """Train mode, except frozen parts: BN everywhere with ``freeze_bn``, the backbone when frozen."""
        self.model.train()
        if self.cfg.freeze_backbone:
            self.model.backbone.eval()
        if self.cfg.freeze_bn:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def stop_requested(self) -> bool:
        flag = torch.tensor([1.0 if self._stop_signal is not None else 0.0])
        return bool(dist.all_reduce(flag, "max").item()) if dist.world_size() > 1 else self._stop_signal is not None

    def _check_finite(self) -> None:
        for name, module in (("model", self.model), ("EMA", self.state.ema.module)):
            for k, v in module.state_dict().items():
                if v.dtype.is_floating_point and not torch.isfinite(v).all():
                    raise TrainingStopped(f"{name} weights became non-finite ({k}); not saved: lower the lr "
                                          "(--lr), check the labels")

    def save_last(self) -> Path | None:
        """``weights/last.pt``: EMA weights as ``model`` + the full training state (rank 0 only)."""
        if not dist.is_main():
            return None
        self._check_finite()
        return save_checkpoint(self.weights_dir / "last.pt", self.state.ema.module,
                               extra={"train": self.state.to_dict(self.cfg.to_dict())})

    def save_best(self, metrics: dict) -> Path:
        self._check_finite()
        return save_checkpoint(self.weights_dir / "best.pt", self.state.ema.module,
                               extra={"epoch": self.state.epoch,
                                      "metrics": {k: float(metrics[k]) for k in self._metric_keys()}})

    def calibrate_bn(self) -> int:
        """Precise BN (:mod:`.precise_bn`): the EMA weights' BatchNorm statistics from up to
        ``cfg.precise_bn`` training images; returns the images used (0 when off)."""
        cfg = self.cfg
        if not cfg.precise_bn or not self.bn_names:
            return 0
        c = self.model.config
        t0 = time.perf_counter()
        loader = calibration_loader(self.train_data, cfg.precise_bn, cfg.eval_batch_size, c.image_size, c.mean, c.std)
        seen = recompute_bn_statistics(self.state.ema.module, (images for images, _ in loader), self.bn_names,
                                       cfg.channels_last)
        if not self._bn_logged:
            log(f"BatchNorm statistics of the EMA weights recomputed on {seen} training images before validation "
                f"and saving ({time.perf_counter() - t0:.1f} s; --precise-bn 0 turns it off)")
            self._bn_logged = True
        return seen

    def train_one_epoch(self) -> dict[str, float] | None:
        """Run the rest of the current epoch (from ``state.batch_in_epoch``); its mean loss terms.

        ``None`` when a stop was requested (SIGINT/SIGTERM) after the current step (the caller saves
        ``last.pt``). Raises :class:`TrainingStopped` after ``max_nan_steps`` non-finite steps in a row.
        """
        from tqdm import tqdm

        s, cfg = self.state, self.cfg
        epoch = s.epoch
        self.sampler.set_epoch(epoch, s.batch_in_epoch)
        bar = tqdm(total=self.steps_per_epoch, initial=s.batch_in_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not (cfg.progress and dist.is_main()), dynamic_ncols=True, leave=True)
        tick = time.perf_counter()
        for images, targets in self.loader:
            if s.step == 0 and cfg.plots and dist.is_main():
                self._save_train_batch(images, targets)
            self.set_train_mode()
            terms = train_step(s, self.setup, images, targets, cfg.accumulate)
            s.step += 1
            s.batch_in_epoch += 1
            if terms is None:
                s.nan_streak += 1
                s.nan_steps += 1
                if s.nan_streak >= cfg.max_nan_steps:
                    bar.close()
                    raise TrainingStopped(
                        f"{s.nan_streak} non-finite losses in a row at step {s.step} (epoch {epoch + 1}); stopped "
                        "without saving these weights: lower the lr (--lr), check the labels")
            elif "amp_skip" not in terms:
                s.nan_streak = 0
                for k in LOSS_KEYS:
                    if k in terms:
                        s.epoch_sums[k] = s.epoch_sums.get(k, 0.0) + terms[k]
                s.epoch_sums["n"] = s.epoch_sums.get("n", 0.0) + 1
            now = time.perf_counter()
            dt, tick = now - tick, now
            self.step_times.append(dt)
            if terms is not None and bar.disable is False:
                mean_dt = sum(self.step_times[-20:]) / len(self.step_times[-20:])
                parts = {"cls": f"{terms['cls_loss']:.4f}", "box": f"{terms['box_loss']:.5f}"} \
                    if "cls_loss" in terms else {}
                if "seg_loss" in terms:
                    parts["seg"] = f"{terms['seg_loss']:.4f}"
                bar.set_postfix(loss=f"{terms['loss']:.4f}", **parts,
                                lr=f"{s.optimizer.param_groups[0]['lr']:.2e}", img_s=f"{cfg.batch_size / mean_dt:.1f}",
                                eta=_fmt_time(mean_dt * (self.total_steps - s.step)), refresh=False)
            bar.update(1)
            every = cfg.save_interval_steps
            if every and s.step % every == 0 and s.batch_in_epoch < self.steps_per_epoch:
                self.save_last()
            if self.stop_requested():
                bar.close()
                return None
        bar.close()
        n = s.epoch_sums.get("n", 0.0)
        keys = [k for k in LOSS_KEYS if k in s.epoch_sums] or ["loss"]
        return {k: s.epoch_sums.get(k, math.nan) / n if n else math.nan for k in keys}

    # -- the loop -------------------------------------------------------------------------------------
    def _validate(self) -> dict:
        """Validation metrics of the EMA weights: COCO box metrics and/or mIoU & co.; ``score`` is what picks
        best.pt (AP; mIoU for segmentation; their mean for a joint model)."""
        from ..eval.coco import format_metrics

        metrics: dict = {}
        model = self.state.ema.module
        if "detect" in self.cfg.tasks:
            det_data = self.val_data.detection if "segment" in self.cfg.tasks else self.val_data
            metrics, dets = evaluate(model, det_data, self.cfg.eval_batch_size, self.device)
            self.last_dets = dets
            print(f"\nvalidation after epoch {self.state.epoch} (EMA weights):\n{format_metrics(metrics)}", flush=True)
        if "segment" in self.cfg.tasks:
            from ..eval.segmentation import format_seg_metrics
            from .seg import seg_validate

            seg = seg_validate(model, self.val_data, self.cfg.eval_batch_size, self.device)
            metrics = {**metrics, **seg}
            print(f"\nsegmentation after epoch {self.state.epoch} (EMA weights):\n{format_seg_metrics(seg)}",
                  flush=True)
        scores = [metrics[k] for k, t in (("AP", "detect"), ("mIoU", "segment")) if t in self.cfg.tasks]
        metrics["score"] = sum(scores) / len(scores)
        self.metrics = metrics
        return metrics

    def _metric_keys(self) -> tuple[str, ...]:
        from .seg import SEG_METRIC_KEYS

        return (METRIC_KEYS if "detect" in self.cfg.tasks else ()) + (
            SEG_METRIC_KEYS if "segment" in self.cfg.tasks else ())

    def run(self) -> TrainResult:
        cfg = self.cfg
        mlog = MetricsLog(self.run_dir, cfg.tensorboard) if dist.is_main() else None
        old = self._install_signals()
        interrupted = False
        try:
            c = self.model.config
            classes = " + ".join(([f"{c.num_classes} classes"] if "detect" in cfg.tasks else [])
                                 + ([f"{c.seg_classes} segmentation classes"] if "segment" in cfg.tasks else []))
            log(f"training {c.name} ({c.image_size}px, {classes}) "
                 f"for {cfg.epochs} epochs x {self.steps_per_epoch} steps, global batch {cfg.batch_size} on "
                 f"{dist.world_size()} process(es), {self.device}, amp={'on' if self.amp else 'off'}, "
                 f"peak lr {cfg.peak_lr:g}" + (f", {cfg.accumulate} micro-batches per step" if cfg.accumulate > 1
                                               else "") + f"; run folder {self.run_dir}")
            if self.state.step == 0 and cfg.plots and dist.is_main() and "detect" in cfg.tasks:
                self._save_label_statistics()
            while self.state.epoch < cfg.epochs:
                t0 = time.perf_counter()
                losses = self.train_one_epoch()
                if losses is None:
                    interrupted = True
                    break
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                self.state.epoch_sums = {}
                row: dict = {"epoch": self.state.epoch, **losses, "lr": self.state.optimizer.param_groups[0]["lr"],
                             "nan_steps": self.state.nan_steps}
                stop_early = False
                validate = self.val_data is not None and (self.state.epoch % cfg.val_interval == 0
                                                          or self.state.epoch == cfg.epochs)
                if dist.is_main() and (validate or self.state.epoch == cfg.epochs):
                    self.calibrate_bn()  # rank 0 evaluates and saves; the other ranks' EMA copies are not used
                if dist.is_main() and validate:
                    metrics = self._validate()
                    row.update({k: metrics[k] for k in self._metric_keys()})
                    if metrics["score"] > self.state.best_ap:
                        self.state.best_ap, self.state.evals_since_best = metrics["score"], 0
                        self.save_best(metrics)
                    else:
                        self.state.evals_since_best += 1
                        stop_early = cfg.patience is not None and self.state.evals_since_best >= cfg.patience
                row["time"] = round(time.perf_counter() - t0, 3)
                if mlog is not None:
                    mlog.epoch(row, self.state.step)
                self.save_last()
                if dist.world_size() > 1:
                    flag = dist.all_reduce(torch.tensor([1.0 if stop_early else 0.0]), "max")
                    stop_early = bool(flag.item())
                    dist.barrier()
                if stop_early:
                    log(f"no {'AP' if cfg.tasks == ('detect',) else 'score'} improvement in {cfg.patience} "
                        "evaluations; stopping early")
                    break
            if interrupted:
                self.save_last()
                dist.barrier()
                s = self.state
                log(f"\nstopped by signal {self._stop_signal} after step {s.step} (epoch {s.epoch + 1}, batch "
                    f"{s.batch_in_epoch}); saved {self.weights_dir / 'last.pt'}\nresume with: efficientdet train "
                    f"--resume {self.run_dir}")
            result = self._finish(interrupted, mlog)
        finally:
            if mlog is not None:
                mlog.close()
            self._restore_signals(old)
            torch.use_deterministic_algorithms(self._was_deterministic)
        return result

    def _finish(self, interrupted: bool, mlog: MetricsLog | None) -> TrainResult:
        s = self.state
        plots: list[Path] = []
        if dist.is_main() and self.cfg.plots:  # also after an interruption (the checkpoint is already saved)
            try:
                plots += [p for p in (self.run_dir / "train_batch.png", self.run_dir / "labels.png") if p.is_file()]
                plots += plot_curves(self.run_dir / "metrics.csv", self.run_dir)
                det_data = getattr(self.val_data, "detection", self.val_data)
                if det_data is not None and "detect" in self.cfg.tasks and self.last_dets is not None and self.metrics:
                    names = dict(zip(det_data.category_ids, det_data.class_names))
                    plots.append(plot_pr(det_data.to_coco(), self.last_dets, names,
                                         self.run_dir / "pr_curve.png"))
                    plots.append(self._val_grid())
                if self.val_data is not None and "segment" in self.cfg.tasks and self.metrics:
                    from .seg import overlay_grid

                    plots.append(overlay_grid(self.state.ema.module, self.val_data, self.run_dir / "val_overlays.png",
                                              self.device))
            except Exception as exc:  # a plotting problem must not turn a finished run into an error
                log(f"warning: plots not written ({type(exc).__name__}: {exc})")
        best = self.weights_dir / "best.pt"
        result = TrainResult(self.run_dir, self.weights_dir / "last.pt", best if best.is_file() else None,
                             self.metrics, s.best_ap, s.epoch, s.step, s.nan_steps, interrupted, plots)
        if dist.is_main() and not interrupted:
            lines = [f"done: {s.epoch} epochs, {s.step} steps ({s.nan_steps} skipped as non-finite)",
                     f"  run folder   {self.run_dir}", f"  weights      {result.last}" +
                     (f", {result.best} (best {self._score_name()} {s.best_ap:.4f})" if result.best else ""),
                     f"  metrics      {self.run_dir / 'metrics.csv'}", f"  config       {self.run_dir / 'config.yaml'}"]
            if self.cfg.tensorboard:
                lines.append(f"  tensorboard  tensorboard --logdir {self.run_dir / 'tensorboard'}")
            if plots:
                lines.append(f"  plots        {', '.join(p.name for p in plots)} in {self.run_dir}")
            log("\n".join(lines))
        dist.barrier()
        return result

    def _box_data(self) -> DetectionData | SegmentationData:
        """The training data whose classes the boxes use: a joint run's detection view, else the data."""
        view = getattr(self.train_data, "detection", None)
        return view if view is not None else self.train_data

    def _save_train_batch(self, images: torch.Tensor, targets: list[dict]) -> None:
        """``train_batch.png``: the first augmented batch as the network sees it, with its boxes."""
        from .visuals import save_train_batch

        c = self.model.config
        try:
            save_train_batch(images, targets, c.mean, c.std, list(self._box_data().class_names),
                             self.run_dir / "train_batch.png")
        except Exception as exc:  # a picture must never stop a run
            log(f"warning: train_batch.png not written ({type(exc).__name__}: {exc})")

    def _save_label_statistics(self) -> None:
        """``labels.png``: boxes per class and box sizes against the anchor sizes, at the input size."""
        from ..anchor_fit import input_boxes
        from .visuals import anchor_shapes, save_label_statistics

        c = self.model.config
        data = self._box_data()
        try:
            boxes = input_boxes(data, c.image_size)
            labels = [smp.labels[~smp.iscrowd] for smp in data.samples]
            save_label_statistics(boxes, np.concatenate(labels) if labels else np.zeros(0, np.int64),
                                  list(data.class_names),
                                  anchor_shapes(c.image_size, c.min_level, c.max_level, c.anchor_scale,
                                                c.num_scales, c.aspect_ratios),
                                  self.run_dir / "labels.png", c.image_size)
        except Exception as exc:
            log(f"warning: labels.png not written ({type(exc).__name__}: {exc})")
    def _score_name(self) -> str:
        return {("detect",): "AP", ("segment",): "mIoU"}.get(self.cfg.tasks, "(AP + mIoU) / 2")

    def _val_grid(self, count: int = 8) -> Path:
        from ..images import load_image
        from ..inference.detector import Detector
        from ..visualize import draw_detections

        detector = Detector(self.state.ema.module, device=self.device, score_threshold=0.3)
        samples = getattr(self.val_data, "detection", self.val_data).samples[:count]
        images = [load_image(s.path) for s in samples]
        drawn = [draw_detections(img, det) for img, det in zip(images, detector(images))]
        return image_grid(drawn, self.run_dir / "val_predictions.png")

    # -- signals --------------------------------------------------------------------------------------
    def _install_signals(self) -> dict:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, frame: object) -> None:
            if self._stop_signal is not None:  # second signal: stop now
                raise KeyboardInterrupt
            self._stop_signal = signum
            log(f"\nsignal {signum}: finishing the current step, then saving last.pt (again to abort)")

        return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def _restore_signals(old: dict) -> None:
        for s, h in old.items():
            signal.signal(s, h)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: DetectionData, batch_size: int = 8,
             device: torch.device | str = "cpu") -> tuple[dict, list[dict]]:
    """COCO metrics of ``model`` (the EMA model) on ``data`` through the Detector with the official evaluation
    settings, exactly as ``efficientdet eval`` computes them. Returns ``(metrics, detections)``."""
    from ..eval.run import evaluate_model
    from ..inference.config import DEFAULTS
    from ..inference.detector import Detector

    detector = Detector(model, device=device, score_threshold=DEFAULTS.score_threshold)
    return evaluate_model(detector, data, batch_size=batch_size)


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


def train(cfg: TrainConfig | None = None, resume: str | Path | None = None, runtime: dict | None = None
          ) -> TrainResult:
    """Train from ``cfg``, or continue the run of ``resume`` (a run folder or its ``weights/last.pt``).

    On resume the saved configuration is used; ``runtime`` may change ``workers``, ``device`` or
    ``progress`` (for a new run too).

    Launched by ``torchrun`` the job is data-parallel (see :mod:`.distributed`); the process group is
    destroyed at the end. Returns a :class:`TrainResult` (on every rank; files are written by rank 0).
    """
    if cfg is None and resume is None:
        raise ConfigError("train() needs a TrainConfig or resume=")
    try:
        trainer = Trainer(cfg if cfg is not None else TrainConfig("", ""), resume=resume, runtime=runtime)
        return trainer.run()
    finally:
        dist.cleanup()


__all__ = ["TrainResult", "Trainer", "TrainingStopped", "evaluate", "train"]
