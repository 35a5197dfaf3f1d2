"""Same-run A/B of the inference path of two checkouts (for a refactor: "no slowdown").

Each round runs every tree in its own process (``PYTHONPATH=<tree>/src``), alternating, on the same
weights and image: D0 end to end through the PyTorch ``Detector`` (score threshold 0.001), the network
alone, and the torch-free deployment path (``deploy.OnnxModel`` on an ``--nms`` export).

    python bench/compare_trees.py OLD_TREE NEW_TREE [--rounds 3] [--runs 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SNIPPET = r"""
import json, statistics, sys, time
import torch
torch.set_num_threads(THREADS)
from efficientdet import Detector
try:
    from efficientdet.benchmark import sample_image
except ImportError:  # trees before the restructure
    from efficientdet.export.benchmark import sample_image
img = sample_image()
det = Detector("d0", weights=WEIGHTS, score_threshold=0.001)
def t(fn):
    for _ in range(3): fn()
    out = []
    for _ in range(RUNS):
        t0 = time.perf_counter(); fn(); out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(out)
res = {"torch_e2e_ms": t(lambda: det(img))}
from efficientdet.export.onnx import export_onnx
model = det.model
export_onnx(model, ONNX, nms=True, score_threshold=0.001)
from efficientdet.deploy import OnnxModel
dep = OnnxModel(ONNX, threads=THREADS)
res["deploy_e2e_ms"] = t(lambda: dep(img))
res["detections"] = len(det(img)[0])
print(json.dumps(res))
"""


def run_tree(tree: Path, weights: Path, onnx: Path, runs: int, threads: int) -> dict:
    code = (SNIPPET.replace("THREADS", str(threads)).replace("RUNS", str(runs))
            .replace("WEIGHTS", repr(str(weights))).replace("ONNX", repr(str(onnx))))
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{tree}: the timing process failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp())
    weights = tmp / "d0.pt"
    env = {**os.environ, "PYTHONPATH": str(args.new / "src")}
    subprocess.run([sys.executable, "-c", "import torch; torch.manual_seed(0); from efficientdet import create_model; "
                    f"from efficientdet.weights import save_checkpoint; save_checkpoint({str(weights)!r}, "
                    "create_model('d0'))"], env=env, check=True)
    results: dict[str, list[dict]] = {"old": [], "new": []}
    for r in range(args.rounds):
        for name in (("old", "new") if r % 2 == 0 else ("new", "old")):
            tree = args.old if name == "old" else args.new
            results[name].append(run_tree(tree, weights, tmp / f"{name}.onnx", args.runs, args.threads))
            print(name, results[name][-1], flush=True)
    summary = {name: {k: statistics.median(x[k] for x in rows) for k in rows[0]} for name, rows in results.items()}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
