"""Class and box heads: separable convs shared across levels, one BN per level."""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import SeparableConv, activation, batch_norm, variance_scaling_
from .norm_act import batch_norm_silu

PRIOR_PROBABILITY = 0.01


class Head(nn.Module):
    """``num_layers`` x (separable 3x3 -> per-level BN -> act), then a separable 3x3 predictor.

    Input: a list of per-level features (B, W, H_l, W_l). Output: a list of per-level maps
    (B, A * num_outputs, H_l, W_l), channel index = anchor * num_outputs + output.
    """

    def __init__(
        self, channels: int, num_layers: int, num_levels: int, num_outputs: int, act: str, conv_bias: bool
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            SeparableConv(channels, channels, bias=conv_bias, norm=False) for _ in range(num_layers)
        )
        # norms[layer][level]
        self.norms = nn.ModuleList(
            nn.ModuleList(batch_norm(channels) for _ in range(num_levels)) for _ in range(num_layers)
        )
        self.act = activation(act)
        self.predict = SeparableConv(channels, num_outputs, bias=True, norm=False)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = []
        silu = type(self.act) is nn.SiLU
        for level, x in enumerate(feats):
            for conv, norms in zip(self.convs, self.norms):
                # BN + SiLU as one autograd node in training (keeps only the BN input; model/norm_act.py)
                x = batch_norm_silu(norms[level], conv(x)) if silu else self.act(norms[level](conv(x)))
            outputs.append(self.predict(x))
        return outputs


def init_head(head: Head, prior_bias: bool) -> None:
    """Variance-scaling conv weights (depthwise and pointwise, as the official separable heads); zero
    biases; class predictor bias = -log((1 - π) / π), π = 0.01.

    Not Normal(0, 0.01), the rule for plain-conv heads: in a separable conv that makes the depthwise and
    the pointwise weights both tiny, so the predictor's output and gradients start near 0 and, with BN
    after the hidden layers, Adam's steps of ~lr are as large as the weights themselves. Measured on the
    demo set (BENCHMARKS.md): the class logits then never separate the classes.
    """
    for m in head.modules():
        if isinstance(m, nn.Conv2d):
            variance_scaling_(m)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    if prior_bias:
        nn.init.constant_(head.predict.pw.bias, -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))


def class_head(
    channels: int, num_layers: int, num_levels: int, num_anchors: int, num_classes: int, act: str, conv_bias: bool
) -> Head:
    head = Head(channels, num_layers, num_levels, num_anchors * num_classes, act, conv_bias)
    init_head(head, prior_bias=True)
    return head


def box_head(channels: int, num_layers: int, num_levels: int, num_anchors: int, act: str, conv_bias: bool) -> Head:
    head = Head(channels, num_layers, num_levels, num_anchors * 4, act, conv_bias)
    init_head(head, prior_bias=False)
    return head


def reset_class_head(head: Head, num_anchors: int, num_classes: int) -> None:
    """Replace the class predictor for a new number of classes (fine-tuning), prior-initialised."""
    old = head.predict
    channels = old.pw.in_channels
    head.predict = SeparableConv(channels, num_anchors * num_classes, bias=True, norm=False).to(old.pw.weight.device)
    head.predict.dw.load_state_dict(old.dw.state_dict())
    variance_scaling_(head.predict.pw)
    nn.init.constant_(head.predict.pw.bias, -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))
