"""Running exported ONNX files in OpenVINO's CPU plugin, torch-free: the bf16 fast path.

OpenVINO reads the same ``.onnx`` files as onnxruntime (the cached export of
:mod:`efficientdet.inference.select`, NMS inside or raw outputs) and compiles them for this CPU. Its
reason to be here is precision: with the ``bf16`` inference-precision hint it runs the convolutions in
bfloat16 on AVX512-BF16 or AMX units (the D0 network in ~0.68x onnxruntime float32's time on a Zen 4,
BENCHMARKS.md) with no calibration step, while onnxruntime has no bf16 CPU kernels. Compiled models are
cached next to the exports (``$EFFICIENTDET_CACHE/openvino``), so a second start compiles in ~0.2 s.

:class:`OpenVinoSession` offers the slice of onnxruntime's ``InferenceSession`` that
:class:`~.onnxrt.OnnxRunner` uses, so the runner, its metadata handling and its fixed-batch feeding are
shared.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from .config import cache_root

#: precisions this engine runs (``fp32``: the float32 reference; ``bf16``: the inference-precision hint)
OV_PRECISIONS = ("fp32", "bf16")


def openvino_available() -> bool:
    """Whether the ``openvino`` package is importable (without importing it)."""
    return importlib.util.find_spec("openvino") is not None


def openvino_cache_dir() -> Path:
    """Where OpenVINO keeps compiled models (and :mod:`.bf16_probe` its answers), next to the ONNX exports."""
    return cache_root() / "openvino"


def _load(path: Path) -> tuple[bytes, dict[str, str], list[str]]:
    """The file's bytes for OpenVINO, its metadata and its overridable inputs.

    OpenVINO folds an initializer that is also a graph input (the optional ``image_sizes`` input of the
    ``--nms`` exports, by which each image's boxes are clipped to its extent) into a constant; such
    initializers are dropped here so they stay inputs, as in onnxruntime."""
    import onnx

    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    inputs = {i.name for i in proto.graph.input}
    overridable = [t.name for t in proto.graph.initializer if t.name in inputs]
    if overridable:
        keep = [t for t in proto.graph.initializer if t.name not in inputs]
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(keep)
    return proto.SerializeToString(), meta, overridable


def check_levels(meta: dict[str, str], path: Path) -> None:
    """OpenVINO's CPU plugin rejects (or, with NMS inside, crashes on) a 3 x 3 max pool over a feature level
    smaller than its kernel: the input must leave the level below the top at least 3 pixels wide, i.e.
    ``image_size >= 3 * 2 ** (max_level - 1)`` (192 px for D0-D7, 384 for D7x). ValueError otherwise."""
    import json

    try:
        size = int(meta["image_size"])
        top = int(json.loads(meta["config"]).get("max_level", 7))
    except (KeyError, ValueError, TypeError):
        return
    least = 3 * 2 ** (top - 1)
    if size < least:
        raise ValueError(f"{path}: a {size} px input leaves the P{top - 1} level smaller than OpenVINO's 3 x 3 "
                         f"pooling; OpenVINO needs at least {least} px here: use --backend onnxruntime, or export at "
                         f"--image-size {least} or more")


def _port_name(port: Any, wanted: set[str]) -> str:
    names = port.get_names()
    return next((n for n in sorted(names) if n in wanted), port.get_any_name())


class OpenVinoSession:
    """An OpenVINO compiled model behind onnxruntime's session calls: ``get_inputs``, ``run``,
    ``get_modelmeta`` and ``get_overridable_initializers``.

    Args:
        path: an exported ``.onnx`` file.
        threads: inference threads (``None``: OpenVINO's choice, all cores).
        precision: ``fp32`` or ``bf16`` (the CPU plugin's inference-precision hint; bf16 needs AVX512-BF16
            or AMX, else the plugin keeps float32).
    """

    def __init__(self, path: str | Path, threads: int | None = None, precision: str = "fp32") -> None:
        import openvino as ov

        if precision not in OV_PRECISIONS:
            raise ValueError(f"OpenVINO precision {precision!r} is not one of {OV_PRECISIONS}")
        self.path = Path(path)
        self.precision = precision
        core = ov.Core()
        cache = openvino_cache_dir()
        try:
            cache.mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(cache)})
        except (OSError, RuntimeError):  # a read-only home: compile every time
            pass
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                                  "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        data, self._meta, self._overridable = _load(self.path)
        check_levels(self._meta, self.path)
        model = core.read_model(data)
        batch = model.input("images").get_partial_shape()[0]
        if self._overridable and batch.is_static:  # the optional per-image inputs take the file's fixed batch
            model.reshape({name: [batch.get_length(), *list(model.input(name).get_partial_shape())[1:]]
                           for name in self._overridable})
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: callers from several threads take turns
        # a port has several tensor names (OpenVINO may add its own); the ONNX graph's input name is the one fed
        wanted = {"images", *self._overridable}
        self._inputs = [SimpleNamespace(name=_port_name(p, wanted),
                                        shape=[d.get_length() if d.is_static else None for d in p.get_partial_shape()])
                        for p in self.compiled.inputs]
        self._outputs = {name: p for p in self.compiled.outputs for name in p.get_names()}

    def get_inputs(self) -> list[SimpleNamespace]:
        """The graph inputs (``name``, ``shape``), as onnxruntime lists them."""
        return self._inputs

    def get_modelmeta(self) -> SimpleNamespace:
        return SimpleNamespace(custom_metadata_map=dict(self._meta))

    def get_overridable_initializers(self) -> list[SimpleNamespace]:
        """The file's optional inputs (initializers that may be fed, e.g. ``image_sizes``)."""
        return [i for i in self._inputs if i.name in self._overridable]

    def run(self, names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs ``names`` (all when ``None``) for ``feeds``; copies, since the request reuses its buffers."""
        known = {i.name for i in self._inputs}
        names = [p.get_any_name() for p in self.compiled.outputs] if names is None else names
        with self._lock:
            result = self.request.infer({k: v for k, v in feeds.items() if k in known})
            return [np.array(result[self._outputs[n]]) for n in names]


__all__ = ["OV_PRECISIONS", "OpenVinoSession", "check_levels", "openvino_available", "openvino_cache_dir"]
