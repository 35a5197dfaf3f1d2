"""Semantic-segmentation heads on the feature-network outputs; both return (B, K, H, W) logits at
the network input's resolution.

* :class:`PixelClassifierHead` (``seg_head="p2"``, the paper's section 5.2): ``seg_layers`` x
  (separable 3x3 -> BN -> activation) of width ``seg_channels`` on P2 (stride 4), a 1x1 classifier,
  then bilinear upsampling by 4 to the input size.
* :class:`DecoderHead` (``seg_head="decoder"``, the official TF code's ``SegmentationHead``): from
  P_max, one stride-2 transposed 3x3 conv (no bias) -> BN -> activation per finer level, each
  concatenated with that BiFPN level; then a stride-2 transposed conv to the classes (stride
  2**(min_level - 1): 4 for P3..P7) and bilinear upsampling to the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..variants import ModelConfig
from .layers import SeparableConv, activation, batch_norm


def upsample_to(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of (B, K, h, w) logits to ``size`` = (H, W)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class PixelClassifierHead(nn.Module):
    """The paper's per-pixel classifier on the finest level (P2)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = cfg.fpn_channels
        for _ in range(cfg.seg_layers):
            layers += [SeparableConv(ch, cfg.seg_channels, bias=False, norm=True), activation(cfg.act)]
            ch = cfg.seg_channels
        self.convs = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(ch, cfg.seg_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, feats: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        return upsample_to(self.classifier(self.convs(feats[0])), size)


class _Up(nn.Module):
    """Stride-2 transposed 3x3 conv (output exactly twice the input) -> optional BN -> activation."""

    def __init__(self, in_ch: int, out_ch: int, act: str | None) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(in_ch, out_ch, 3, stride=2, padding=1, output_padding=1, bias=act is None)
        self.bn = batch_norm(out_ch) if act is not None else nn.Identity()
        self.act = activation(act) if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DecoderHead(nn.Module):
    """The official U-Net-like decoder over all feature-network levels."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        w = cfg.fpn_channels
        n = cfg.num_levels - 1  # one upsampling per finer level
        self.ups = nn.ModuleList(_Up(w if i == 0 else 2 * w, w, cfg.act) for i in range(n))
        self.classifier = _Up(2 * w if n else w, cfg.seg_classes, None)

    def forward(self, feats: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        x = feats[-1]
        for up, skip in zip(self.ups, reversed(feats[:-1])):
            x = up(x)[..., : skip.shape[-2], : skip.shape[-1]]  # odd sizes: ceil-halved levels
            x = torch.cat([x, skip], dim=1)
        return upsample_to(self.classifier(x), size)


def seg_head(cfg: ModelConfig) -> nn.Module:
    """The head ``cfg.seg_head`` names (``p2`` or ``decoder``)."""
    return PixelClassifierHead(cfg) if cfg.seg_head == "p2" else DecoderHead(cfg)
