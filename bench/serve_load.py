"""Load test of ``efficientdet serve``: throughput and latency with 1, 8 and 32 concurrent clients.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/serve_load.py --requests 48 --clients 1,8,32 --batches 8,1

For each ``--max-batch`` setting a real ``efficientdet serve`` process runs a random-init EfficientDet-D0
(90 classes, 512 px; weights do not change the work, only the number of boxes) on 127.0.0.1; after a few
warm-up requests, C clients (asyncio + httpx, one connection each) send JPEG photos (640x480) to
``POST /v1/detect`` back to back until ``--requests`` answers have come. Reports images/s, p50/p95/p99
latency, errors (anything but 200) and the server's peak RSS (VmHWM, cumulative over the server's life),
plus the mean forward-pass batch size from ``/metrics``. Results as a Markdown table and ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

SRC = str(Path(__file__).resolve().parents[1] / "src")


def photo(width: int, height: int, seed: int) -> bytes:
    """A smooth, textured JPEG (not noise), as the tests make them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.01, 0.08), rng.uniform(0.01, 0.08), rng.uniform(0, 6.28)
        img[..., c] = 127 + 100 * np.sin(xx * fx + ph) * np.cos(yy * fy)
    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_weights(folder: Path) -> Path:
    import torch

    from efficientdet import create_model
    from efficientdet.weights import save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(folder / "d0_random.pt", create_model("d0", num_classes=90))


def start_server(weights: Path, max_batch: int, max_wait_ms: float) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "efficientdet", "serve", "--weights", str(weights), "--port", "0",
                             "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--log-level",
                             "warning"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    url = proc.stdout.readline().split("serving on ", 1)[1].split()[0]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become ready")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def batch_stats(url: str) -> tuple[float, float]:
    """(forward passes, images) so far, from the server's /metrics."""
    passes = images = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("efficientdet_batch_size_count"):
            passes = float(line.split()[-1])
        elif line.startswith("efficientdet_batch_size_sum"):
            images = float(line.split()[-1])
    return passes, images


async def load(url: str, images: list[bytes], clients: int, requests: int) -> dict:
    latencies: list[float] = []
    errors = 0
    issued = 0

    async def client(k: int) -> None:
        nonlocal issued, errors
        async with httpx.AsyncClient(timeout=300) as http:
            while issued < requests:
                issued += 1
                data = images[(issued + k) % len(images)]
                t0 = time.perf_counter()
                try:
                    res = await http.post(f"{url}/v1/detect", content=data)
                    ok = res.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t0)
                errors += not ok

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    wall = time.perf_counter() - t0
    q = np.percentile(np.asarray(latencies) * 1e3, [50, 95, 99])
    return {"clients": clients, "requests": len(latencies), "errors": errors, "seconds": round(wall, 2),
            "images_per_s": round(len(latencies) / wall, 2), "p50_ms": round(float(q[0]), 1),
            "p95_ms": round(float(q[1]), 1), "p99_ms": round(float(q[2]), 1),
            "mean_ms": round(statistics.fmean(latencies) * 1e3, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=48, help="answers per setting (default 48)")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--batches", default="8,1", help="--max-batch settings to compare (default 8,1)")
    ap.add_argument("--max-wait-ms", type=float, default=10.0)
    ap.add_argument("--json", help="write the rows as JSON")
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    images = [photo(640, 480, seed) for seed in range(8)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = make_weights(Path(tmp))
        for max_batch in (int(b) for b in args.batches.split(",")):
            proc, url = start_server(weights, max_batch, args.max_wait_ms)
            try:
                asyncio.run(load(url, images, 2, 6))  # warm-up: first calls of every code path
                for c in clients:
                    before = batch_stats(url)
                    row = asyncio.run(load(url, images, c, args.requests))
                    after = batch_stats(url)
                    row["max_batch"] = max_batch
                    row["mean_batch"] = round((after[1] - before[1]) / max(1.0, after[0] - before[0]), 2)
                    row["peak_rss_mb"] = round(peak_rss_mb(proc.pid))
                    row["load_avg_1min"] = round(os.getloadavg()[0], 1)  # other processes on the machine
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                proc.terminate()
                proc.wait(120)
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    print(f"\nEfficientDet-D0 (random init, 90 classes, 512 px), 640x480 JPEGs, {os.cpu_count()} cores: {cpu}\n")
    print("| --max-batch | clients | requests | images/s | p50 ms | p95 ms | p99 ms | errors | mean batch "
          "| server peak RSS MB | load avg |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['max_batch']} | {r['clients']} | {r['requests']} | {r['images_per_s']} | {r['p50_ms']} | "
              f"{r['p95_ms']} | {r['p99_ms']} | {r['errors']} | {r['mean_batch']} | {r['peak_rss_mb']} | "
              f"{r['load_avg_1min']} |")
    for max_batch in sorted({r["max_batch"] for r in rows}, reverse=True):
        mine = {r["clients"]: r for r in rows if r["max_batch"] == max_batch}
        if 1 in mine and max(mine) > 1:
            top = mine[max(mine)]
            print(f"--max-batch {max_batch}: {max(mine)} clients / 1 client throughput = "
                  f"{top['images_per_s'] / mine[1]['images_per_s']:.2f}x, p99/p50 = "
                  f"{top['p99_ms'] / top['p50_ms']:.2f}, errors {top['errors']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
