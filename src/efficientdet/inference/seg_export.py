"""ONNX export of segmentation (and joint) networks with the arg-max in the graph.

Input ``images``: the normalised (B, 3, S, S) letterbox canvas, as for detection. Output ``masks``:
uint8 (B, S, S) class indices on the canvas (the arg-max over the classes of the logits at input
resolution). :class:`efficientdet.deploy.OnnxSegmenter` (:mod:`.seg_onnxrt`) crops each image's
region and resizes it (nearest) to the original size, without PyTorch. Metadata: the detection
file's keys (``outputs`` = ``seg``) plus ``seg_class_names``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from .fuse import fuse_model
from .onnx_export import MIN_OPSET, export_metadata
from .segmenter import seg_logits


class SegGraph(nn.Module):
    """Normalised images (B, 3, S, S) -> uint8 (B, S, S) arg-max class map."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return seg_logits(self.model(images)).argmax(1).to(torch.uint8)


def export_seg_onnx(model: nn.Module, path: str | Path, batch: int = 1, dynamic_batch: bool = False,
                    opset: int = 17, fuse: bool = True) -> Path:
    """Export a model with a segmentation head to one self-contained ONNX file; return its path."""
    import onnx

    if not getattr(model.config, "seg_head", None):
        raise ConfigError(f"{model.config.name} has no segmentation head; export it without --task segment")
    if opset < MIN_OPSET:
        raise ConfigError(f"--opset {opset} is too old; use {MIN_OPSET} or newer")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = SegGraph(fuse_model(model) if fuse else model.eval()).eval()
    size = model.config.image_size
    example = torch.randn(batch, 3, size, size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python-int shapes (S is fixed)
        torch.onnx.export(graph, (example,), str(path), input_names=["images"], output_names=["masks"],
                          dynamic_axes={"images": {0: "batch"}, "masks": {0: "batch"}} if dynamic_batch else None,
                          opset_version=opset, dynamo=False, do_constant_folding=True)
    proto = onnx.load(str(path))
    meta = export_metadata(model, nms=False)  # type: ignore[arg-type]
    meta["outputs"] = "seg"
    meta["seg_class_names"] = json.dumps(list(getattr(model, "seg_class_names", None) or []))
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "EfficientDet segmentation exported by efficientdet; see metadata_props"
    onnx.save(proto, str(path))
    return path
