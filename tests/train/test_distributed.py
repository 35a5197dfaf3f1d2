"""2 CPU processes under torchrun (gloo) vs 1 process with the same global batch.

Why the results can match: ``--batch-size`` is global, rank r takes the r-th half of every global
batch (same images, same augmentation seeds as the single process), DDP averages gradients, and the
loss of each rank is normalised by the positives of the *global* batch (all-reduced), so the averaged
gradient is the single-process gradient. What would differ is BatchNorm in train mode (statistics of
2 images vs 4) and stochastic depth (different random masks), so this test trains with
``--freeze-bn`` (BN uses its running statistics, per-image computation is independent of the batch)
and ``backbone_drop_path=0``. The remaining difference is float summation order (gradient all-reduce,
loss sums over half batches), hence a tolerance instead of bit equality.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

from efficientdet.train.trainer import train
from efficientdet.weights import load_checkpoint

from .conftest import cli_args, tiny_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")
def test_two_processes_match_one(tiny_data, tmp_path) -> None:
    out2 = tmp_path / "two"
    args = cli_args(tiny_data, out2, "--freeze-bn", "--epochs", "1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "efficientdet", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr

    one = train(tiny_config(tiny_data, tmp_path / "one", val=False, epochs=1, freeze_bn=True, deterministic=False))
    a, b = load_checkpoint(out2 / "weights" / "last.pt"), load_checkpoint(one.last)
    assert a.extra["train"]["step"] == b.extra["train"]["step"] == 2
    raw_a, raw_b = a.extra["train"]["model"], b.extra["train"]["model"]
    for key in raw_b:
        if raw_b[key].is_floating_point():
            torch.testing.assert_close(raw_a[key], raw_b[key], rtol=1e-4, atol=1e-6, msg=key)
    for key in b.state_dict:  # EMA weights too
        if b.state_dict[key].is_floating_point():
            torch.testing.assert_close(a.state_dict[key], b.state_dict[key], rtol=1e-4, atol=1e-6, msg=key)
    # the 2 steps moved the weights far more than the tolerance (not two copies of the initialisation)
    from efficientdet.factory import create_model

    from .conftest import TINY

    torch.manual_seed(0)
    init_model = create_model("efficientdet_d0", num_classes=4, image_size=128, **TINY).state_dict()
    moved = max((raw_b[k] - init_model[k]).abs().max().item() for k in raw_b if raw_b[k].is_floating_point())
    differ = max((raw_a[k] - raw_b[k]).abs().max().item() for k in raw_b if raw_b[k].is_floating_point())
    assert moved > 1e-3 and differ < moved * 1e-3, (moved, differ)
