"""``create_model``: a variant row + overrides + weights -> a ready :class:`EfficientDet`."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import WeightsError
from .labels import LabelMap
from .model.efficientdet import EfficientDet
from .variants import ModelConfig, get_config
from .weights import Checkpoint, architecture_mismatch, load_checkpoint


def create_model(
    name: str | ModelConfig | None = "efficientdet_d0",
    num_classes: int | None = None,
    weights: str | Path | None = None,
    pretrained_backbone: bool | str | Path = False,
    class_names: list[str] | None = None,
    category_ids: list[int] | None = None,
    seg_class_names: list[str] | None = None,
    **overrides: object,
) -> EfficientDet:
    """Build a model, optionally loading weights.

    Args:
        name: a variant name or alias (see :func:`efficientdet.list_models`), ``phiN`` for compound
            scaling, or a :class:`ModelConfig`. With this project's checkpoints the saved config
            defines the architecture (``name`` may be ``None``); naming another variant is an error.
        num_classes: classes to predict. With ``weights`` of another class count, every tensor but
            the class predictor is loaded and the predictor is re-initialised (fine-tuning).
        weights: a local file (this project's checkpoint, or an effdet state_dict) or a published
            name such as ``tf_efficientdet_d0`` (downloaded once, verified, cached).
        pretrained_backbone: ImageNet backbone weights (``True`` downloads via timm; or a file).
        class_names, category_ids: per-label names and original ids (kept in checkpoints).
        seg_class_names: segmentation class names, background first (models with a ``seg_head``).
        overrides: any :class:`ModelConfig` field (``image_size``, ``feature_network``, ``fusion`` ...).

    The model carries its ``config`` and a :class:`~efficientdet.labels.LabelMap` as ``labels``, and
    ``seg_class_names`` (``None`` without a segmentation head).
    """
    ckpt: Checkpoint | None = load_checkpoint(weights) if weights is not None else None
    if ckpt is not None and ckpt.config is not None:
        # this project's checkpoints carry their config: it defines the architecture
        saved = ModelConfig.from_dict(ckpt.config)
        if name is not None:
            wanted = name if isinstance(name, ModelConfig) else get_config(name)
            clash = architecture_mismatch(ckpt.config, wanted.to_dict())
            if wanted.name != saved.name and clash:
                raise WeightsError(
                    f"{ckpt.path}: checkpoint is a {saved.name} ({clash} differs from --model {wanted.name}); "
                    f"pass --model {saved.name} or leave --model out"
                )
        keep = {k: v for k, v in overrides.items() if v is not None and k == "image_size"}
        cfg = saved.replace(**keep) if keep else saved
    else:
        cfg = name if isinstance(name, ModelConfig) else get_config(name or "efficientdet_d0", **overrides)
        if ckpt is not None:
            cfg = cfg.replace(num_classes=ckpt.num_classes)
    model = EfficientDet(cfg, pretrained_backbone=pretrained_backbone if ckpt is None else False)
    labels = LabelMap.default(cfg.num_classes)
    if ckpt is not None:
        load_state(model, ckpt)
        labels = ckpt.labels or labels
    if num_classes is not None and num_classes != cfg.num_classes:
        model.reset_classes(num_classes)
        labels = LabelMap.default(num_classes)
    if class_names is not None or category_ids is not None:
        labels = LabelMap(tuple(class_names) if class_names is not None else labels.names,
                          tuple(int(i) for i in category_ids) if category_ids is not None else labels.category_ids)
    if len(labels) != model.config.num_classes:
        raise WeightsError(f"{len(labels)} class names / category ids for {model.config.num_classes} classes; "
                           "give one per class")
    model.labels = labels
    _set_seg_class_names(model, seg_class_names, ckpt)
    return model


def _set_seg_class_names(model: EfficientDet, names: list[str] | None, ckpt: Checkpoint | None) -> None:
    k = model.config.seg_classes
    if not model.config.seg_head:
        model.seg_class_names = None
        return
    if names is None and ckpt is not None and ckpt.seg_class_names and len(ckpt.seg_class_names) == k:
        names = ckpt.seg_class_names
    if names is not None and len(names) != k:
        if not 1 <= len(names) <= 255:
            raise WeightsError(f"{len(names)} segmentation class names; give 1..255 (background first)")
        model.reset_seg_classes(len(names))  # another class count: fresh classifier, the rest kept (fine-tuning)
    model.seg_class_names = list(names) if names is not None else ["background"] + [f"class{i}" for i in range(1, k)]


def load_state(model: EfficientDet, ckpt: Checkpoint) -> None:
    """Strict load with one-line errors that say which model the file belongs to."""
    wanted = model.state_dict()
    missing = [k for k in wanted if k not in ckpt.state_dict]
    unexpected = [k for k in ckpt.state_dict if k not in wanted]
    shape = [k for k in wanted if k in ckpt.state_dict and ckpt.state_dict[k].shape != wanted[k].shape]
    if missing or unexpected or shape:
        detail = (
            f"{len(missing)} missing (e.g. {missing[0]!r})"
            if missing
            else f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})"
            if unexpected
            else f"shape of {shape[0]!r} is {tuple(ckpt.state_dict[shape[0]].shape)}, "
            f"model has {tuple(wanted[shape[0]].shape)}"
        )
        raise WeightsError(
            f"{ckpt.path}: weights do not fit --model {model.config.name} ({detail}); "
            "pass the model these weights were made for"
        )
    with torch.no_grad():
        model.load_state_dict(ckpt.state_dict, strict=True)
