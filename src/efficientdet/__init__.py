"""EfficientDet: scalable and efficient object detection (Tan, Pang, Le, CVPR 2020).

Python API::

    import efficientdet
    efficientdet.list_models()
    model = efficientdet.create_model("efficientdet_d0", weights="tf_efficientdet_d0")
    detector = efficientdet.Detector("efficientdet_d0", weights="tf_efficientdet_d0")
    detections = detector(["a.jpg", "b.jpg"])  # boxes xyxy in original pixels, scores, labels, names

    # an exported model without PyTorch (onnxruntime + numpy + Pillow only)
    from efficientdet.deploy import OnnxModel
    detections = OnnxModel("d0.onnx")("a.jpg")

The names below are imported on first use, so ``efficientdet.deploy`` (and the command line's help)
run without importing PyTorch (about 500 MB of memory for the CUDA build).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, DataError, EfficientDetError, WeightsError
from .version import __version__ as __version__

if TYPE_CHECKING:
    from .detections import Detections
    from .factory import create_model
    from .inference.detector import Detector
    from .model.efficientdet import EfficientDet
    from .variants import ModelConfig, compound_scaling, get_config, list_models

_LAZY = {
    "Detections": ".detections",
    "Detector": ".inference.detector",
    "create_model": ".factory",
    "EfficientDet": ".model.efficientdet",
    "ModelConfig": ".variants",
    "compound_scaling": ".variants",
    "get_config": ".variants",
    "list_models": ".variants",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        # a submodule reached as an attribute (efficientdet.model.efficientdet...): load what an eager
        # ``import efficientdet`` used to, so the nested submodules are there as before
        for module in set(_LAZY.values()):
            importlib.import_module(module, __name__)
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "ConfigError",
    "DataError",
    "Detections",
    "Detector",
    "EfficientDet",
    "EfficientDetError",
    "ModelConfig",
    "WeightsError",
    "compound_scaling",
    "create_model",
    "get_config",
    "list_models",
]
