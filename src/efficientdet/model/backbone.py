"""EfficientNet backbone from timm, returning the stride 8/16/32 features (P3, P4, P5), or from
stride 4 (P2) / 2 (P1) on when the feature network starts at a finer level."""

from __future__ import annotations

from pathlib import Path

import timm
from torch import nn

from .norm_act import use_memory_efficient_norm_act


def backbone_out_indices(min_level: int = 3) -> tuple[int, ...]:
    """timm feature indices for P_min..P5: index i has stride 2**(i + 1); (2, 3, 4) for P3..P5."""
    return tuple(range(min(min_level, 3) - 1, 5))


def create_backbone(
    name: str,
    drop_path_rate: float = 0.0,
    pretrained: bool | str | Path = False,
    min_level: int = 3,
    drop_last_stage: bool = False,
) -> nn.Module:
    """timm ``features_only`` EfficientNet with ``out_indices=(2, 3, 4)`` (strides 8, 16, 32), or
    ``(1, 2, 3, 4)`` (strides 4 .. 32) for ``min_level=2`` (P2, segmentation and small objects).

    Args:
        name: timm model name (``tf_efficientnet_b0`` ... ``tf_efficientnet_lite4``).
        drop_path_rate: stochastic depth during training.
        pretrained: ``False``; ``True`` to download timm's ImageNet weights (needs network); or a
            file / installed package name / timm name (see :mod:`.imagenet`, which converts the
            efficientnet_pytorch, torchvision and timm layouts and checks every tensor).
        min_level: finest pyramid level wanted (3, or 2 for P2).
        drop_last_stage: take the stride-32 feature (P5) from the stage before the last one and drop
            the last (see :func:`drop_last_block_stage`).
    """
    out_indices = backbone_out_indices(min_level)
    model = timm.create_model(name, features_only=True, out_indices=out_indices, drop_path_rate=drop_path_rate)
    if drop_last_stage:
        drop_last_block_stage(model)
    use_memory_efficient_norm_act(model)  # same numbers, ~1/3 less activation memory in training
    if pretrained is True:
        from .imagenet import load_timm_pretrained

        load_timm_pretrained(model, name)
    elif pretrained:
        from .imagenet import load_imagenet_backbone

        load_imagenet_backbone(model, name, pretrained)
    return model


def drop_last_block_stage(model: nn.Module) -> None:
    """Remove the last block stage of a timm ``features_only`` EfficientNet, in place; the last output
    (stride 32) then comes from the stage before it, which has the same stride.

    EfficientNet's last stage widens the stride-32 features (B0: one MBConv 192 -> 320 channels,
    38M of B0's 476M multiply-adds at 256 px) before an ImageNet classifier. A dense-prediction head
    that resamples every level to its own width anyway gains little from it (MobileNetV3 halves the
    same stage for detection and segmentation); the ``_seg`` decoder rows drop it.
    """
    out_idx = getattr(model, "_stage_out_idx", None)
    blocks = getattr(model, "blocks", None)
    if not out_idx or blocks is None or getattr(model, "feature_hooks", None) is not None:
        raise ValueError(f"drop_last_stage needs a timm EfficientNetFeatures backbone, got {type(model).__name__}")
    last = len(blocks)  # stage i + 1 is the output of blocks[i]
    if max(out_idx) != last or last - 1 in out_idx:
        raise ValueError(f"drop_last_stage: the last output is not the last stage alone ({sorted(out_idx)})")
    first = blocks[last - 1][0]
    if any(s != 1 for m in first.modules() if isinstance(m, nn.Conv2d) for s in m.stride):
        raise ValueError("drop_last_stage: the last stage downsamples, so the stage before it has another stride")
    convs = [m for m in blocks[last - 2].modules() if isinstance(m, nn.Conv2d)]
    model.blocks = blocks[: last - 1]
    model._stage_out_idx = {(last - 1 if k == last else k): v for k, v in out_idx.items()}
    info = model.feature_info.info[-1]
    info["num_chs"] = convs[-1].out_channels
    info["module"] = f"blocks.{last - 2}"
