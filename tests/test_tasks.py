"""``weights_task``: what a checkpoint does, decided once with PyTorch and then remembered without it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from efficientdet import create_model
from efficientdet.inference.tasks import DETECT, JOINT, SEGMENT, weights_task
from efficientdet.weights import save_checkpoint

SRC = str(Path(__file__).resolve().parents[1] / "src")
SMALL = dict(image_size=128, fpn_channels=16, fpn_layers=1)


def _torch_free_task(path: Path, cache: Path) -> str:
    """``weights_task(path)`` in a fresh interpreter; fails if it imported PyTorch."""
    code = ("import sys; from efficientdet.inference.tasks import weights_task; t = weights_task(sys.argv[1]); "
            "assert 'torch' not in sys.modules, 'imported torch'; print(t)")
    env = {**os.environ, "PYTHONPATH": SRC, "EFFICIENTDET_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def test_weights_task_is_remembered_without_torch(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("EFFICIENTDET_CACHE", str(cache))
    torch.manual_seed(0)
    det = save_checkpoint(tmp_path / "det.pt", create_model("d0", num_classes=2, head_layers=1, **SMALL))
    seg = save_checkpoint(tmp_path / "seg.pt", create_model("d0_seg", seg_classes=3, seg_channels=16, seg_layers=1,
                                                            **SMALL))
    joint = save_checkpoint(tmp_path / "joint.pt", create_model("d0", num_classes=2, head_layers=1, seg_head="decoder",
                                                                seg_classes=3, **SMALL))
    assert [weights_task(p) for p in (det, seg, joint)] == [DETECT, SEGMENT, JOINT]
    assert len(list((cache / "tasks").iterdir())) == 3
    # the next process decides from the memo, without importing PyTorch
    assert [_torch_free_task(p, cache) for p in (det, seg, joint)] == [DETECT, SEGMENT, JOINT]
    # a file rewritten with another model under the same name is looked at again
    save_checkpoint(seg, create_model("d0", num_classes=2, head_layers=1, **SMALL))
    os.utime(seg, ns=(1, 1))  # a different modification time even on a coarse-clock file system
    assert weights_task(seg) == DETECT
    assert weights_task(None) == DETECT
