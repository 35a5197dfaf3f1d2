"""Training-memory saver: BatchNorm + SiLU as one autograd node that keeps only the BN input.

A ``conv -> BN -> SiLU`` chain normally keeps three full-size tensors for the backward pass: the
BN input (conv output), the BN output (SiLU input) and the SiLU output (the next conv's input).
:class:`BatchNormSiLU2d` (timm backbones) and :func:`batch_norm_silu` (the heads) keep only the BN
input plus the per-channel batch statistics and recompute the normalised values in the backward
pass (two element-wise passes over one layer, cheap next to the convolutions): about a third less
activation memory in the EfficientNet backbone and the heads, with the same numbers (tested against
BN followed by SiLU, values and gradients).

The forward pass is aten's ``native_batch_norm`` (running statistics updated exactly as
``nn.BatchNorm2d`` does), so checkpoints, evaluation and export are unchanged; only training-mode
float32/float64 inputs take the new path.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.layers.norm_act import BatchNormAct2d
from torch import nn


class _BatchNormSiLUFunction(torch.autograd.Function):
    """``silu(batch_norm(x))`` in training mode, saving ``x`` and the batch mean / inverse std only."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        running_mean: torch.Tensor | None,
        running_var: torch.Tensor | None,
        momentum: float,
        eps: float,
    ) -> torch.Tensor:
        out, mean, invstd = torch.native_batch_norm(x, weight, bias, running_mean, running_var, True, momentum, eps)
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.eps = eps
        return F.silu(out, inplace=True)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, weight, bias, mean, invstd = ctx.saved_tensors
        # the BN output, recomputed in one pass: batch_norm with mean 0 / var 1 is x * scale + shift
        scale = invstd * weight
        shift = bias - mean * scale
        z = torch.batch_norm(x, scale, shift, torch.zeros_like(scale), torch.ones_like(scale), False, 0.0, 0.0, False)
        dz = torch.ops.aten.silu_backward(grad, z)
        del z
        need = ctx.needs_input_grad
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            dz, x, weight, None, None, mean, invstd, True, ctx.eps, [need[0], need[1], need[2]]
        )
        return gx, gw, gb, None, None, None, None


def _applies(bn: nn.Module, x: torch.Tensor) -> bool:
    """Training mode, batch statistics, affine weights, float input of the weights' dtype, not synced."""
    return (
        isinstance(bn, nn.BatchNorm2d)
        and not isinstance(bn, nn.SyncBatchNorm)
        and bn.training
        and bn.affine
        and torch.is_grad_enabled()
        and x.dtype == bn.weight.dtype
        and x.dtype in (torch.float32, torch.float64)
    )


def _apply(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    running = bn.track_running_stats
    return _BatchNormSiLUFunction.apply(
        x, bn.weight, bn.bias, bn.running_mean if running else None, bn.running_var if running else None,
        momentum, bn.eps,
    )


def batch_norm_silu(bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``silu(bn(x))``, with the memory-saving autograd node where it applies (training-mode float
    BatchNorm2d; autocast's bfloat16/float16 inputs and SyncBatchNorm take the plain ops)."""
    if _applies(bn, x):
        return _apply(bn, x)  # type: ignore[arg-type]
    return F.silu(bn(x))


class BatchNormSiLU2d(BatchNormAct2d):
    """timm ``BatchNormAct2d`` with a SiLU activation and no drop layer, using :func:`batch_norm_silu`.

    Installed by :func:`use_memory_efficient_norm_act` by swapping the class of existing modules: the
    parameters, buffers and state-dict keys stay the same; evaluation mode is timm's own forward.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _applies(self, x):
            return _apply(self, x)
        return super().forward(x)


def use_memory_efficient_norm_act(module: nn.Module) -> int:
    """Swap every timm ``BatchNormAct2d`` with a plain SiLU (and no drop) for :class:`BatchNormSiLU2d`.

    Returns the number of modules swapped. Other activations (ReLU6 in the Lite backbones) are left as
    they are.
    """
    count = 0
    for m in module.modules():
        if type(m) is BatchNormAct2d and type(m.act) is nn.SiLU and isinstance(m.drop, nn.Identity):
            m.__class__ = BatchNormSiLU2d
            count += 1
    return count
