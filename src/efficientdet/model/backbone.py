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
    name: str, drop_path_rate: float = 0.0, pretrained: bool | str | Path = False, min_level: int = 3
) -> nn.Module:
    """timm ``features_only`` EfficientNet with ``out_indices=(2, 3, 4)`` (strides 8, 16, 32), or
    ``(1, 2, 3, 4)`` (strides 4 .. 32) for ``min_level=2`` (P2, segmentation and small objects).

    Args:
        name: timm model name (``tf_efficientnet_b0`` ... ``tf_efficientnet_lite4``).
        drop_path_rate: stochastic depth during training.
        pretrained: ``False``; ``True`` to download timm's ImageNet weights (needs network); or a
            file / installed package name / timm name (see :mod:`.imagenet`, which converts the
            efficientnet_pytorch, torchvision and timm layouts and checks every tensor).
    """
    out_indices = backbone_out_indices(min_level)
    model = timm.create_model(name, features_only=True, out_indices=out_indices, drop_path_rate=drop_path_rate)
    use_memory_efficient_norm_act(model)  # same numbers, ~1/3 less activation memory in training
    if pretrained is True:
        from .imagenet import load_timm_pretrained

        load_timm_pretrained(model, name)
    elif pretrained:
        from .imagenet import load_imagenet_backbone

        load_imagenet_backbone(model, name, pretrained)
    return model
