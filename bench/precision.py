"""Network latency by precision on this CPU: float32 / int8 in onnxruntime, float32 / bf16 in PyTorch (oneDNN).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/precision.py --threads 2 --rounds 10 [--json out.json]

D0 (90 classes, random weights: timing only), batch 1, 512x512, the network alone (raw outputs).
Variants, timed interleaved round by round (one run of each per round, so a busy machine slows all
of them alike; the median over rounds is reported):

- ``ort_fp32``: the float32 export in onnxruntime (what ``--backend auto`` runs);
- ``ort_int8``: :func:`efficientdet.inference.quantize.quantize_int8` (QDQ, every network op quantised);
- ``ort_int8_qop``: the same in onnxruntime's QOperator format;
- ``ort_int8_conv_only``: only the convolutions quantised (SiLU/sigmoid left in float32 between
  dequantise/quantise pairs: the earlier, slower attempt);
- ``ov_fp32`` / ``ov_bf16`` / ``ov_int8``: OpenVINO (CPU plugin) on the float32 export with a float32 /
  bf16 inference-precision hint, and on ``ort_int8``'s QDQ file;
- ``ov_nncf``: OpenVINO on the float32 export quantised by NNCF's post-training ``nncf.quantize`` (its own
  int8 placement for the CPU plugin; needs ``pip install nncf``, not a dependency of the package), its
  float parts in float32 (``ov_nncf``) or bf16 (``ov_nncf_bf16``);
- ``torch_fp32`` / ``torch_bf16``: the BN-folded, fused PyTorch network in float32 / bfloat16.

Calibration: 8 images of the synthetic data set. Prints the CPU name, its flags that matter, the
load average before and after, and the ratios to ``ort_fp32``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--variants", default="ort_fp32,ort_int8,ort_int8_qop,ort_int8_conv_only,torch_fp32,torch_bf16")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import numpy as np
    import onnxruntime as ort
    import torch

    torch.set_num_threads(args.threads)
    from efficientdet import create_model
    from efficientdet.data.synth import make_synthetic_dataset
    from efficientdet.inference import quantize as q
    from efficientdet.inference.onnx_export import export_onnx
    from efficientdet.inference.onnxrt import make_session
    from efficientdet.inference.precision import cpu_info
    from efficientdet.inference.torch_runner import TorchRunner

    cpu = cpu_info()
    wanted = args.variants.split(",")
    res: dict = {"cpu": cpu.name, "cpu_class": cpu.cpu_class, "threads": args.threads, "rounds": args.rounds,
                 "onnxruntime": ort.__version__, "torch": torch.__version__, "load_before": os.getloadavg()}
    torch.manual_seed(0)
    model = create_model("d0", num_classes=90, image_size=args.size).eval()
    tmp = Path(tempfile.mkdtemp())
    data = make_synthetic_dataset(tmp / "data", num_train=0, num_val=8)
    calib = q.calibration_files(data["val_images"], 8)
    fp32 = export_onnx(model, tmp / "fp32.onnx")
    cfg = model.config
    fns = {}
    x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size)).astype(np.float32)
    if "ort_fp32" in wanted:
        s = make_session(fp32, args.threads)
        fns["ort_fp32"] = lambda s=s: s.run(None, {"images": x})
    for name, kwargs in (("ort_int8", {}), ("ort_int8_qop", {"quant_format": "qoperator"}),
                         ("ort_int8_conv_only", {"ops": ("Conv",)})):
        if name not in wanted:
            continue
        ops = kwargs.pop("ops", None)
        saved = q.OP_TYPES
        if ops:
            q.OP_TYPES = list(ops)
        t0 = time.perf_counter()
        try:
            path = q.quantize_int8(fp32, tmp / f"{name}.onnx", calib, cfg.image_size, cfg.mean, cfg.std, **kwargs)
        except Exception as exc:  # e.g. onnxruntime's QOperator quantiser on a bias it cannot find
            res[f"{name}_error"] = f"{type(exc).__name__}: {exc}"
            print(f"{name}: quantisation failed ({res[f'{name}_error']})")
            continue
        finally:
            q.OP_TYPES = saved
        res[f"{name}_quantise_s"] = time.perf_counter() - t0
        s = make_session(path, args.threads)
        fns[name] = lambda s=s: s.run(None, {"images": x})
    for name in ("ov_fp32", "ov_bf16", "ov_int8"):
        if name not in wanted:
            continue
        import openvino as ov

        res["openvino"] = ov.__version__
        src = fp32
        if name == "ov_int8":
            src = tmp / "ov_int8_src.onnx"
            if not src.exists():
                q.quantize_int8(fp32, src, calib, cfg.image_size, cfg.mean, cfg.std)
        hint = {"ov_fp32": "f32", "ov_bf16": "bf16", "ov_int8": "f32"}[name]
        compiled = ov.Core().compile_model(str(src), "CPU", {
            "INFERENCE_NUM_THREADS": args.threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": hint})
        req = compiled.create_infer_request()
        fns[name] = lambda r=req: r.infer({0: x})
    if "ov_nncf" in wanted:
        import nncf
        import openvino as ov

        from efficientdet.images import load_image
        from efficientdet.preprocess import preprocess_images

        t0 = time.perf_counter()
        samples = [preprocess_images([load_image(p)], cfg.image_size, cfg.mean, cfg.std, channels_last=False)[0]
                   for p in calib]
        qmodel = nncf.quantize(ov.Core().read_model(str(fp32)),
                               nncf.Dataset([np.ascontiguousarray(a, dtype=np.float32) for a in samples]),
                               subset_size=len(samples))
        res["ov_nncf_quantise_s"] = time.perf_counter() - t0
        res["nncf"] = nncf.__version__
        for name, hint in (("ov_nncf", "f32"), ("ov_nncf_bf16", "bf16")):  # the float islands in f32 / bf16
            compiled = ov.Core().compile_model(qmodel, "CPU", {
                "INFERENCE_NUM_THREADS": args.threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": hint})
            req = compiled.create_infer_request()
            fns[name] = lambda r=req: r.infer({0: x})
    xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
    for name, dtype in (("torch_fp32", None), ("torch_bf16", torch.bfloat16)):
        if name in wanted:
            runner = TorchRunner(model, torch.device("cpu"), True, dtype=dtype)
            fns[name] = lambda r=runner: r.run(xt)
    times: dict[str, list[float]] = {n: [] for n in fns}
    for fn in fns.values():  # warm-up
        fn()
        fn()
    for _ in range(args.rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    res["load_after"] = os.getloadavg()
    res["median_ms"] = {n: statistics.median(t) for n, t in times.items()}
    res["min_ms"] = {n: min(t) for n, t in times.items()}
    base = res["median_ms"].get("ort_fp32")
    print(f"{cpu.name} ({cpu.cpu_class}), {args.threads} threads, D0 {args.size}, median of {args.rounds} "
          f"interleaved rounds; load average {res['load_before'][0]:.1f} -> {res['load_after'][0]:.1f}")
    for n in fns:
        ratio = f"{res['median_ms'][n] / base:5.2f}x" if base else ""
        print(f"  {n:20s} {res['median_ms'][n]:8.1f} ms (min {res['min_ms'][n]:7.1f}) {ratio}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
