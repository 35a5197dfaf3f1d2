"""Whole-command time per image: ``efficientdet predict DIR --out OUT`` vs effdet's own loop, same run.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/predict_command.py --small 6 --large 18 --rounds 2 [--json out.json]

D0 at 512, the same random "trained-like" weights for both (see bench/inference.py), 640x480 JPEG
photos-like images. Ours: the command as a user runs it (a fresh process, default options, the
onnxruntime export already cached by a first run), on folders of ``--small`` and ``--large`` images;
the per-image time is the marginal one, (t_large - t_small) / (large - small), so start-up is left
out. effdet: decode (PIL) -> ``transforms_coco_eval`` -> ``DetBenchPredict`` -> drawing the boxes ->
JPEG encode, per image, in this process. Rounds alternate ours and effdet; medians are reported
with the load average (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=6)
    parser.add_argument("--large", type=int, default=18)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="effdet's PyTorch threads (ours: the default)")
    parser.add_argument("--extra", default="", help="options added to ours' command, e.g. '--precision fp32'")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import numpy as np
    import torch
    from PIL import Image, ImageDraw

    sys.path.insert(0, str(Path(__file__).parent))
    from inference import effdet_parts

    from efficientdet.inference.precision import cpu_info

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    folders = {n: tmp / f"images{n}" for n in (args.small, args.large)}
    for n, folder in folders.items():
        folder.mkdir()
        for i in range(n):
            yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
            img = 127 + 100 * np.sin(xx * rng.uniform(0.01, 0.05) + yy * rng.uniform(0.01, 0.05))[..., None]
            img = np.repeat(img, 3, axis=2) + rng.normal(0, 10, (480, 640, 3))
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{i:03d}.jpg", quality=90)
    torch.manual_seed(0)
    net, effdet_run = effdet_parts(512)
    weights = tmp / "d0.pth"
    torch.save(net.state_dict(), weights)
    env = dict(os.environ, HF_HUB_OFFLINE="1", EFFICIENTDET_CACHE=str(tmp / "cache"))

    def ours(n: int) -> float:
        out = tmp / f"out{n}"
        cmd = [sys.executable, "-m", "efficientdet", "predict", str(folders[n]), "--model", "d0", "--weights",
               str(weights), "--out", str(out), *args.extra.split()]
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        return time.perf_counter() - t0

    def effdet(n: int) -> float:
        out = tmp / f"effdet_out{n}"
        out.mkdir(exist_ok=True)
        t0 = time.perf_counter()
        for path in sorted(folders[n].iterdir()):
            img = Image.open(path).convert("RGB")
            dets = effdet_run(img)[0]
            draw = ImageDraw.Draw(img)
            for x0, y0, x1, y1, score, _ in dets.tolist():
                if score >= 0.25:
                    draw.rectangle((x0, y0, x1, y1), outline=(255, 0, 0), width=2)
            img.save(out / path.name)
        return (time.perf_counter() - t0) / n

    ours(args.small)  # first run: exports into the cache
    res: dict = {"cpu": cpu_info().name, "load_before": os.getloadavg(), "small": args.small, "large": args.large,
                 "ours_ms_per_image": [], "effdet_ms_per_image": [], "ours_startup_s": []}
    for _ in range(args.rounds):
        t_small, t_large = ours(args.small), ours(args.large)
        per = (t_large - t_small) / (args.large - args.small)
        res["ours_ms_per_image"].append(per * 1e3)
        res["ours_startup_s"].append(t_small - per * args.small)
        res["effdet_ms_per_image"].append(effdet(args.small) * 1e3)
    res["load_after"] = os.getloadavg()
    o, e = statistics.median(res["ours_ms_per_image"]), statistics.median(res["effdet_ms_per_image"])
    res["ratio"] = o / e
    print(f"{res['cpu']}: predict --out {o:.0f} ms/image (marginal), effdet loop {e:.0f} ms/image, ratio {o / e:.2f}; "
          f"start-up {statistics.median(res['ours_startup_s']):.1f} s; load {res['load_before'][0]:.1f} -> "
          f"{res['load_after'][0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
