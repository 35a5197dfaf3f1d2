"""The training driver: data, model, optimizer, EMA, schedule, checkpoints, resume, signals, DDP.

Use :func:`train` (or ``efficientdet train``). Determinism: every epoch's data order and each image's
augmentation come from ``(seed, epoch)`` only (:class:`~.distributed.EpochBatchSampler`), the torch /
numpy / python RNG states are saved in ``last.pt``, and with ``deterministic=True``
``torch.use_deterministic_algorithms`` is on, so a run resumed from any of its checkpoints (end of
an epoch or mid-epoch with ``save_interval_steps``) ends with bit-identical weights (CPU).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..anchors import generate_anchors
from ..data import DetectionDataset, TrainTransform, collate, read_dataset
from ..data.dataset import seed_worker
from ..data.records import DetectionData
from ..errors import ConfigError, DataError
from ..factory import create_model
from ..loss import DetectionLoss
from ..weights import load_checkpoint, save_checkpoint
from . import distributed as dist
from .checkpoint import get_rng_state, resolve_resume, run_dir_of, set_rng_state
from .config import TrainConfig
from .ema import ModelEma
from .engine import TrainingStopped, evaluate, train_one_epoch
from .optim import WarmupCosine, build_optimizer
from .run_dir import MetricsLog, image_grid, next_run_dir, plot_curves, plot_pr

METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


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


def _log(*args: object) -> None:
    if dist.is_main():
        print(*args, file=sys.stderr, flush=True)


def _read(fmt: str, images: str, annotations: str, strict: bool, names: str | None, what: str) -> DetectionData:
    data = read_dataset(fmt, images, annotations, strict=strict,
                        class_names=names if fmt in ("voc", "yolo") or (fmt == "auto" and names) else None)
    summary = data.report.summary()
    _log(f"{what}: {len(data)} images, {data.num_boxes} boxes, {data.num_classes} classes"
         + (f"; {data.report.total_dropped} dropped" if data.report.total_dropped else ""))
    if summary:
        _log("\n".join(f"  {line}" for line in summary.splitlines()))
    return data


class Trainer:
    """Holds the whole training state; :meth:`run` trains to ``cfg.epochs`` (or until stopped)."""

    def __init__(self, cfg: TrainConfig, resume: str | Path | None = None, runtime: dict | None = None) -> None:
        ckpt = None
        if resume is not None:
            last = resolve_resume(resume)
            ckpt = load_checkpoint(last)
            state = (ckpt.extra or {}).get("train")
            if not state:
                raise ConfigError(f"--resume {resume}: {last} holds no training state (not a last.pt)")
            cfg = TrainConfig.from_dict(state["config"])
        if runtime:  # options that do not change the result (workers, device, progress)
            cfg = cfg.replace(**runtime)
        self.cfg = cfg
        device_type = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
        if device_type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda requested but no CUDA GPU is available; use --device cpu")
        self.distributed = dist.init_distributed(device_type)
        rank, local_rank, world = dist.env_world()
        self.device = torch.device(f"cuda:{local_rank}" if device_type == "cuda" else "cpu")
        self._was_deterministic = torch.are_deterministic_algorithms_enabled()
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        if cfg.batch_size % world:
            raise ConfigError(f"--batch-size {cfg.batch_size} (global) must be divisible by the {world} processes")

        # data
        self.train_data = _read(cfg.format, cfg.train_images, cfg.train_annotations, cfg.strict, cfg.class_names,
                                "train")
        self.val_data = (_read(cfg.format, cfg.val_images, cfg.val_annotations, cfg.strict, cfg.class_names, "val")
                         if cfg.val_images else None)
        if len(self.train_data) < cfg.batch_size:
            raise DataError(f"{cfg.train_annotations}: {len(self.train_data)} training images, fewer than "
                            f"--batch-size {cfg.batch_size}; lower the batch size")

        # model, EMA, optimizer, schedule
        torch.manual_seed(cfg.seed)
        overrides = dict(cfg.model_overrides)
        if cfg.image_size is not None:
            overrides["image_size"] = cfg.image_size
        self.model = create_model(
            cfg.model, num_classes=self.train_data.num_classes,
            weights=None if ckpt is not None else cfg.weights,
            pretrained_backbone=(cfg.pretrained_backbone or False) if ckpt is None and not cfg.weights else False,
            class_names=list(self.train_data.class_names), category_ids=list(self.train_data.category_ids),
            **overrides,
        ).to(self.device)
        if cfg.freeze_backbone:
            self.model.freeze_backbone()
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.checkpoint_stages is None:  # CPU: ~300 MB less for D0 at batch 4 for ~5% time (BENCHMARKS.md)
            self.model.checkpoint_stages = 0 if device_type == "cuda" else min(2, self.model.checkpointable_stages())
        else:
            self.model.checkpoint_stages = cfg.checkpoint_stages
        self.num_classes = self.model.config.num_classes
        self.ema = ModelEma(self.model, cfg.ema_decay, cfg.ema_warmup_steps)
        self.optimizer = build_optimizer(self.model, cfg.optimizer, cfg.peak_lr, cfg.momentum, cfg.weight_decay)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.steps_per_epoch = len(self.train_data) // cfg.batch_size
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.schedule = WarmupCosine(cfg.peak_lr, self.total_steps, round(cfg.warmup_epochs * self.steps_per_epoch),
                                     cfg.warmup_factor)
        self.amp = cfg.amp if cfg.amp is not None else (device_type == "cuda" or _cpu_bf16_fast())
        self.scaler = torch.amp.GradScaler("cuda") if self.amp and device_type == "cuda" else None
        self.loss_fn = DetectionLoss(self.num_classes)
        c = self.model.config
        self.anchors = generate_anchors(c.image_size, c.min_level, c.max_level, c.anchor_scale, c.num_scales,
                                        c.aspect_ratios).to(self.device)

        # counters (restored on resume)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps attempted (global, skipped ones included)
        self.batch_in_epoch = 0
        self.nan_streak = self.nan_steps = 0
        self.epoch_sums: dict[str, float] = {}
        self.best_ap = -1.0
        self.evals_since_best = 0
        self.step_times: list[float] = []
        self.metrics: dict = {}
        self.last_dets: list[dict] = []
        if ckpt is not None:
            self._load_state(ckpt)
            self.run_dir = run_dir_of(Path(ckpt.path))
            _log(f"resuming {self.run_dir} at epoch {self.epoch + 1}, batch {self.batch_in_epoch}, step {self.step}")
        else:
            self.run_dir = Path(cfg.out) if cfg.out else next_run_dir()
        self.weights_dir = self.run_dir / "weights"
        if dist.is_main():
            self.weights_dir.mkdir(parents=True, exist_ok=True)
            cfg.save_yaml(self.run_dir / "config.yaml")

        # distributed wrapper and data loader
        self.ddp: nn.Module = self.model
        if self.distributed:
            if device_type == "cuda":
                from timm.layers import convert_sync_batchnorm  # keeps timm's BN+activation layers whole

                self.model = convert_sync_batchnorm(self.model)
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if device_type == "cuda" else None)
        from .distributed import EpochBatchSampler

        self.sampler = EpochBatchSampler(len(self.train_data), cfg.batch_size, cfg.seed, rank, world)
        transform = TrainTransform(c.image_size, c.mean, c.std, scale_range=(cfg.scale_min, cfg.scale_max),
                                   hflip=cfg.hflip)
        g = torch.Generator()
        g.manual_seed(cfg.seed)
        self.loader = DataLoader(DetectionDataset(self.train_data, transform), batch_sampler=self.sampler,
                                 num_workers=cfg.workers, collate_fn=collate, worker_init_fn=_init_worker,
                                 generator=g, pin_memory=device_type == "cuda", persistent_workers=cfg.workers > 0)
        self._stop_signal: int | None = None

    # -- pieces used by the engine ------------------------------------------------------------------
    def set_train_mode(self) -> None:
        """Train mode, except frozen parts: BN everywhere with ``freeze_bn``, the backbone when frozen."""
        self.model.train()
        if self.cfg.freeze_backbone:
            self.model.backbone.eval()
        if self.cfg.freeze_bn:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def forward_model(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self.ddp(images)

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.amp:
            return contextlib.nullcontext()
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def stop_requested(self) -> bool:
        flag = torch.tensor([1.0 if self._stop_signal is not None else 0.0])
        return bool(dist.all_reduce(flag, "max").item()) if self.distributed else self._stop_signal is not None

    # -- checkpoints ----------------------------------------------------------------------------------
    def _check_finite(self) -> None:
        for name, module in (("model", self.model), ("EMA", self.ema.module)):
            for k, v in module.state_dict().items():
                if v.dtype.is_floating_point and not torch.isfinite(v).all():
                    raise TrainingStopped(f"{name} weights became non-finite ({k}); not saved: lower the lr "
                                          "(--lr), check the labels")

    def training_state(self) -> dict:
        return {
            "config": self.cfg.to_dict(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "ema_updates": self.ema.updates,
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch, "step": self.step, "batch_in_epoch": self.batch_in_epoch,
            "nan_streak": self.nan_streak, "nan_steps": self.nan_steps, "epoch_sums": dict(self.epoch_sums),
            "best_ap": self.best_ap, "evals_since_best": self.evals_since_best,
            "rng": get_rng_state(),
        }

    def _load_state(self, ckpt) -> None:
        s = ckpt.extra["train"]
        self.model.load_state_dict(s["model"])
        self.ema.load_state_dict({"module": ckpt.state_dict, "updates": s["ema_updates"]})
        self.optimizer.load_state_dict(s["optimizer"])
        if self.scaler is not None and s.get("scaler"):
            self.scaler.load_state_dict(s["scaler"])
        for k in ("epoch", "step", "batch_in_epoch", "nan_streak", "nan_steps", "evals_since_best"):
            setattr(self, k, int(s[k]))
        self.best_ap = float(s["best_ap"])
        self.epoch_sums = dict(s["epoch_sums"])
        set_rng_state(s["rng"])

    def save_last(self) -> Path | None:
        """``weights/last.pt``: EMA weights as ``model`` + the full training state (rank 0 only)."""
        if not dist.is_main():
            return None
        self._check_finite()
        return save_checkpoint(self.weights_dir / "last.pt", self.ema.module, extra={"train": self.training_state()})

    def save_best(self, metrics: dict) -> Path:
        self._check_finite()
        return save_checkpoint(self.weights_dir / "best.pt", self.ema.module,
                               extra={"epoch": self.epoch, "metrics": {k: float(metrics[k]) for k in METRIC_KEYS}})

    # -- the loop -------------------------------------------------------------------------------------
    def _validate(self) -> dict:
        from ..eval.coco import format_metrics

        metrics, dets = evaluate(self.ema.module, self.val_data, self.cfg.eval_batch_size, self.device)
        self.metrics, self.last_dets = metrics, dets
        print(f"\nvalidation after epoch {self.epoch} (EMA weights):\n{format_metrics(metrics)}", flush=True)
        return metrics

    def run(self) -> TrainResult:
        cfg = self.cfg
        log = MetricsLog(self.run_dir, cfg.tensorboard) if dist.is_main() else None
        old = self._install_signals()
        interrupted = False
        try:
            _log(f"training {self.model.config.name} ({self.model.config.image_size}px, {self.num_classes} classes) "
                 f"for {cfg.epochs} epochs x {self.steps_per_epoch} steps, global batch {cfg.batch_size} on "
                 f"{dist.world_size()} process(es), {self.device}, amp={'on' if self.amp else 'off'}, "
                 f"peak lr {cfg.peak_lr:g}; run folder {self.run_dir}")
            while self.epoch < cfg.epochs:
                t0 = time.perf_counter()
                losses = train_one_epoch(self, self.epoch)
                if losses is None:
                    interrupted = True
                    break
                self.epoch += 1
                self.batch_in_epoch = 0
                self.epoch_sums = {}
                row: dict = {"epoch": self.epoch, **losses, "lr": self.optimizer.param_groups[0]["lr"],
                             "nan_steps": self.nan_steps}
                stop_early = False
                if dist.is_main() and self.val_data is not None and (
                        self.epoch % cfg.val_interval == 0 or self.epoch == cfg.epochs):
                    metrics = self._validate()
                    row.update({k: metrics[k] for k in METRIC_KEYS})
                    if metrics["AP"] > self.best_ap:
                        self.best_ap, self.evals_since_best = metrics["AP"], 0
                        self.save_best(metrics)
                    else:
                        self.evals_since_best += 1
                        stop_early = cfg.patience is not None and self.evals_since_best >= cfg.patience
                row["time"] = round(time.perf_counter() - t0, 3)
                if log is not None:
                    log.epoch(row, self.step)
                self.save_last()
                if self.distributed:
                    flag = dist.all_reduce(torch.tensor([1.0 if stop_early else 0.0]), "max")
                    stop_early = bool(flag.item())
                    dist.barrier()
                if stop_early:
                    _log(f"no AP improvement in {cfg.patience} evaluations; stopping early")
                    break
            if interrupted:
                self.save_last()
                dist.barrier()
                _log(f"\nstopped by signal {self._stop_signal} after step {self.step} (epoch {self.epoch + 1}, batch "
                     f"{self.batch_in_epoch}); saved {self.weights_dir / 'last.pt'}\nresume with: efficientdet train "
                     f"--resume {self.run_dir}")
            result = self._finish(interrupted, log)
        finally:
            if log is not None:
                log.close()
            self._restore_signals(old)
            torch.use_deterministic_algorithms(self._was_deterministic)
        return result

    def _finish(self, interrupted: bool, log: MetricsLog | None) -> TrainResult:
        plots: list[Path] = []
        if dist.is_main() and self.cfg.plots:  # also after an interruption (the checkpoint is already saved)
            try:
                plots += plot_curves(self.run_dir / "metrics.csv", self.run_dir)
                if self.val_data is not None and self.last_dets is not None and self.metrics:
                    names = dict(zip(self.val_data.category_ids, self.val_data.class_names))
                    plots.append(plot_pr(self.val_data.to_coco(), self.last_dets, names,
                                         self.run_dir / "pr_curve.png"))
                    plots.append(self._val_grid())
            except Exception as exc:  # a plotting problem must not turn a finished run into an error
                _log(f"warning: plots not written ({type(exc).__name__}: {exc})")
        best = self.weights_dir / "best.pt"
        result = TrainResult(self.run_dir, self.weights_dir / "last.pt", best if best.is_file() else None,
                             self.metrics, self.best_ap, self.epoch, self.step, self.nan_steps, interrupted, plots)
        if dist.is_main() and not interrupted:
            lines = [f"done: {self.epoch} epochs, {self.step} steps ({self.nan_steps} skipped as non-finite)",
                     f"  run folder   {self.run_dir}", f"  weights      {result.last}" +
                     (f", {result.best} (best AP {self.best_ap:.4f})" if result.best else ""),
                     f"  metrics      {self.run_dir / 'metrics.csv'}", f"  config       {self.run_dir / 'config.yaml'}"]
            if self.cfg.tensorboard:
                lines.append(f"  tensorboard  tensorboard --logdir {self.run_dir / 'tensorboard'}")
            if plots:
                lines.append(f"  plots        {', '.join(p.name for p in plots)} in {self.run_dir}")
            _log("\n".join(lines))
        dist.barrier()
        return result

    def _val_grid(self, count: int = 8) -> Path:
        from ..detector import Detector
        from ..images import load_image
        from ..visualize import draw_detections

        detector = Detector(self.ema.module, device=self.device, score_threshold=0.3)
        samples = self.val_data.samples[:count]
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
            _log(f"\nsignal {signum}: finishing the current step, then saving last.pt (again to abort)")

        return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def _restore_signals(old: dict) -> None:
        for s, h in old.items():
            signal.signal(s, h)


def _init_worker(worker_id: int) -> None:
    """Seed the worker's RNGs and let Ctrl-C reach only the main process, which stops after the current
    step and shuts the workers down itself (a worker killed by SIGINT would fail the running step)."""
    seed_worker(worker_id)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _cpu_bf16_fast() -> bool:
    """bf16 autocast on CPU only where it is faster: CPUs with AMX tiles.

    With AVX512-BF16 alone (no AMX) a D0 training step measured 40% slower in bf16 than in float32
    on the 2-core benchmark machine (BENCHMARKS.md), so those CPUs train in float32 by default.
    """
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


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


__all__ = ["TrainResult", "Trainer", "TrainingStopped", "train"]
