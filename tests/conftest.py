"""Shared fixtures. Tests run offline: nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("EFFICIENTDET_OFFLINE", "1")

# Property tests: the same examples on every CI run (CI sets CI=true), so a red build is reproducible and
# a green one did not pass by luck of the draw; random exploration elsewhere. HYPOTHESIS_PROFILE overrides.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


def spread_class_scores(model: torch.nn.Module, bias: float | list[float], seed: int = 0) -> torch.nn.Module:
    """Give a randomly initialised model class scores that differ from anchor to anchor and image to image.

    In eval mode a fresh network's features shrink layer by layer (BatchNorm running statistics are still
    mean 0, variance 1), so the class predictor sees inputs of ~1e-4 and every anchor scores sigmoid(bias)
    up to ~1e-6: ties everywhere, and which of them survive NMS or ``max_det`` is arbitrary. Perturbing all
    weights and amplifying the predictor (weight std 100) spreads the scores; ``bias`` (one value, or one
    per predictor output) sets how many pass a threshold."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen).to(p) * 0.05)
        predict = model.class_net.predict.pw
        predict.weight.mul_(100.0 / float(predict.weight.std()))
        if isinstance(bias, list):
            predict.bias.copy_(torch.tensor(bias * (predict.bias.numel() // len(bias))))
        else:
            predict.bias.fill_(bias)
    return model


def make_photo(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A smooth, textured RGB image (not noise) so that resizing is meaningful."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.01, 0.08), rng.uniform(0.01, 0.08), rng.uniform(0, 6.28)
        img[..., c] = 127 + 100 * np.sin(xx * fx + ph) * np.cos(yy * fy)
    for _ in range(4):  # a few solid rectangles
        x0, y0 = rng.integers(0, width - 10), rng.integers(0, height - 10)
        img[y0 : y0 + rng.integers(5, height // 2), x0 : x0 + rng.integers(5, width // 2)] = rng.uniform(0, 255, 3)
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path)
    return path


def _photos(folder: Path) -> list[Path]:
    return [
        make_photo(folder / "wide.jpg", 320, 200, 1),
        make_photo(folder / "tall.png", 150, 260, 2),
        make_photo(folder / "square.jpg", 128, 128, 3),
    ]


@pytest.fixture
def photo_files(tmp_path: Path) -> list[Path]:
    """Three real image files of different sizes and formats."""
    return _photos(tmp_path)


@pytest.fixture(scope="session")
def session_photo_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The same three files, made once per session (for module- and session-scoped fixtures)."""
    return _photos(tmp_path_factory.mktemp("photos"))
