"""Video prediction throughput: the whole loop (decode -> detect -> draw -> encode + JSON Lines) vs the network.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/video_pipeline.py --frames 60 --rounds 3 --json bench/video_pipeline.json

Generates a 1280x720 H.264 clip (moving rectangles on a textured background), builds a random-init full
D0 (512 px, 90 classes; its class predictor scaled so that a handful of boxes per frame pass the 0.25
threshold, so drawing has work to do) and measures, alternating in each round:

- network: ``Detector.forward_network`` on already-preprocessed frames (the network's own rate);
- detector: ``Detector(images)`` on already-decoded frames (preprocess + network + post-processing);
- sequential: ``predict_video(..., pipelined=False)`` with ``--out`` and ``--json`` (one step after the other);
- pipelined: ``predict_video(...)`` (decode + preprocess and draw + encode in threads beside the network);
- command: ``efficientdet predict CLIP --out --json`` in a subprocess (its printed frames/s; loading excluded).

Reports medians over the rounds and the ratio of each end-to-end rate to the network rate (target >= 0.85).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_clip(path: Path, frames: int, width: int = 1280, height: int = 720, fps: int = 30) -> Path:
    import av

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    background = np.stack([127 + 90 * np.sin(xx * 0.013 + c) * np.cos(yy * 0.021 + 2 * c) for c in range(3)], -1)
    boxes = [(rng.integers(0, width - 200), rng.integers(0, height - 150), rng.integers(60, 200), rng.integers(50, 150),
              rng.uniform(0, 255, 3), rng.integers(-9, 9), rng.integers(-6, 6)) for _ in range(8)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            img = background.copy()
            for x, y, w, h, color, dx, dy in boxes:
                x0, y0 = int(x + dx * i) % (width - w), int(y + dy * i) % (height - h)
                img[y0 : y0 + h, x0 : x0 + w] = color
            frame = av.VideoFrame.from_ndarray(img.clip(0, 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def build_model(frame, boxes: int):
    """Random D0 whose class logits on ``frame`` put about ``boxes`` (anchor, class) pairs above 0.25."""
    import torch

    from efficientdet import create_model
    from efficientdet.preprocess import preprocess_batch

    torch.manual_seed(0)
    model = create_model("d0", num_classes=90).eval()
    batch, _ = preprocess_batch([frame], 512, model.config.mean, model.config.std, channels_last=False)
    with torch.no_grad():
        predict = model.class_net.predict.pw
        predict.weight.normal_(0, 1.0)
        predict.bias.zero_()
        logits = torch.cat([o.flatten() for o in model(batch.contiguous())[0]])
        predict.weight.mul_(1.0 / float(logits.std()))  # logits ~ N(0, 1) ...
        kth = float(torch.topk(logits / logits.std(), boxes).values[-1])
        predict.bias.fill_(-1.0986 - kth)  # ... shifted so the boxes-th largest scores 0.25
    return model


def cpu_name() -> str:
    """The CPU's model name, as BENCHMARKS.md names every figure's machine (the library's probe)."""
    from efficientdet.inference.precision import cpu_info

    return cpu_info().name


def stages(clip: Path, detector, images: list, work: Path) -> dict[str, float]:
    """Median wall time per frame of each step of the loop, one after the other (where the time goes)."""
    from efficientdet.video import VideoWriter, frame_record, open_source
    from efficientdet.visualize import draw_detections

    times: dict[str, list[float]] = {k: [] for k in ("decode", "preprocess", "network", "postprocess", "draw",
                                                      "encode", "json")}
    with open_source(clip) as src, VideoWriter(work / "stages.mp4", src.width, src.height, src.fps) as writer:
        frames = iter(src)
        while True:
            t0 = time.perf_counter()
            frame = next(frames, None)
            if frame is None:
                break
            t1 = time.perf_counter()
            prepared = detector.prepare([frame.image])
            det = detector.detect_prepared(prepared)[0]
            t2 = time.perf_counter()
            drawn = draw_detections(frame.image, det)
            t3 = time.perf_counter()
            writer.write(drawn)
            t4 = time.perf_counter()
            json.dumps(frame_record(frame.index, frame.time_s, det))
            t5 = time.perf_counter()
            for key, value in (("decode", t1 - t0), ("preprocess", prepared.preprocess_s),
                               ("network", det.timings["inference_ms"] / 1e3),
                               ("postprocess", det.timings["postprocess_ms"] / 1e3), ("draw", t3 - t2),
                               ("encode", t4 - t3), ("json", t5 - t4)):
                times[key].append(value * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--boxes", type=int, default=30, help="(anchor, class) pairs above 0.25 on the first frame, "
                    "before NMS (default 30: a trained model's handful of objects)")
    ap.add_argument("--no-command", action="store_true", help="skip the subprocess run of the command")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

    import torch

    from efficientdet import Detector
    from efficientdet.video import open_source, predict_video
    from efficientdet.weights import save_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="video_bench_"))
    clip = make_clip(work / "clip.mp4", args.frames)
    with open_source(clip) as src:
        images = [f.image for f in src]
    model = build_model(images[0], args.boxes)
    detector = Detector("d0", weights=save_checkpoint(work / "d0.pt", model), score_threshold=0.25)
    prepared = [detector.prepare([img]) for img in images]
    for p in prepared[:3]:  # warm-up
        detector.detect_prepared(p)
    counts = [len(d) for d in detector(images[:10], batch_size=1)]

    def network() -> float:
        t0 = time.perf_counter()
        for p in prepared:
            detector.forward_network(p.inputs[0])
        return len(prepared) / (time.perf_counter() - t0)

    def detector_only() -> float:
        t0 = time.perf_counter()
        detector(images, batch_size=1)
        return len(images) / (time.perf_counter() - t0)

    def loop(pipelined: bool) -> float:
        out = work / ("pipe" if pipelined else "seq")
        summary = predict_video(detector, clip, out=out, json=out / "clip.jsonl", pipelined=pipelined)
        assert summary.frames == len(images), summary
        return summary.frames_per_s

    def command() -> float:
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        proc = subprocess.run([sys.executable, "-m", "efficientdet", "predict", str(clip), "--weights",
                               str(work / "d0.pt"), "--backend", "torch", "--out", str(work / "cmd"), "--json",
                               str(work / "cmd.jsonl")],
                              capture_output=True, text=True, env=env, check=True)
        return float(re.search(r"([\d.]+) frames/s", proc.stdout).group(1))

    stage_ms = stages(clip, detector, images, work)
    print("per-frame stages (ms, median): " + ", ".join(f"{k} {v:.1f}" for k, v in stage_ms.items()), flush=True)
    load_before = os.getloadavg()
    runs: dict[str, list[float]] = {k: [] for k in ("network", "detector", "sequential", "pipelined", "command")}
    for r in range(args.rounds):
        runs["network"].append(network())
        runs["detector"].append(detector_only())
        runs["sequential"].append(loop(False))
        runs["pipelined"].append(loop(True))
        if not args.no_command:
            runs["command"].append(command())
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in runs.items() if v), flush=True)
    medians = {k: statistics.median(v) for k, v in runs.items() if v}
    cpu = cpu_name()
    result = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "frames": args.frames,
              "size": "1280x720", "model": "d0 512 random init", "boxes_per_frame": float(np.mean(counts)),
              "load_average_before_after": [load_before, os.getloadavg()], "stage_ms": stage_ms,
              "frames_per_s": runs, "median_frames_per_s": medians,
              "ratio_to_network": {k: v / medians["network"] for k, v in medians.items()}}
    print(f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"{np.mean(counts):.1f} boxes/frame, load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    for k, v in medians.items():
        print(f"{k:>11}: {v:6.2f} frames/s  ({v / medians['network']:.2f}x network)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
