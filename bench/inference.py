"""Inference benchmark: ours vs effdet 0.4.1 (D0, batch 1, 512x512, CPU, N threads), end to end and by stage.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/inference.py --threads 2 --runs 20 --family d0,d1,d2 --json out.json

Random weights (timing only). Reports: end-to-end latency (decoded PIL image in, detections out) of our
Detector and of effdet's ``DetBenchPredict`` with effdet's eval preprocessing (ResizePad + normalise);
network alone (ours in PyTorch, BN-folded; ours in onnxruntime; effdet's network exported to ONNX and run
in onnxruntime); post-processing; the torch-free deployment path (``efficientdet.deploy.OnnxModel`` on an
``--nms`` export, in its own process, alternated with effdet); latency vs FLOPs over the family; peak RSS
of D0 inference (subprocesses).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def timeit(fn, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def trained_like(net, size: int) -> None:
    """Give effdet's random network a trained detector's score distribution (timing realism).

    A freshly initialised head outputs the prior logit for every pair, so every (anchor, class) pair
    ties and top-k/NMS work on a degenerate input. Here the class predictor is rescaled so logits are
    about N(-10, 1): a few thousand of the 4.4M pairs score above 0.001, as with trained weights.
    """
    with torch.no_grad():
        w = net.class_net.predict.conv_pw.weight
        w.normal_(0, 1.0)
        net.class_net.predict.conv_pw.bias.zero_()
        out = torch.cat([o.flatten() for o in net(torch.randn(1, 3, size, size))[0]])
        w.mul_(1.0 / float(out.std()))
        net.class_net.predict.conv_pw.bias.fill_(-10.0)


def effdet_parts(size: int):
    from effdet import DetBenchPredict, EfficientDet, get_efficientdet_config
    from effdet.data.transforms import transforms_coco_eval

    cfg = get_efficientdet_config("tf_efficientdet_d0")
    cfg.image_size = (size, size)
    net = EfficientDet(cfg, pretrained_backbone=False).eval()
    trained_like(net, size)
    bench = DetBenchPredict(net).eval()
    mean_v, std_v = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # effdet's IMAGENET defaults
    transform = transforms_coco_eval(size, use_prefetcher=True, mean=mean_v, std=std_v)
    mean = torch.tensor(mean_v).view(1, 3, 1, 1) * 255
    std = torch.tensor(std_v).view(1, 3, 1, 1) * 255

    def run(img):
        arr, anno = transform(img, {})
        x = (torch.from_numpy(arr).float().unsqueeze(0) - mean) / std
        info = {"img_scale": torch.tensor([anno["img_scale"]]), "img_size": torch.tensor([[img.width, img.height]])}
        with torch.no_grad():
            return bench(x, info)

    return net, run


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


# peak RSS of the running (child) process in MB, for the subprocess snippets below
HWM_CODE = (
    "def hwm():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM'): return int(line.split()[1]) / 1024\n"
)


def peak_rss_mb(threads: int, weights: Path) -> tuple[float, float]:
    """(peak RSS after importing torch + efficientdet, peak RSS after 3 D0 inferences) in MB.

    Read from VmHWM in /proc/self/status: ``ru_maxrss`` survives exec on Linux, so a child would
    report the parent's peak.
    """
    code = HWM_CODE + (
        f"import torch; torch.set_num_threads({threads})\n"
        "from efficientdet import Detector\nfrom efficientdet.benchmark import sample_image\n"
        "base = hwm()\n"
        f"d = Detector('d0', weights={str(weights)!r}, score_threshold=0.001); img = sample_image()\n"
        "for _ in range(3): d(img)\n"
        "print(base, hwm())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    base, peak = out.stdout.strip().splitlines()[-1].split()
    return float(base), float(peak)


DEPLOY_CODE = r"""
import json, statistics, sys, time
from PIL import Image
from efficientdet.deploy import OnnxModel
path, image, threads, runs, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
base = hwm()
img = Image.open(image).convert('RGB'); img.load()
model = OnnxModel(path, threads=threads, score_threshold=0.001)
for _ in range(warmup): model(img)
times, stages = [], []
for _ in range(runs):
    t0 = time.perf_counter(); det = model(img)[0]; times.append((time.perf_counter() - t0) * 1e3)
    stages.append(det.timings)
out = {"e2e_ms": statistics.median(times), "num_detections": len(det), "rss_after_import_mb": base,
       "peak_rss_mb": hwm(), "torch_imported": "torch" in sys.modules}
