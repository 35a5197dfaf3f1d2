"""The one place that picks a runner for a :class:`~efficientdet.inference.detector.Detector`.

- ``weights`` naming an ``.onnx`` file: :class:`~.onnxrt.OnnxRunner` (onnxruntime, no PyTorch for
  ``--nms`` files).
- ``backend="torch"``: :class:`~.torch_runner.TorchRunner` on the model from :func:`efficientdet.create_model`.
- ``backend="auto"`` (the command line's default): the exported file on the CPU (the fastest path,
  BENCHMARKS.md), PyTorch otherwise and for a given model instance or another device. With
  ``precision="auto"`` the file runs in OpenVINO with bf16 convolutions where the CPU has bf16 units and
  that measured faster than onnxruntime float32 on this machine (timed once, remembered), else in
  onnxruntime.
- ``backend="openvino"``: the same cached export in OpenVINO's CPU plugin (:mod:`.ov_runtime`), float32
  or bf16.
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
from .config import PostprocessConfig, cache_root
from .onnxrt import OnnxRunner, is_onnx_file

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
#: bump when the exported graphs change: old cache entries are then not reused
GRAPH_FORMAT = "v5"  # v5: boxes clipped to nothing are dropped


def onnx_cache_dir() -> Path:
    """Where the onnxruntime backend keeps its exports."""
    return cache_root() / "onnx"


def _export_settings(settings: PostprocessConfig) -> dict[str, Any]:
    """What goes into the graph: the NMS settings for hard NMS, nothing for soft-NMS (raw outputs)."""
    if settings.soft_nms:
        return {}
    return dict(score_threshold=settings.score_threshold, iou_threshold=settings.iou_threshold,
                max_det=settings.max_det, topk=settings.topk)


def request_key(model: Any, weights: Any, image_size: int | None, num_classes: int | None,
                settings: PostprocessConfig, batch: int, opset: int) -> str | None:
    """Cache key of an export request, computed without PyTorch: the weights file's bytes (or a published
    name) + the request. ``None`` when the request cannot be cached (random weights, a model instance)."""
    if weights is None or not (model is None or isinstance(model, str)):
        return None
    from ..version import __version__

    h = hashlib.sha256()
    path = Path(weights)
    if path.is_file():
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    else:  # a published name (downloaded, verified and cached by the weights module)
        h.update(str(weights).encode())
    h.update(repr((model, image_size, num_classes, sorted(_export_settings(settings).items()), settings.soft_nms,
                   batch, opset, GRAPH_FORMAT, __version__)).encode())
    return h.hexdigest()[:20]


def cached_path(key: str, weights: Any, batch: int) -> Path:
    return onnx_cache_dir() / f"{Path(str(weights)).stem}-b{batch}-{key}.onnx"


def export_to_cache(model: Any, path: Path, settings: PostprocessConfig, batch: int = 1, opset: int = 17) -> Path:
    """Export ``model`` for the onnxruntime backend to ``path`` (atomically: a temporary file, then a rename).

    Hard NMS: the post-processing goes into the graph with ``settings``; soft-NMS: raw outputs. A fixed
    batch runs ~20% faster in onnxruntime than a dynamic one; other batch sizes are split / zero-padded.
    """
    from .onnx_export import export_onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    export_onnx(model, tmp, batch=batch, opset=opset, nms=not settings.soft_nms, **_export_settings(settings))
    os.replace(tmp, path)
    return path


def quantize_to_cache(model: Any, path: Path, settings: PostprocessConfig, batch: int,
                      calibration: list[Path]) -> Path:
    """The float32 export of :func:`export_to_cache`, quantised to int8 with the ``calibration`` images
    (:func:`~.quantize.quantize_int8`) and written atomically to ``path``."""
    from .quantize import quantize_int8

    cfg = model.config
    fp32 = export_to_cache(model, path.with_suffix(f".{os.getpid()}.fp32.onnx"), settings, batch)
    try:
        tmp = quantize_int8(fp32, path.with_suffix(f".{os.getpid()}.int8.onnx"), calibration, cfg.image_size,
                            cfg.mean, cfg.std)
        os.replace(tmp, path)
    finally:
        fp32.unlink(missing_ok=True)
    return path


def onnxruntime_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def resolve_backend(backend: str, model: Any, device: Any) -> str:
    """``auto`` -> ``onnxruntime`` on the CPU when installed (and the model is not a live instance), else ``torch``.

    (``auto`` may still run the exported file in OpenVINO, in bf16, where that measured faster: see
    :func:`_engine_for`.)"""
    check_backend(backend)
    if backend != "auto":
        return backend
    live = not (model is None or isinstance(model, str | Path))
    return "onnxruntime" if str(device) == "cpu" and not live and onnxruntime_available() else "torch"


def check_backend(backend: str) -> str:
    """``backend`` if it is known and installed; a one-line :class:`ConfigError` that says what to do otherwise."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend in ("onnxruntime", "openvino"):  # both run the onnxruntime-format export
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise ConfigError(f"--backend {backend} needs the onnxruntime package (pip install onnxruntime onnx); "
                              "or use --backend torch") from exc
    if backend == "openvino":
        from .ov_runtime import openvino_available

        if not openvino_available():
            raise ConfigError("--backend openvino needs the openvino package (pip install openvino); "
                              "or use --backend auto")
    return backend


