"""Inference-only graph simplification: fold every BatchNorm into the convolution before it.

An eval-mode ``BN(conv(x)) = γ (W x + b - μ) / sqrt(σ² + ε) + β`` is one convolution with weights
``W γ / sqrt(σ² + ε)`` and bias ``(b - μ) γ / sqrt(σ² + ε) + β``. :func:`fuse_model` returns a copy of
an :class:`~efficientdet.model.efficientdet.EfficientDet` in which

- every ``conv -> BatchNorm2d`` pair of the timm backbone (``conv_stem/bn1``, ``conv_pw/bn1``,
  ``conv_dw/bn2``, ``conv_pwl/bn3`` ...) becomes a conv with bias; timm's ``BatchNormAct2d`` keeps
  its activation (``bn`` -> ``act``);
- every :class:`~efficientdet.model.layers.SeparableConv` and
  :class:`~efficientdet.model.layers.Projection` loses its BN;
- every BiFPN fusion has its normalised weights computed once (:class:`FrozenFusion`);
- the heads, whose separable convs are shared across levels but followed by one BN per level, get
  one folded pointwise conv per (layer, level) (the depthwise conv stays shared).

The fused model computes the same function (to float rounding, ~1e-5) with fewer kernels and
no BN buffers. It is for inference only (no BN statistics left to train).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..model.efficientdet import EfficientDet
from ..model.feature_network import Fusion
from ..model.heads import Head
from ..model.layers import Projection, SeparableConv


@torch.no_grad()
def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Return ``conv`` (modified in place, given a bias if it had none) with eval-mode ``bn`` folded in."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
    bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    conv.weight.copy_(weight.to(conv.weight.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype))
    else:
        conv.bias.copy_(bias.to(conv.bias.dtype))
    return conv


def _bn_replacement(bn: nn.BatchNorm2d) -> nn.Module:
    """What is left of a BN after folding: nothing, or timm ``BatchNormAct2d``'s drop + activation."""
    act = getattr(bn, "act", None)
    drop = getattr(bn, "drop", None)
    parts = [m for m in (drop, act) if m is not None and not isinstance(m, nn.Identity)]
    if not parts:
        return nn.Identity()
    return parts[0] if len(parts) == 1 else nn.Sequential(*parts)


def _fuse_sequential_pairs(module: nn.Module) -> int:
    """Fold each BN child into the conv child registered just before it, recursively. Returns pairs folded."""
    count = 0
    previous: tuple[str, nn.Module] | None = None
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d) and previous is not None and isinstance(previous[1], nn.Conv2d):
            conv = previous[1]
            if conv.out_channels == child.num_features:
                fold_bn(conv, child)
                setattr(module, name, _bn_replacement(child))
                count += 1
        elif not isinstance(child, nn.BatchNorm2d):
            count += _fuse_sequential_pairs(child)
        previous = (name, child)
    return count


class FusedHead(nn.Module):
    """A :class:`Head` with its per-level BNs folded: shared depthwise convs, per-level pointwise convs.

    Input: list of per-level features (B, W, H_l, W_l); output: list of (B, A * num_outputs, H_l, W_l),
    identical to the source head's.
    """

    def __init__(self, head: Head) -> None:
        super().__init__()
        self.dws = nn.ModuleList()
        self.pws = nn.ModuleList()  # pws[layer][level]
        for conv, norms in zip(head.convs, head.norms):
            self.dws.append(copy.deepcopy(conv.dw))
            per_level = nn.ModuleList()
            for norm in norms:
                bn = norm.bn if hasattr(norm, "bn") else norm
                per_level.append(fold_bn(copy.deepcopy(conv.pw), bn))
            self.pws.append(per_level)
        self.act = copy.deepcopy(head.act)
        self.predict = copy.deepcopy(head.predict)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = []
        for level, x in enumerate(feats):
            for dw, pws in zip(self.dws, self.pws):
                x = self.act(pws[level](dw(x)))
            outputs.append(self.predict(x))
        return outputs


class FrozenFusion(nn.Module):
    """A BiFPN :class:`~efficientdet.model.feature_network.Fusion` with its weights normalised once (inference).

    ``sum(w_i * x_i)`` with the ``fast`` / ``softmax`` weights computed at fusion time as Python floats and
    accumulated in place into one new tensor: per node one multiply and one in-place add per further
    input, instead of the weight normalisation's small kernels plus a new tensor per product and sum.
    """

    def __init__(self, fusion: Fusion) -> None:
        super().__init__()
        w = fusion.normalized_weights(torch.float64)
        self.weights: list[float] | None = None if w is None else [float(v) for v in w.detach()]

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        if self.weights is None:
            out = inputs[0] + inputs[1]
            for x in inputs[2:]:
                out.add_(x)
            return out
        out = inputs[0] * self.weights[0]
        for x, w in zip(inputs[1:], self.weights[1:]):
            out.add_(x, alpha=w)
        return out


def fuse_model(model: EfficientDet) -> EfficientDet:
    """A BN-folded, eval-mode copy of ``model`` (the original is untouched).

    Same inputs and outputs as ``model.forward``: normalised (B, 3, H, W) -> per-level class and
    box maps. Keeps ``config``, ``class_names`` and ``category_ids``.
    """
    fused = copy.deepcopy(model).eval()
    for m in list(fused.modules()):
        if isinstance(m, SeparableConv) and isinstance(m.bn, nn.BatchNorm2d):
            fold_bn(m.pw, m.bn)
            m.bn = nn.Identity()
        elif isinstance(m, Projection) and isinstance(m.bn, nn.BatchNorm2d):
            fold_bn(m.conv, m.bn)
            m.bn = nn.Identity()
    for m in list(fused.modules()):
        for name, child in list(m.named_children()):
            if isinstance(child, Fusion):
                setattr(m, name, FrozenFusion(child))
    if fused.class_net is not None:  # segmentation-only networks have no detection heads
        fused.class_net = FusedHead(fused.class_net)  # type: ignore[assignment]
        fused.box_net = FusedHead(fused.box_net)  # type: ignore[assignment]
    _fuse_sequential_pairs(fused.backbone)
    for p in fused.parameters():
        p.requires_grad_(False)
    return fused


def count_batchnorms(model: nn.Module) -> int:
    """Number of BatchNorm layers left in ``model`` (0 after :func:`fuse_model`)."""
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