out.update({k: statistics.median(s[k] for s in stages) for k in stages[0]})
print(json.dumps(out))
"""


def deploy_run(onnx_path: Path, image_path: Path, threads: int, runs: int, warmup: int) -> dict:
    """The torch-free path (``efficientdet.deploy.OnnxModel`` on an ``--nms`` export) in a fresh process:
    end-to-end latency by stage, and its peak RSS (VmHWM) including the imports."""
    out = subprocess.run([sys.executable, "-c", HWM_CODE + DEPLOY_CODE, str(onnx_path), str(image_path), str(threads),
                          str(runs), str(warmup)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--family", default="d0,d1,d2,d3,d4,d5,d6,d7", help="variants for latency vs FLOPs")
    parser.add_argument("--family-runs", type=int, default=3)
    parser.add_argument("--json", default=None)
    parser.add_argument("--deploy-rounds", type=int, default=3,
                        help="rounds of (torch-free deploy process, effdet) timings, alternated")
    parser.add_argument("--no-malloc-tuning", action="store_true",
                        help="leave glibc malloc alone (the efficientdet command tunes it at start-up)")
    args = parser.parse_args()
    if not args.no_malloc_tuning:  # as the CLI does; it applies to effdet's runs in this process too
        from efficientdet.memory import tune_malloc

        tune_malloc()
    torch.set_num_threads(args.threads)
    from efficientdet import Detector
    from efficientdet.benchmark import sample_image
    from efficientdet.complexity import measure
    from efficientdet.export.onnx import export_onnx
    from efficientdet.variants import get_config

    size, img = 512, sample_image()
    res: dict = {"threads": args.threads, "runs": args.runs, "torch": torch.__version__,
                 "malloc_tuning": not args.no_malloc_tuning}
    torch.manual_seed(0)
    net, effdet_run = effdet_parts(size)
    tmpdir = Path(tempfile.mkdtemp())
    weights = tmpdir / "effdet_d0_trained_like.pth"  # the same weights for both implementations
    torch.save(net.state_dict(), weights)
    ours = Detector("d0", weights=weights, score_threshold=0.001)
    res["ours_e2e_ms"] = timeit(lambda: ours(img), args.runs, args.warmup)
    res["effdet_e2e_ms"] = timeit(lambda: effdet_run(img), args.runs, args.warmup)
    res["num_detections_ours"] = len(ours(img)[0])
    predict = Detector("d0", weights=weights, score_threshold=0.25)  # the predict command's default
    res["ours_e2e_thr0.25_ms"] = timeit(lambda: predict(img), args.runs, args.warmup)
    stage = [ours(img)[0].timings for _ in range(args.runs)]
    for key in ("preprocess_ms", "inference_ms", "postprocess_ms"):
        res[f"ours_{key}"] = statistics.median(t[key] for t in stage)
    for thr in (0.001, 0.25):  # post-processing alone on the network's real outputs
        det = Detector("d0", weights=weights, score_threshold=thr)
        batch, scales, sizes = det.preprocess([img])
        outputs = det.forward_network(batch)
        res[f"postprocess_thr{thr}_ms"] = timeit(
            lambda d=det, o=outputs, s=scales, z=sizes: d.postprocess_outputs(o, s, z), args.runs, args.warmup)
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        xc = x.contiguous(memory_format=torch.channels_last)
        res["ours_network_torch_ms"] = timeit(lambda: ours.runner.network(xc), args.runs, args.warmup)
        res["ours_network_unfused_torch_ms"] = timeit(lambda: ours.model(x), args.runs, args.warmup)
        res["effdet_network_torch_ms"] = timeit(lambda: net(x), args.runs, args.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        ours_onnx = export_onnx(ours.model, Path(tmp) / "ours.onnx")
        effdet_onnx = Path(tmp) / "effdet.onnx"
        with torch.no_grad():
            torch.onnx.export(net, (x,), str(effdet_onnx), opset_version=17, dynamo=False, input_names=["images"])
        feed = {"images": x.numpy()}
        s_ours, s_eff = ort_session(ours_onnx, args.threads), ort_session(effdet_onnx, args.threads)
        res["ours_network_ort_ms"] = timeit(lambda: s_ours.run(None, feed), args.runs, args.warmup)
        res["effdet_network_ort_ms"] = timeit(lambda: s_eff.run(None, feed), args.runs, args.warmup)
    from efficientdet.inference import create_detector

    ort_det = create_detector("d0", backend="onnxruntime", weights=weights, score_threshold=0.001,
                              threads=args.threads)
    res["ours_e2e_onnxruntime_ms"] = timeit(lambda: ort_det(img), args.runs, args.warmup)
    # torch-free deployment path, alternated with effdet so both see the same machine state
    deploy_onnx, image_path = tmpdir / "d0_nms.onnx", tmpdir / "sample.png"
    export_onnx(ours.model, deploy_onnx, nms=True, score_threshold=0.001)
    img.save(image_path)
    deploy, effdet_again = [], []
    for _ in range(args.deploy_rounds):
        deploy.append(deploy_run(deploy_onnx, image_path, args.threads, args.runs, args.warmup))
        effdet_again.append(timeit(lambda: effdet_run(img), args.runs, args.warmup))
    res["deploy_rounds"] = deploy
    res["effdet_e2e_alternating_ms"] = effdet_again
    res["ours_e2e_deploy_ms"] = statistics.median(r["e2e_ms"] for r in deploy)
    res["effdet_e2e_alternating_median_ms"] = statistics.median(effdet_again)
    res["ratio_e2e_deploy_over_effdet"] = res["ours_e2e_deploy_ms"] / res["effdet_e2e_alternating_median_ms"]
    res["peak_rss_mb_deploy"] = max(r["peak_rss_mb"] for r in deploy)
    res["deploy_imports_torch"] = any(r["torch_imported"] for r in deploy)
    ort_det = s_ours = s_eff = None  # release the onnxruntime sessions (their threads spin) before torch timings
    res["rss_after_import_mb"], res["peak_rss_mb_d0"] = peak_rss_mb(args.threads, weights)
    family = []
    for name in [m for m in args.family.split(",") if m]:
        cfg = get_config(name)
        det = Detector(name, score_threshold=0.001)
        ms = timeit(lambda d=det: d(img), args.family_runs, 1)
        family.append({"model": cfg.name, "image_size": cfg.image_size, "flops": measure(cfg)["flops"],
                       "latency_ms": ms, "runs": args.family_runs})
        print(json.dumps(family[-1]), flush=True)
        del det
    d0 = family[0] if family else None
    for row in family:
        row["flops_x"] = row["flops"] / d0["flops"]
        row["latency_x"] = row["latency_ms"] / d0["latency_ms"]
    res["family"] = family
    res["ratio_e2e_ours_over_effdet"] = res["ours_e2e_ms"] / res["effdet_e2e_ms"]
    res["ratio_network_ours_torch_over_effdet_ort"] = res["ours_network_torch_ms"] / res["effdet_network_ort_ms"]
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
