"""The set-up of a training run, one small function per piece: device, data, model, optimisation, loader."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data import DetectionDataset, TrainTransform, collate, read_dataset
from ..data.dataset import seed_worker
from ..data.read import require_images
from ..data.records import DetectionData
from ..data.segmentation import SegmentationData, SegmentationDataset
from ..errors import ConfigError, DataError
from ..factory import create_model
from ..inference.sharding import usable_cpus
from ..model.efficientdet import EfficientDet
from . import distributed as dist
from .config import TrainConfig
from .distributed import EpochBatchSampler
from .ema import ModelEma
from .optim import WarmupCosine, build_optimizer
from .state import TrainState


def log(*args: object) -> None:
    """Print on stderr from the main process only."""
    if dist.is_main():
        print(*args, file=sys.stderr, flush=True)


def build_device(cfg: TrainConfig) -> torch.device:
    """The training device; joins the ``torchrun`` process group; sets deterministic algorithms if asked."""
    device_type = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but no CUDA GPU is available; use --device cpu")
    dist.init_distributed(device_type)
    _, local_rank, world = dist.env_world()
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    if cfg.batch_size % world:
        raise ConfigError(f"--batch-size {cfg.batch_size} (global) must be divisible by the {world} processes")
    return torch.device(f"cuda:{local_rank}" if device_type == "cuda" else "cpu")


def read_split(cfg: TrainConfig, images: str, annotations: str, what: str) -> DetectionData:
    """One split of the data set, with its load report logged."""
    names = cfg.names if cfg.format in ("voc", "yolo") or (cfg.format == "auto" and cfg.names) else None
    data = read_dataset(cfg.format, images, annotations, strict=cfg.strict, class_names=names)
    summary = data.report.summary()
    folded: dict[str, str] = {}
    for name in data.class_names:
        other = folded.setdefault(str(name).casefold(), name)
        if other != name:
            log(f"warning: {what} classes {other!r} and {name!r} differ only by case and are trained as two "
                "classes; rename them in the annotations or pass --names")
    if what == "train" and data.samples:
        import numpy as np

        seen = np.zeros(data.num_classes, bool)
        for smp in data.samples:
            seen[smp.labels] = True
        if not seen.all():
            empty = [data.class_names[i] for i in np.flatnonzero(~seen)]
            log(f"warning: {len(empty)} of {data.num_classes} classes have no training box "
                f"({', '.join(map(str, empty[:8]))}{', ...' if len(empty) > 8 else ''}); they cannot be learned: "
                "check --names and the labels")
    log(f"{what}: {len(data)} images, {data.num_boxes} boxes, {data.num_classes} classes"
        + (f"; {data.report.total_dropped} dropped" if data.report.total_dropped else ""))
    if summary:
        log("\n".join(f"  {line}" for line in summary.splitlines()))
    require_images(data, annotations, images)
    return data


def build_data(cfg: TrainConfig) -> tuple[Any, Any]:
    """(train, val or None): :class:`DetectionData` for detection, :class:`SegmentationData` with a
    segmentation task (for ``detect,segment`` from COCO json, with the boxes as its ``detection`` view)."""
    if "segment" in cfg.tasks:
        from .seg import read_seg_split

        train_data = read_seg_split(cfg.train_images or None, cfg.train_annotations, cfg.names, "train",
                                    cfg.strict, "train", log)
        val_data = (read_seg_split(cfg.val_images or None, cfg.val_annotations, cfg.names, "val", cfg.strict,
                                   "val", log) if cfg.val_annotations else None)
        if "detect" in cfg.tasks and any(d is not None and d.detection is None for d in (train_data, val_data)):
            raise ConfigError("--task detect,segment needs COCO json annotations (boxes and polygons/RLE) for "
                              "--train-annotations and --val-annotations")
    else:
        from ..data.read import resolve_format
        from ..data.records import align_classes

        train_data = read_split(cfg, cfg.train_images, cfg.train_annotations, "train")
        val_data = read_split(cfg, cfg.val_images, cfg.val_annotations, "val") if cfg.val_images else None
        if val_data is not None:  # numbered as training numbers them (VOC / YOLO readers number each split)
            coco = resolve_format(cfg.format, cfg.val_annotations) == "coco"
            val_data, notes = align_classes(val_data, train_data.class_names, train_data.category_ids, by_id=coco,
                                            against="training classes")
            for note in notes:
                log(f"warning: {note}")
    if len(train_data) < cfg.batch_size:
        raise DataError(f"{cfg.train_annotations}: {len(train_data)} training images, fewer than "
                        f"--batch-size {cfg.batch_size}; lower the batch size")
    return train_data, val_data


def resolve_recipe(cfg: TrainConfig, num_images: int) -> TrainConfig:
    """Fill the recipe's fields (``cfg.resolve``) and log the choice and the options that overrode it."""
    resolved, recipe = cfg.resolve(num_images)
    explicit = cfg.explicit()
    log(recipe.describe() + (f"; given explicitly: {', '.join(f'{k}={getattr(cfg, k)}' for k in explicit)}"
                             if explicit else ""))
    return resolved


