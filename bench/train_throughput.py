"""Training-step throughput and peak memory: this project vs effdet 0.4.1's ``DetBenchTrain``.

D0 at 512x512, batch 4, 90 classes, 2 threads, SGD; each configuration runs in its own subprocess
(clean peak RSS = ``ru_maxrss``), 2 warm-up steps then 5 timed steps (median step time). A step is
anchor matching + forward + loss + backward + optimizer step, for both implementations.

    .venv/bin/python bench/train_throughput.py [--steps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

BATCH, SIZE = 4, 512


def _targets(seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    boxes, labels = [], []
    for _ in range(BATCH):
        n = 6
        xy = torch.rand(n, 2, generator=g) * (SIZE - 160)
        wh = 16 + torch.rand(n, 2, generator=g) * 140
        boxes.append(torch.cat([xy, xy + wh], 1))
        labels.append(torch.randint(0, 90, (n,), generator=g))
    return boxes, labels


def _ours(variant: str):
    import torch

    from efficientdet.anchors import generate_anchors
    from efficientdet.factory import create_model
    from efficientdet.loss import DetectionLoss
    from efficientdet.matcher import match_anchors
    from efficientdet.model.efficientdet import flatten_outputs

    model = create_model("efficientdet_d0", num_classes=90, backbone_drop_path=0.0).train()
    channels_last = "cl" in variant
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if "ckpt" in variant:  # recompute the stem + first N backbone stages in backward (e.g. ckpt2)
        model.recompute_stages = int(variant.split("ckpt")[1][:1] or 2)
    cfg = model.config
    anchors = generate_anchors(SIZE, cfg.min_level, cfg.max_level, cfg.anchor_scale, cfg.num_scales, cfg.aspect_ratios)
    loss_fn = DetectionLoss(90)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(BATCH, 3, SIZE, SIZE)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    boxes, labels = _targets()
    bf16 = "bf16" in variant

    def step() -> None:
        match = match_anchors(anchors, boxes, labels)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            cls, box = model(images)
        cls, box = flatten_outputs(cls, box, 90)
        loss = loss_fn(cls, box, match.cls_targets, match.box_targets)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()

    return step


def _effdet(variant: str):
    import torch
    from effdet import create_model

    bench = create_model("tf_efficientdet_d0", bench_task="train", pretrained_backbone=False,
                         bench_labeler=True).train()  # matching inside the step, as ours
    opt = torch.optim.SGD(bench.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(BATCH, 3, SIZE, SIZE)
    boxes, labels = _targets()
    target = {"bbox": torch.stack([b[:, [1, 0, 3, 2]] for b in boxes]), "cls": torch.stack(labels).float() + 1,
              "img_scale": torch.ones(BATCH), "img_size": torch.full((BATCH, 2), SIZE)}

    def step() -> None:
        loss = bench(images, target)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bench.parameters(), 10.0)
        opt.step()

    return step


def measure(impl: str, variant: str, steps: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if "malloc" in variant:  # what the efficientdet command does at start-up (efficientdet/memory.py)
        from efficientdet.memory import tune_malloc

        assert tune_malloc()
    step = (_ours if impl == "ours" else _effdet)(variant)
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"impl": impl, "variant": variant, "step_s": med, "images_s": BATCH / med,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="effdet:fp32,ours:cl+malloc+ckpt2,effdet:fp32+malloc,ours:cl+ckpt2",
                        help="IMPL:TOKENS; ours: cl (channels-last), ckptN, bf16, malloc (allocator tuning); "
                             "cl+malloc+ckpt2 is what `efficientdet train` does on a CPU without AMX")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: IMPL:VARIANT in this process
    args = parser.parse_args()
    if args.one:
        impl, variant = args.one.split(":")
        print(json.dumps(measure(impl, variant, args.steps, args.threads)))
        return 0
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1")
    rows = []
    for spec in args.variants.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", spec, "--steps", str(args.steps), "--threads",
                              str(args.threads)], capture_output=True, text=True, env=env)
        if out.returncode:
            print(f"{spec}: failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  measured {spec}", file=sys.stderr, flush=True)
    base = next((r for r in rows if r["impl"] == "effdet"), None)
    print(f"\nD0 {SIZE}x{SIZE}, batch {BATCH}, {args.threads} threads, median of {args.steps} steps")
    print(f"{'impl':8} {'variant':9} {'s/step':>7} {'img/s':>6} {'peak MB':>8} {'speed x':>8} {'mem x':>6}")
    for r in rows:
        sx = r["images_s"] / base["images_s"] if base else float("nan")
        mx = r["peak_rss_mb"] / base["peak_rss_mb"] if base else float("nan")
        print(f"{r['impl']:8} {r['variant']:9} {r['step_s']:7.2f} {r['images_s']:6.2f} {r['peak_rss_mb']:8.0f} "
              f"{sx:8.2f} {mx:6.2f}")
    print(f"\ncommand: {sys.executable} {' '.join(sys.argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
