"""EfficientDet: scalable and efficient object detection (Tan, Pang, Le, CVPR 2020).

Python API::

    import efficientdet
    efficientdet.list_models()
    model = efficientdet.create_model("efficientdet_d0", weights="tf_efficientdet_d0")
    detector = efficientdet.Detector("efficientdet_d0", weights="tf_efficientdet_d0")
    detections = detector(["a.jpg", "b.jpg"])  # boxes xyxy in original pixels, scores, labels, names
"""

from .detector import Detections, Detector
from .errors import ConfigError, DataError, EfficientDetError, WeightsError
from .factory import create_model
from .model.efficientdet import EfficientDet
from .variants import ModelConfig, compound_scaling, get_config, list_models

__version__ = "0.1.0"
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