def resolve_anchors(cfg: TrainConfig, data: DetectionData) -> TrainConfig:
    """Measure the anchors on the training boxes; with ``anchors=auto`` take a better fitting
    ``anchor_scale`` / ``aspect_ratios`` into ``model_overrides`` (so the checkpoint's model config, and
    everything that loads it, uses them). Anchors given as model overrides, or coming with ``--weights``,
    are kept (measured only); with ``--weights`` nothing is measured. Warns when recall stays poor."""
    from ..anchor_fit import plan_anchors
    from ..variants import get_config

    if cfg.weights is not None:  # the weights bring their anchors (and their model config)
        return cfg
    overrides = dict(cfg.model_overrides)
    if cfg.image_size is not None:
        overrides["image_size"] = cfg.image_size
    config = get_config(cfg.model, **overrides)
    fixed = "anchor_scale" in overrides or "aspect_ratios" in overrides
    plan = plan_anchors(data, config, mode="default" if fixed or cfg.anchors != "auto" else "auto")
    for line in plan.messages:
        log(line)
    if cfg.anchors == "auto" and fixed:
        log("anchors auto: keeping the anchors given with --model-override")
    if plan.warning:
        log(plan.warning)
    if plan.overrides:
        return cfg.replace(model_overrides={**cfg.model_overrides, **plan.overrides})
    return cfg


def task_overrides(cfg: TrainConfig) -> dict[str, Any]:
    """The heads ``--task`` asks for, as ModelConfig overrides on top of the ``--model`` row: ``segment``
    keeps a row's segmentation head (``*_seg``: the P2 classifier) or adds the official decoder to a
    detection row, without the detection heads; ``detect,segment`` keeps both; ``detect`` only detection.
    (Initial ``weights`` of this project bring their own architecture; these then only apply on resume,
    where the run was built the same way.)"""
    from ..variants import get_config

    row = get_config(cfg.model, **{k: v for k, v in cfg.model_overrides.items() if k not in ("detect", "seg_head")})
    seg_head = cfg.model_overrides.get("seg_head", row.seg_head or "decoder")
    if cfg.tasks == ("segment",):
        return {"detect": False, "seg_head": seg_head}
    if cfg.tasks == ("detect", "segment"):
        return {"detect": True, "seg_head": seg_head}
    return {"detect": True, "seg_head": None} if not row.detect else {}


