"""Latency / throughput benchmark of the model family, laid out like the paper's Table 2.

For each variant: parameters and FLOPs (multiply-adds, :func:`efficientdet.complexity.measure`),
batch-1 end-to-end latency (decoded PIL image in, :class:`~efficientdet.detections.Detections` out;
median of ``runs`` after ``warmup``) split into preprocess / network / postprocess, and throughput
(images/s) at ``batch_size``. Random weights are used (timing does not depend on the values, except
post-processing, which depends on how many scores pass ``score_threshold``).

Segmentation rows (``d0_seg`` ...): image -> (H, W) mask at the original size through
:class:`~efficientdet.inference.segmenter.Segmenter`; "post" is the crop, resize and arg-max
(PyTorch backend only).
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from .complexity import measure
from .variants import get_config


@dataclass
class BenchResult:
    """One row: sizes in units, times in milliseconds, throughput in images per second."""

    model: str
    image_size: int
    params: int
    flops: int
    latency_ms: float
    preprocess_ms: float
    network_ms: float
    postprocess_ms: float
    throughput_ips: float
    batch_size: int
    runs: int


def sample_image(width: int = 640, height: int = 480, seed: int = 0) -> Image.Image:
    """A smooth textured RGB test image (decoded, in memory)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([127 + 100 * np.sin(xx * rng.uniform(0.01, 0.05) + c) * np.cos(yy * 0.03) for c in range(3)], -1)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def bench_model(
    name: str,
    backend: str = "torch",
    device: str = "cpu",
    batch_size: int = 1,
    runs: int = 20,
    warmup: int = 3,
    image_size: int | None = None,
    score_threshold: float = 0.25,
) -> BenchResult:
    """Measure one variant (see module docstring)."""
    from .inference.detector import Detector

    cfg = get_config(name, image_size=image_size)
    if not cfg.detect:
        return _bench_segmentation(cfg, backend, device, batch_size, runs, warmup)
    cost = measure(cfg)
    torch.manual_seed(0)
    detector = Detector(name, backend=backend, device=device, image_size=image_size,
                               score_threshold=score_threshold)
    img = sample_image()
    totals, parts = [], []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        det = detector(img)[0]
        dt = (time.perf_counter() - t0) * 1e3
        if i >= warmup:
            totals.append(dt)
            parts.append(det.timings)
    images = [sample_image(seed=s) for s in range(batch_size)]
    batch_times = []
    for i in range(max(1, warmup // 2) + max(2, runs // 4)):
        t0 = time.perf_counter()
        detector(images, batch_size=batch_size)
        if i >= max(1, warmup // 2):
            batch_times.append(time.perf_counter() - t0)
    return BenchResult(
        model=cfg.name,
        image_size=cfg.image_size,
        params=cost["params"],
        flops=cost["flops"],
        latency_ms=statistics.median(totals),
        preprocess_ms=statistics.median(p["preprocess_ms"] for p in parts),
        network_ms=statistics.median(p["inference_ms"] for p in parts),
        postprocess_ms=statistics.median(p["postprocess_ms"] for p in parts),
        throughput_ips=batch_size / statistics.median(batch_times),
        batch_size=batch_size,
        runs=runs,
    )


def _bench_segmentation(cfg, backend: str, device: str, batch_size: int, runs: int, warmup: int) -> BenchResult:
    from .errors import ConfigError
    from .factory import create_model
    from .inference.segmenter import Segmenter, logits_to_masks, seg_logits
    from .preprocess import preprocess_batch

    if backend != "torch":
        raise ConfigError(f"{cfg.name}: segmentation rows are benchmarked with --backend torch only")
    cost = measure(cfg)
    torch.manual_seed(0)
    seg = Segmenter(create_model(cfg), device=device, batch_size=batch_size)
    img = sample_image()
    totals, parts = [], []
    with torch.inference_mode():
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            batch, scales = preprocess_batch([img], cfg.image_size, cfg.mean, cfg.std, channels_last=False)
            t1 = time.perf_counter()
            logits = seg_logits(seg.model(batch.to(seg.device)))
            t2 = time.perf_counter()
            logits_to_masks(logits, [img.size], scales)
            t3 = time.perf_counter()
            if i >= warmup:
                totals.append((t3 - t0) * 1e3)
                parts.append(((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3))
    images = [sample_image(seed=s) for s in range(batch_size)]
    batch_times = []
    for i in range(max(1, warmup // 2) + max(2, runs // 4)):
        t0 = time.perf_counter()
        seg(images)
        if i >= max(1, warmup // 2):
            batch_times.append(time.perf_counter() - t0)
    return BenchResult(cfg.name, cfg.image_size, cost["params"], cost["flops"], statistics.median(totals),
                       statistics.median(p[0] for p in parts), statistics.median(p[1] for p in parts),
                       statistics.median(p[2] for p in parts), batch_size / statistics.median(batch_times),
                       batch_size, runs)


def run_benchmark(
    models: list[str],
    budget_ms: float | None = None,
    progress: bool = True,
    **kwargs: object,
) -> dict:
    """Benchmark ``models`` in order; with ``budget_ms`` stop after the first one over budget.

    Returns a JSON-ready dict: environment, settings, ``results`` (list of :class:`BenchResult` dicts)
    and, with a budget, what :func:`budget_choice` reports (``within_budget``, ``over_budget``, ``skipped``).
    """
    results: list[BenchResult] = []
    for name in models:
        r = bench_model(name, **kwargs)  # type: ignore[arg-type]
        results.append(r)
        if progress:
            print(format_row(r), flush=True)
        if budget_ms is not None and r.latency_ms > budget_ms:
            break
    return {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        **{k: v for k, v in kwargs.items()},
        "budget_ms": budget_ms,
        **budget_choice(results, budget_ms, models),
        "results": [asdict(r) for r in results],
    }


def budget_choice(results: list[BenchResult], budget_ms: float | None, models: list[str] | None = None) -> dict:
    """The largest variant whose batch-1 latency fits ``budget_ms``, from rows measured small to large.

    Returns ``within_budget`` (the last row before the first one over budget, or None),
    ``over_budget`` (that first row's name, excluded; empty without a budget or when all fit) and
    ``skipped`` (the ``models`` after it: larger, so not measured, or not considered in a saved report).
    """
    if budget_ms is None:
        return {"within_budget": None, "over_budget": [], "skipped": []}
    within, over = None, []
    for r in results:
        if r.latency_ms > budget_ms:
            over.append(r.model)
            break
        within = r.model
    names = [get_config(m).name for m in models or []]
    after = names[names.index(over[0]) + 1 :] if over and over[0] in names else []
    return {"within_budget": within, "over_budget": over, "skipped": after}


HEADER = (f"{'model':<20}{'params':>9}{'FLOPs':>9}{'latency':>10}{'(pre':>8}{'net':>9}{'post)':>8}"
          f"{'throughput':>13}")


def format_row(r: BenchResult) -> str:
    return (f"{r.model:<20}{r.params / 1e6:>8.1f}M{r.flops / 1e9:>8.2f}B{r.latency_ms:>8.1f}ms"
            f"{r.preprocess_ms:>8.1f}{r.network_ms:>9.1f}{r.postprocess_ms:>8.1f}"
            f"{r.throughput_ips:>8.1f} img/s")


def format_table(report: dict) -> str:
    """The report as a Table-2-style text table (latency = batch 1; throughput at the batch size)."""
    lines = [HEADER] + [format_row(BenchResult(**r)) for r in report["results"]]
    if report.get("budget_ms") is not None:
        line = f"largest variant within {report['budget_ms']:g} ms: {report['within_budget'] or 'none'}"
        latency = {r["model"]: r["latency_ms"] for r in report["results"]}
        if report.get("over_budget"):
            line += "; over budget: " + ", ".join(f"{m} ({latency[m]:.1f} ms)" for m in report["over_budget"])
        if report.get("skipped"):
            line += "; skipped: " + ", ".join(report["skipped"])
        lines.append(line)
    return "\n".join(lines)
