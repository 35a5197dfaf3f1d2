"""Model size and cost measured from the model itself: parameters and FLOPs (multiply-adds)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .model.efficientdet import EfficientDet, count_parameters
from .variants import ModelConfig


def measure(config: ModelConfig, image_size: int | None = None) -> dict[str, int]:
    """Parameters and multiply-adds of one forward pass at batch 1, computed on the meta device.

    FLOPs follow the paper's convention: multiply-adds of convolutions and matrix products
    (PyTorch's flop counter reports 2 per multiply-add; we halve it). Nothing is allocated.
    """
    size = image_size or config.image_size
    with torch.device("meta"):
        model = EfficientDet(config).eval()
        x = torch.empty(1, 3, size, size)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(x)
    return {"params": count_parameters(model), "flops": counter.get_total_flops() // 2}