def build_model(cfg: TrainConfig, data: Any, device: torch.device, resuming: bool) -> EfficientDet:
    """The model with the data set's labels, initial weights (none when resuming: they come from last.pt),
    frozen parts, memory format and activation recomputation."""
    torch.manual_seed(cfg.seed)
    overrides = {**cfg.model_overrides, **task_overrides(cfg)}
    if cfg.image_size is not None:
        overrides["image_size"] = cfg.image_size
    seg = isinstance(data, SegmentationData)
    det = data.detection if seg else data
    labels: dict[str, Any] = {}
    if det is not None and "detect" in cfg.tasks:
        labels = dict(num_classes=det.num_classes, class_names=list(det.class_names),
                      category_ids=list(det.category_ids))
    if seg:
        labels["seg_class_names"] = list(data.class_names)
        overrides["seg_classes"] = data.num_classes
    model = create_model(
        cfg.model, weights=None if resuming else cfg.weights,
        pretrained_backbone=(cfg.pretrained_backbone or False) if not resuming and not cfg.weights else False,
        **labels, **overrides,
    ).to(device)
    if cfg.pretrained_backbone and not resuming and not cfg.weights:
        log(f"backbone: ImageNet weights from {cfg.pretrained_backbone} ({model.config.backbone}, every tensor "
            "checked)")
    missing = [t for t in cfg.tasks if t not in model.config.tasks]
    if missing:
        raise ConfigError(f"--task {cfg.task}: the model ({model.config.name}) has no {' or '.join(missing)} head; "
                          "pick a matching --model or weights")
    if cfg.freeze_backbone:
        model.freeze_backbone()
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.recompute_stages is None:  # CPU: ~300 MB less for D0 at batch 4 for ~5% time (BENCHMARKS.md)
        model.recompute_stages = 0 if device.type == "cuda" else min(2, model.recomputable_stages())
    else:
        model.recompute_stages = cfg.recompute_stages
    return model


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype (``None`` = float32): fp16 on CUDA; float32 on every CPU unless ``--amp``.

    bf16 autocast measured slower than float32 for a D0 training step on both CPU classes measured
    (BENCHMARKS.md): AMD EPYC Zen 4 (AVX512-BF16, no AMX) 1.10-1.15x the float32 step time in two
    interleaved pairs, Intel Xeon with AMX 1.77 vs 1.45 s/step; so the CPU default is float32 (``--amp``
    still trains in bf16 autocast, ~0.75x the peak memory).
    """
    if cfg.amp is False:
        return None
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if cfg.amp else None


def build_state(cfg: TrainConfig, model: EfficientDet, steps_per_epoch: int, device: torch.device,
                amp: torch.dtype | None) -> TrainState:
    """EMA, optimizer, warm-up + cosine schedule and (fp16 on CUDA) the loss scaler, all at step 0."""
    ema = ModelEma(model, cfg.ema_decay, cfg.ema_warmup_steps)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.peak_lr, cfg.momentum, cfg.weight_decay,
                                cfg.backbone_lr_scale if cfg.backbone_lr_scale is not None else 1.0)
    total = steps_per_epoch * cfg.epochs
    schedule = WarmupCosine(cfg.peak_lr, total, round(cfg.warmup_epochs * steps_per_epoch), cfg.warmup_factor)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 and device.type == "cuda" else None
    return TrainState(model, ema, optimizer, schedule, scaler)


def wrap_distributed(model: EfficientDet, device: torch.device) -> tuple[EfficientDet, nn.Module]:
    """(model, module to call): in a ``torchrun`` job the DDP wrapper (SyncBatchNorm on CUDA)."""
    if dist.world_size() <= 1:
        return model, model
    if device.type == "cuda":
        from timm.layers import convert_sync_batchnorm  # keeps timm's BN+activation layers whole

        model = convert_sync_batchnorm(model)
    # a segmentation-only network with the P2 classifier does not use the last feature-network layer's
    # P3..P7 outputs (their nodes get no gradient): DDP must be told, or it waits for them forever
    unused = not model.config.detect and model.config.seg_head == "p2"
    return model, nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                      else None, find_unused_parameters=unused)


def build_loader(cfg: TrainConfig, data: DetectionData, model: EfficientDet, device: torch.device
                 ) -> tuple[DataLoader, EpochBatchSampler]:
    """The training loader: seeded per-epoch order and augmentation (bit-exact resume), workers that ignore
    Ctrl-C (the main process stops after the current step and shuts them down)."""
    rank, _, world = dist.env_world()
    sampler = EpochBatchSampler(len(data), cfg.batch_size, cfg.seed, rank, world)
    c = model.config
    transform = TrainTransform(c.image_size, c.mean, c.std, scale_range=(cfg.scale_min, cfg.scale_max),
                               hflip=cfg.hflip)
    g = torch.Generator()
    g.manual_seed(cfg.seed)
    dataset = SegmentationDataset(data, transform) if isinstance(data, SegmentationData) else DetectionDataset(
        data, transform)
    workers = min(cfg.workers, usable_cpus())  # more loader processes than CPUs only compete (torch warns)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                        collate_fn=collate, worker_init_fn=_init_worker, generator=g,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    return loader, sampler


def _init_worker(worker_id: int) -> None:
    seed_worker(worker_id)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
