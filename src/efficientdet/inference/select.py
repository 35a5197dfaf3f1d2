"""The one place that picks a runner for a :class:`~efficientdet.inference.detector.Detector`.

- ``weights`` naming an ``.onnx`` file: :class:`~.onnxrt.OnnxRunner` (onnxruntime, no PyTorch for
  ``--nms`` files).
- ``backend="torch"``: :class:`~.torch_runner.TorchRunner` on the model from :func:`efficientdet.create_model`.
- ``backend="onnxruntime"``: the model is exported once to a cache folder keyed by the weights' content
  hash and the export settings (``$EFFICIENTDET_CACHE/onnx`` or ``~/.cache/efficientdet/onnx``) and run
  by :class:`~.onnxrt.OnnxRunner`; with hard NMS the post-processing is inside the file (the fastest
  path, BENCHMARKS.md), with soft-NMS the file has raw outputs and the PyTorch post-processing follows.
  Either way the detections equal the PyTorch runner's to ~1e-5.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .config import PostprocessConfig
from .onnxrt import OnnxRunner, is_onnx_file

BACKENDS = ("torch", "onnxruntime")


def onnx_cache_dir() -> Path:
    """Where the onnxruntime backend keeps its exports."""
    root = os.environ.get("EFFICIENTDET_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "efficientdet"
    return base / "onnx"


def model_key(model: Any, opset: int, settings: str = "raw") -> str:
    """Hash of the weights + config + labels + export settings (a changed checkpoint gets a new file)."""
    import torch

    h = hashlib.sha256()
    h.update(repr(model.config.to_dict()).encode())
    h.update(repr(model.labels.names).encode())  # ignored slots are masked inside NMS graphs
    h.update(f"{settings}-v3-opset{opset}-torch{torch.__version__}".encode())  # v3: the graph format
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def cached_onnx(model: Any, settings: PostprocessConfig, batch: int = 1, opset: int = 17) -> Path:
    """The cached export of ``model`` for the onnxruntime backend (written on first use, atomically).

    Hard NMS: the post-processing goes into the graph with ``settings``; soft-NMS: raw outputs. A fixed
    batch runs ~20% faster in onnxruntime than a dynamic one; other batch sizes are split / zero-padded.
    """
    from .onnx_export import export_onnx

    nms = not settings.soft_nms
    fixed = dict(score_threshold=settings.score_threshold, iou_threshold=settings.iou_threshold,
                 max_det=settings.max_det, topk=settings.topk) if nms else {}
    key = model_key(model, opset, repr(sorted(fixed.items())) if nms else "raw")
    path = onnx_cache_dir() / f"{model.config.name}-{model.config.image_size}-b{batch}-{key}.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        export_onnx(model, tmp, batch=batch, opset=opset, nms=nms, **fixed)
        os.replace(tmp, path)
    return path


def check_backend(backend: str) -> str:
    """``backend`` if it is known and installed; a one-line :class:`ConfigError` that says what to do otherwise."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise ConfigError("--backend onnxruntime needs the onnxruntime package (pip install onnxruntime); "
                              "or use --backend torch") from exc
    return backend


def build_runner(
    model: Any = None,
    weights: str | Path | None = None,
    backend: str = "torch",
    device: str | Any = "cpu",
    image_size: int | None = None,
    num_classes: int | None = None,
    optimize: bool | None = None,
    threads: int | None = None,
    onnx_path: str | Path | None = None,
    batch: int = 1,
    settings: PostprocessConfig | None = None,
) -> Any:
    """A runner for the Detector (see the module docstring); arguments as :class:`Detector`'s."""
    if is_onnx_file(weights) or onnx_path is not None:
        path = onnx_path if onnx_path is not None else weights
        if str(device) != "cpu" or image_size is not None:
            raise ConfigError(f"{path}: an exported ONNX file runs in onnxruntime on the CPU at its exported size; "
                              "drop --device and --image-size")
        check_backend("onnxruntime")
        runner = OnnxRunner(path, threads)
        if model is not None and not isinstance(model, str | Path):
            raise ConfigError(f"{path}: pass either a model or an exported file")
        if isinstance(model, str):
            from ..variants import get_config

            if get_config(model).name != runner.config.name:
                raise ConfigError(f"{path}: the file holds {runner.config.name}, not {model}; drop --model")
        return runner
    import torch

    from ..factory import create_model
    from ..model.efficientdet import EfficientDet
    from .torch_runner import TorchRunner

    check_backend(backend)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but no CUDA GPU is available; use --device cpu")
    given = isinstance(model, EfficientDet)
    net = model if given else create_model(model, weights=weights, num_classes=num_classes, image_size=image_size)
    if backend == "torch":
        # a given model may still be training: a fused copy would not follow its weights
        return TorchRunner(net, device, (not given) if optimize is None else optimize)
    if device.type != "cpu":
        raise ConfigError("--backend onnxruntime runs on the CPU here; use --device cpu or --backend torch")
    path = cached_onnx(net.eval(), settings or PostprocessConfig(), batch=batch)
    return OnnxRunner(path, threads)