def _is_int8_file(path: Path) -> bool:
    if path.parent == onnx_cache_dir():  # the cache names its int8 exports
        return "-int8-" in path.name
    from .onnxrt import onnx_metadata

    try:
        return onnx_metadata(path).get("precision") == "int8"
    except Exception:  # unreadable: OnnxRunner reports it
        return False


def _engine_for(path: Path, backend: str | None, requested: str, precision: str, threads: int | None
                ) -> tuple[str, str]:
    """(engine, precision) for an ONNX file: ``openvino`` for ``--backend openvino`` and for bf16; with
    ``--precision auto`` and ``--backend auto``, OpenVINO bf16 where the CPU has bf16 units and the file's
    network measured faster in it than in onnxruntime float32 (once per file and CPU, then remembered);
    else onnxruntime."""
    from .bf16_probe import bf16_measured_faster
    from .ov_runtime import openvino_available
    from .precision import bf16_capable

    if backend == "openvino" or precision == "bf16":
        measured = requested == "auto" and bf16_capable() and bf16_measured_faster(path, threads)
        return "openvino", "bf16" if precision == "bf16" or measured else "fp32"
    if (requested == "auto" and backend in (None, "auto") and precision == "fp32" and openvino_available()
            and bf16_capable() and not _is_int8_file(path) and bf16_measured_faster(path, threads)):
        return "openvino", "bf16"
    return "onnxruntime", precision


