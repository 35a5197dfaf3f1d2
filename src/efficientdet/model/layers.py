"""Small building blocks shared by the feature network and the heads."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # PyTorch convention (TF's 0.99)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def activation(name: str) -> nn.Module:
    """``silu`` (swish), ``relu6`` (Lite) or ``relu``."""
    return {"silu": nn.SiLU, "relu6": nn.ReLU6, "relu": nn.ReLU}[name](inplace=True)


def variance_scaling_(conv: nn.Conv2d) -> torch.Tensor:
    """TF's ``variance_scaling`` initializer (scale 1, fan_in, truncated normal within 2 std) in place:
    std sqrt(1 / fan_in) with fan_in = all input channels x kernel area, as TF counts a depthwise kernel
    (kh, kw, C, 1). The official heads initialise both parts of their separable convolutions this way."""
    w = conv.weight
    fan_in = max(1, w.shape[1] * conv.groups * w[0][0].numel())
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978  # the std of a unit normal truncated at +-2
    return nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std)


class SeparableConv(nn.Module):
    """Depthwise 3x3 (no bias) -> pointwise 1x1 (optional bias) -> optional BN. No activation.

    A 3x3 stride-1 convolution with TF "same" padding pads 1 on every side, so plain padding=1
    matches the TF checkpoints.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool, norm: bool) -> None:
        super().__init__()
        self.dw = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.pw = nn.Conv2d(in_channels, out_channels, 1, bias=bias)
        self.bn = batch_norm(out_channels) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pw(self.dw(x)))


class Projection(nn.Module):
    """1x1 conv + BN that brings a feature map to the feature-network width."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=bias)
        self.bn = batch_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> int:
    """TF "same" total padding along one dimension: output = ceil(size / stride); TF puts the smaller
    half (``total // 2``) first."""
    return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


def max_pool_same(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-2 max pooling with TF "same" padding: output = ceil(input / 2).

    TF pads ``total = max((ceil(n/2) - 1) * 2 + 3 - n, 0)`` with the smaller half first, i.e. only
    on the bottom/right for even sizes; PyTorch's symmetric ``padding=1`` would shift the windows.
    Instead of padding with a copy, the pool uses ``padding = total // 2`` on both sides and
    ``ceil_mode``: the extra bottom/right window then reads one row/column past the input, which
    max pooling ignores, exactly like TF's -inf padding (output size and windows are identical).
    """
    ph, pw = same_padding(int(x.shape[-2]), 3, 2), same_padding(int(x.shape[-1]), 3, 2)
    return F.max_pool2d(x, 3, 2, padding=(ph // 2, pw // 2), ceil_mode=True)
