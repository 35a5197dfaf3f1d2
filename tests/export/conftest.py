"""A tiny random EfficientDet checkpoint shared by the export tests (perturbed so outputs are informative)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from efficientdet import create_model
from efficientdet.weights import save_checkpoint


def tiny_model(seed: int = 0, image_size: int = 128) -> torch.nn.Module:
    """D0 backbone, 128 px input, 16-channel BiFPN with one layer, one head layer; BN stats randomised."""
    torch.manual_seed(seed)
    model = create_model("d0", image_size=image_size, fpn_channels=16, fpn_layers=1, head_layers=1).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * 0.05)
            if "class_net.predict.pw" in name:
                p.mul_(20.0)  # spread the scores so detections are not ties
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                b.normal_(0, 0.1)
        model.class_net.predict.pw.bias.normal_(-3.0, 1.0)  # scores spread over (0, 1), few above 0.5
    return model


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", tiny_model())


@pytest.fixture(scope="session")
def make_tiny_model():
    """The factory :func:`tiny_model` (seed -> model)."""
    return tiny_model