def build_runner(
    model: Any = None,
    weights: str | Path | None = None,
    backend: str | None = None,
    device: str | Any = "cpu",
    image_size: int | None = None,
    num_classes: int | None = None,
    optimize: bool | None = None,
    threads: int | None = None,
    onnx_path: str | Path | None = None,
    batch: int = 1,
    settings: PostprocessConfig | None = None,
    precision: str = "fp32",
    calibration: Any = None,
) -> Any:
    """A runner for the Detector (see the module docstring); arguments as :class:`Detector`'s.

    ``precision`` (:mod:`.precision`): ``bf16`` runs the export in OpenVINO's bf16 mode (``--backend torch``:
    the PyTorch runner in bfloat16), ``int8`` the onnxruntime runner on a file quantised with the
    ``calibration`` images (a folder; cached by the weights, the export settings and the images' content),
    ``auto`` decides per CPU (measuring bf16 once where the CPU has it).
    """
    from .ov_runtime import openvino_available
    from .precision import check_precision, resolve_precision

    check_precision(precision)
    if backend is not None:
        check_backend(backend)
    if is_onnx_file(weights) or onnx_path is not None:
        path = Path(onnx_path if onnx_path is not None else weights)
        if precision == "int8":
            raise ConfigError("--precision int8 does not apply to an exported file (it runs in the precision it was "
                              "exported in); quantise with 'efficientdet export --int8 --calibration DIR'")
        if str(device) != "cpu" or image_size is not None:
            raise ConfigError(f"{path}: an exported ONNX file runs on the CPU at its exported size; "
                              "drop --device and --image-size")
        if backend == "torch":
            raise ConfigError(f"{path}: an exported ONNX file runs in onnxruntime or OpenVINO; drop --backend torch")
        check_backend("onnxruntime")
        if precision == "bf16" and backend == "onnxruntime":
            raise ConfigError("--precision bf16 runs in OpenVINO (onnxruntime has no bf16 CPU kernels); "
                              "use --backend openvino or auto")
        if precision == "bf16":
            check_backend("openvino")
        engine, prec = ("onnxruntime", "fp32")
        if path.is_file():
            engine, prec = _engine_for(path, backend, precision, "fp32" if precision == "auto" else precision, threads)
        runner = OnnxRunner(path, threads, engine, prec)
        if model is not None and not isinstance(model, str | Path):
            raise ConfigError(f"{path}: pass either a model or an exported file")
        if isinstance(model, str):
            from ..variants import get_config

            if get_config(model).name != runner.config.name:
                raise ConfigError(f"{path}: the file holds {runner.config.name}, not {model}; drop --model")
        return runner
    if calibration is not None and precision in ("fp32", "bf16"):
        raise ConfigError(f"--calibration is for --precision int8 or auto, not {precision}; drop one of them")
    requested, wanted_backend = precision, backend
    precision = resolve_precision(precision, device, calibration)
    if requested == "auto" and backend in ("torch", "openvino") and precision == "int8":
        precision = "fp32"  # the backend asked for cannot run the automatic choice: float32 there
    if backend is None:  # not chosen: PyTorch, or what the precision needs
        backend = "onnxruntime" if precision == "int8" else "torch"
    live = not (model is None or isinstance(model, str | Path))
    if precision == "int8":
        if backend in ("torch", "openvino"):
            raise ConfigError(f"--precision int8 runs in onnxruntime; drop --backend {backend}")
        backend = "onnxruntime"
    elif precision == "bf16":
        if backend == "onnxruntime":
            raise ConfigError("--precision bf16 runs in OpenVINO or PyTorch (onnxruntime has no bf16 CPU kernels); "
                              "use --backend auto, openvino or torch")
        if backend == "auto":
            backend = "openvino" if str(device) == "cpu" and not live and openvino_available() else "torch"
    backend = resolve_backend(backend, model, device)
    calib_files: list[Path] = []
    if precision == "int8":
        from .quantize import calibration_files, calibration_key

        calib_files = calibration_files(calibration)

    def file_runner(path: Path) -> OnnxRunner:
        engine, prec = _engine_for(path, wanted_backend if backend != "openvino" else "openvino", requested,
                                   precision, threads)
        return OnnxRunner(path, threads, engine, prec)

    if backend in ("onnxruntime", "openvino"):
        if str(device) != "cpu":
            raise ConfigError(f"--backend {backend} runs on the CPU here; use --device cpu or --backend torch")
        if live and backend == "openvino":
            raise ConfigError("--backend openvino runs exported files; pass a model name and --weights, not a model")
        settings = settings or PostprocessConfig()
        key = request_key(model, weights, image_size, num_classes, settings, batch, 17)
        if key is not None and calib_files:
            key = f"{key}-int8-{calibration_key(calib_files)}"
        if key is not None and cached_path(key, weights, batch).is_file():  # a second run: no PyTorch needed
            return file_runner(cached_path(key, weights, batch))
    import torch

    from ..factory import create_model
    from ..model.efficientdet import EfficientDet
    from .torch_runner import TorchRunner

    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but no CUDA GPU is available; use --device cpu")
    given = isinstance(model, EfficientDet)
    net = model if given else create_model(model, weights=weights, num_classes=num_classes, image_size=image_size)
    if not net.config.detect and backend != "torch":  # segmentation only: the detection export does not apply
        if wanted_backend not in (None, "auto") or precision != "fp32":
            raise ConfigError(f"{net.config.name} segments only; its exported file runs with "
                              "efficientdet.deploy.OnnxSegmenter ('efficientdet export', then predict --masks); "
                              "here use --backend torch --precision fp32")
        backend = "torch"
    if backend == "torch":
        # a given model may still be training: a fused copy would not follow its weights
        dtype = torch.bfloat16 if precision == "bf16" else None
        return TorchRunner(net, device, (not given) if optimize is None else optimize, dtype=dtype)
    if key is not None:
        target = cached_path(key, weights, batch)
        if calib_files:
            return file_runner(quantize_to_cache(net.eval(), target, settings, batch, calib_files))
        return file_runner(export_to_cache(net.eval(), target, settings, batch))
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="efficientdet-onnx-"))  # random weights or a live model: not cached
    try:
        if calib_files:
            return file_runner(quantize_to_cache(net.eval(), folder / "model.onnx", settings, batch, calib_files))
        return file_runner(export_to_cache(net.eval(), folder / "model.onnx", settings, batch))
    finally:  # the session holds the graph in memory
        shutil.rmtree(folder, ignore_errors=True)
