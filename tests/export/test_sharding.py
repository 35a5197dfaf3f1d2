"""predict / eval under ``torchrun`` (2 gloo processes on the CPU) give one merged output equal to one process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from efficientdet import create_model
from efficientdet.cli import main
from efficientdet.data.synth import make_synthetic_dataset
from efficientdet.eval.coco import format_metrics
from efficientdet.inference.sharding import shard
from efficientdet.weights import save_checkpoint

SHAPES = ["circle", "square", "triangle", "cross"]


def test_shards_are_contiguous_and_cover_the_inputs_in_order():
    assert [shard(list(range(5)), r, 2) for r in range(2)] == [[0, 1], [2, 3, 4]]
    assert [shard(list("abc"), r, 4) for r in range(4)] == [[], ["a"], ["b"], ["c"]]  # r * 3 // 4 = 0, 0, 1, 2
    items = list(range(11))
    assert sum((shard(items, r, 3) for r in range(3)), []) == items


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("shard")
    torch.manual_seed(0)
    model = create_model("d0", num_classes=4, class_names=SHAPES, category_ids=[1, 3, 7, 12], image_size=128,
                         fpn_channels=16, fpn_layers=1, head_layers=1)
    with torch.no_grad():  # scores around 0.5: detections on every image
        model.class_net.predict.pw.bias.fill_(0.0)
    weights = save_checkpoint(root / "tiny.pt", model)
    data = make_synthetic_dataset(root / "data", num_train=0, num_val=5, seed=3)
    return weights, data


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "efficientdet", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_predict_with_two_processes_equals_one(tmp_path, setup):
    weights, data = setup
    common = [str(data["val_images"]), "--weights", str(weights), "--backend", "torch", "--score-threshold", "0.4",
              "--max-det", "7"]
    assert main(["predict", *common, "--json", str(tmp_path / "one.json"), "--out", str(tmp_path / "one")]) == 0
    run = torchrun(["predict", *common, "--json", str(tmp_path / "two.json"), "--out", str(tmp_path / "two")], tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "5 image(s)" in run.stdout and "from 2 processes" in run.stdout
    assert run.stdout.count("ms inference") == 5  # each image once, by one of the processes
    one, two = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert one and one == two  # same records, same order
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(files) == 5 and files == sorted(p.name for p in (tmp_path / "two").iterdir())
    for name in files:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_eval_with_two_processes_equals_one(tmp_path, setup):
    weights, data = setup
    common = ["--images", str(data["val_images"]), "--annotations", str(data["val_annotations"]), "--weights",
              str(weights), "--backend", "torch", "--batch-size", "2"]
    assert main(["eval", *common, "--json", str(tmp_path / "m1.json"), "--save-predictions",
                 str(tmp_path / "d1.json")]) == 0
    run = torchrun(["eval", *common, "--json", str(tmp_path / "m2.json"), "--save-predictions",
                    str(tmp_path / "d2.json")], tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    d1, d2 = json.loads((tmp_path / "d1.json").read_text()), json.loads((tmp_path / "d2.json").read_text())
    assert len({d["image_id"] for d in d1}) == 5 and d1 == d2
    m1, m2 = json.loads((tmp_path / "m1.json").read_text()), json.loads((tmp_path / "m2.json").read_text())
    assert m1 == m2
    assert run.stdout.count(format_metrics(m1)) == 1  # printed once, by rank 0


def _ordered_build(rank: int, world: int, log: str, port: int) -> None:
    import time

    import torch.distributed as dist

    from efficientdet.inference.sharding import rank_zero_first

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)

    def build() -> int:
        with open(log, "a") as f:
            f.write(f"{rank} start\n")
        time.sleep(0.5 if rank == 0 else 0.0)  # rank 0 is the slow one: without the barrier rank 1 would start first
        with open(log, "a") as f:
            f.write(f"{rank} end\n")
        return rank

    assert rank_zero_first(rank, world, build) == rank
    dist.destroy_process_group()


def test_rank_zero_builds_first(tmp_path):
    """Rank 0 exports and measures (the cached file, the bf16 probe's memo) before the other ranks build,
    so they read its choice instead of measuring on their own."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "order.txt"
    mp.spawn(_ordered_build, args=(2, str(log), port), nprocs=2, join=True)
    lines = log.read_text().splitlines()
    assert lines == ["0 start", "0 end", "1 start", "1 end"]
