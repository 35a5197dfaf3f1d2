"""EfficientDet: scalable and efficient object detection (Tan, Pang, Le, CVPR 2020)."""

__version__ = "0.1.0"
