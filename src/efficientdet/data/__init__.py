"""Detection data: readers (COCO, VOC, YOLO), the internal form, transforms, dataset, synthetic set.

Boxes are ``xyxy`` float32 pixels everywhere, labels 0-based contiguous ``int64``; see
:mod:`efficientdet.data.records` for the conventions.
"""

from .coco import read_coco
from .dataset import DetectionDataset, collate
from .read import detect_format, read_dataset
from .records import DetectionData, LoadReport, Sample
from .synth import make_synthetic_dataset
from .transforms import TrainTransform
from .voc import read_voc
from .yolo import load_names, read_yolo

__all__ = [
    "DetectionData",
    "DetectionDataset",
    "LoadReport",
    "Sample",
    "TrainTransform",
    "collate",
    "detect_format",
    "load_names",
    "make_synthetic_dataset",
    "read_coco",
    "read_dataset",
    "read_voc",
    "read_yolo",
]
