"""Inference: one :class:`Detector` (preprocess -> runner -> post-process) and its runtimes.

- :mod:`.detector`: the Detector; :mod:`.config`: the post-processing settings and their defaults.
- Runners, side by side: :mod:`.torch_runner` (PyTorch), :mod:`.onnxrt` (onnxruntime, raw outputs or
  NMS inside the file; torch-free); :mod:`.select` picks one (and caches the onnxruntime export).
- Inference-time optimisations: :mod:`.fuse` (BatchNorm folding, frozen BiFPN fusion weights) and
  :mod:`.mkldnn` (activations fused into oneDNN convolutions); :mod:`.postprocess` (top-k, decoding,
  NMS / soft-NMS in PyTorch), :mod:`.graph` and :mod:`.onnx_export` (the same post-processing as an ONNX
  graph, for files with NMS inside).

Importing this package does not import PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import PREDICT, PostprocessConfig
    from .detector import Detector
    from .select import BACKENDS, build_runner

_LAZY = {"Detector": ".detector", "PostprocessConfig": ".config", "PREDICT": ".config", "BACKENDS": ".select",
         "build_runner": ".select", "create_detector": ".select"}


def __getattr__(name: str) -> Any:
    if name == "create_detector":
        return create_detector
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def create_detector(model: Any = None, backend: str = "torch", **kwargs: Any) -> Detector:
    """``Detector(model, backend=backend, **kwargs)`` (kept for code written against earlier releases)."""
    from .detector import Detector

    return Detector(model, backend=backend, **kwargs)


__all__ = ["BACKENDS", "PREDICT", "Detector", "PostprocessConfig", "build_runner", "create_detector"]
