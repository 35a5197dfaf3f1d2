"""CPU inference kernels: convolutions with their activation fused, and no padding copies.

Applied by the :class:`~efficientdet.inference.detector.Detector` to its BN-folded inference copy when it runs on
the CPU (never to a model that trains or is exported). Two rewrites, each exact to float rounding:

- ``conv -> SiLU`` (and ``conv -> Sigmoid``, the squeeze-excite gate) become one oneDNN convolution
  with the activation as a post-op (``torch.ops.mkldnn._convolution_pointwise``, the kernel
  ``torch.compile`` uses on CPU): the activation is applied while the output is still in cache
  instead of in a second pass over memory.
- timm's ``Conv2dSame`` (TF "same" padding, stride 2: one extra row/column at the bottom/right on
  even sizes) pads its input with a copy on every call. A stride-s convolution with asymmetric
  padding ``(p, p + 1)`` equals the convolution with symmetric padding ``p + 1`` whose kernel has
  one extra leading row/column of zeros: the windows start one pixel earlier and that pixel is
  multiplied by 0. The kernel is expanded once per input-size parity, so there is no per-call copy.
- the heads' per-level pointwise convs (:class:`~efficientdet.inference.fuse.FusedHead`) take their shared
  activation as a post-op too.

Measured on the 2-core CPU (D0, 512x512, batch 1), together with the copy-free max pooling of
:func:`~efficientdet.model.layers.max_pool_same`: the BN-folded network went from ~65 to ~60 ms in one
A/B run (BENCHMARKS.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..model.layers import same_padding
from .fuse import FusedHead

_ATTRS = {nn.SiLU: "swish", nn.Sigmoid: "sigmoid", nn.ReLU: "relu"}


def mkldnn_available() -> bool:
    """Whether this torch build has oneDNN and the fused convolution operator."""
    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    except (AttributeError, RuntimeError):
        return False


class FusedConv2d(nn.Module):
    """Inference-only 2-D convolution + optional activation in one oneDNN call (CPU, float32).

    Args:
        conv: the source ``nn.Conv2d`` (or timm ``Conv2dSame``; its weights are shared, not copied).
        activation: ``"none"``, ``"swish"``, ``"sigmoid"`` or ``"relu"``.
        same: compute TF "same" padding from the input size (timm ``Conv2dSame``) instead of the
            conv's static padding.
    Input (B, C_in, H, W), any memory format; output (B, C_out, H', W') as the source conv + activation.
    """

    def __init__(self, conv: nn.Conv2d, activation: str = "none", same: bool = False) -> None:
        super().__init__()
        if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
            raise ValueError("FusedConv2d needs numeric zero padding")
        self.weight = conv.weight
        self.bias = conv.bias
        self.stride = list(conv.stride)
        self.dilation = list(conv.dilation)
        self.groups = conv.groups
        self.padding = list(conv.padding)
        self.activation = activation
        self.same = same
        self._expanded: dict[tuple[int, int], torch.Tensor] = {}

    def _kernel(self, odd_h: int, odd_w: int) -> torch.Tensor:
        """The weight with a leading zero row (odd total padding in H) and/or column (in W)."""
        if not (odd_h or odd_w):
            return self.weight
        key = (odd_h, odd_w)
        if key not in self._expanded:
            if self.dilation != [1, 1]:
                raise ValueError("asymmetric 'same' padding with dilation is not supported")
            with torch.no_grad():
                self._expanded[key] = F.pad(self.weight.detach(), [odd_w, 0, odd_h, 0]).contiguous()
        return self._expanded[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, padding = self.weight, self.padding
        if self.same:
            kh, kw = self.weight.shape[-2:]
            ph = same_padding(int(x.shape[-2]), kh, self.stride[0], self.dilation[0])
            pw = same_padding(int(x.shape[-1]), kw, self.stride[1], self.dilation[1])
            weight = self._kernel(ph % 2, pw % 2)
            padding = [(ph + 1) // 2, (pw + 1) // 2]
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, self.bias, padding, self.stride, self.dilation, self.groups, self.activation, [], ""
        )


def _is_same_conv(module: nn.Module) -> bool:
    """timm's ``Conv2dSame`` (dynamic TF padding), recognised by name so timm stays an optional detail."""
    return type(module).__name__ == "Conv2dSame" and isinstance(module, nn.Conv2d)


def fuse_conv_activations(module: nn.Module) -> int:
    """Rewrite ``module`` in place for CPU inference (see the module docstring). Returns convs rewritten.

    A conv is fused with an activation when the activation is the very next child registered in the
    same parent (the order timm and this package call them in: ``conv_pw``/``bn1``, ``conv_dw``/``bn2``,
    ``conv_reduce``/``act1``, ``conv_expand``/``gate`` after BN folding); timm's ``Conv2dSame`` becomes
    a :class:`FusedConv2d` without padding copies; other convs stay (aten's kernel is as fast). Only for
    models whose children run in registration order
    (tested against the unfused model for D0 and Lite0).
    """
    if isinstance(module, FusedHead):  # per-level pointwise conv -> shared activation: one kernel each
        attr = _ATTRS.get(type(module.act))
        if attr is None:
            return 0
        for per_level in module.pws:
            for i, pw in enumerate(per_level):
                per_level[i] = FusedConv2d(pw, attr)
        module.act = nn.Identity()
        return sum(len(p) for p in module.pws)
    count = 0
    children = list(module.named_children())
    skip_next = False
    for i, (name, child) in enumerate(children):
        if skip_next:
            skip_next = False
            continue
        if isinstance(child, nn.Conv2d) and child.padding_mode == "zeros" and isinstance(child.padding, tuple):
            nxt = children[i + 1][1] if i + 1 < len(children) else None
            attr = _ATTRS.get(type(nxt)) if nxt is not None else None
            same = _is_same_conv(child)
            if attr is None and not same:
                continue  # a plain conv: aten's kernel is as fast (faster on small maps)
            setattr(module, name, FusedConv2d(child, attr or "none", same=same))
            if attr is not None:
                setattr(module, children[i + 1][0], nn.Identity())
                skip_next = True
            count += 1
        else:
            count += fuse_conv_activations(child)
    return count
