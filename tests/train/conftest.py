"""Tiny synthetic data and a tiny model so the training tests run in seconds on 2 CPU cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY = {"fpn_channels": 16, "fpn_layers": 1, "head_layers": 1, "backbone_drop_path": 0.0}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from efficientdet.data import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synth")
    return make_synthetic_dataset(root, num_train=8, num_val=4, image_size=((128, 160), (128, 160)), seed=0,
                                  min_object_size=10, png_every=0)


def tiny_config(data: dict[str, Path], out: Path, val: bool = True, **changes):
    """A 128 px d0 with a 16-channel single-layer BiFPN: 2 steps per epoch at batch 4."""
    from efficientdet.train.config import TrainConfig

    base = dict(
        train_images=str(data["train_images"]), train_annotations=str(data["train_annotations"]),
        val_images=str(data["val_images"]) if val else None,
        val_annotations=str(data["val_annotations"]) if val else None,
        model="efficientdet_d0", image_size=128, model_overrides=dict(TINY), epochs=2, batch_size=4, lr=0.02,
        amp=False, workers=0, out=str(out), progress=False, tensorboard=False, plots=False, deterministic=True,
        recipe="official", anchors="default",
    )
    base.update(changes)
    return TrainConfig(**base)


def cli_args(data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """The command-line equivalent of :func:`tiny_config` without validation data."""
    args = ["train", "--model", "efficientdet_d0", "--train-images", str(data["train_images"]),
            "--train-annotations", str(data["train_annotations"]), "--image-size", "128", "--epochs", "2",
            "--batch-size", "4", "--lr", "0.02", "--no-amp", "--workers", "0", "--out", str(out), "--no-progress",
            "--no-tensorboard", "--no-plots", "--recipe", "official", "--anchors", "default"]
    for k, v in TINY.items():
        args += ["--model-override", f"{k}={v}"]
    return [*args, *extra]
