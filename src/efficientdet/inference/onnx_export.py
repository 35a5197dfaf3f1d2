"""ONNX export: one self-contained ``.onnx`` file (weights inside, no external data), opset >= 17.

Input ``images``: normalised float32 (B, 3, S, S), i.e. the letterboxed RGB canvas (see
:func:`efficientdet.preprocess.letterbox`) as ``(x / 255 - mean) / std``, NCHW. B is fixed (``batch``)
or dynamic (``dynamic_batch=True``). Outputs: ``cls_logits`` (B, N, C) and ``box_deltas`` (B, N, 4)
(raw), or with ``nms=True`` ``boxes`` (B, max_det, 4) network pixels, ``scores`` (B, max_det),
``labels`` (B, max_det) int64 (-1 = padding) and ``num_detections`` (B,) int64
(see :mod:`efficientdet.inference.graph`). NMS files have a second, optional input ``image_sizes``
(B, 2) or (1, 2) float32: each image's (height, width) on the canvas in network pixels, to clip boxes to
the image before NMS exactly as :class:`~efficientdet.inference.detector.Detector` does; left out, boxes are
clipped to the canvas (an ONNX input with a same-named initializer: onnxruntime lists it under
``get_overridable_initializers()``, not ``get_inputs()``).

``metadata_props`` (all strings, JSON where structured): ``class_names``, ``category_ids``, ``config``
(the model config), ``image_size``, ``mean``, ``std``, ``input_format``, ``outputs`` (``raw`` or
``nms``) and, for ``nms``, ``score_threshold``, ``iou_threshold``, ``max_det``, ``topk``.

The legacy TorchScript-based exporter (``dynamo=False``) is used: TF-"same" padding computes pad sizes
from Python-int shapes, which tracing turns into constants for the fixed S (only B may vary).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..model.efficientdet import EfficientDet
from .config import DEFAULTS
from .fuse import fuse_model
from .graph import NMSGraph, RawGraph

MIN_OPSET = 17


def build_graph(
    model: EfficientDet,
    nms: bool = False,
    half: bool = False,
    fuse: bool = True,
    score_threshold: float = DEFAULTS.score_threshold,
    iou_threshold: float = DEFAULTS.iou_threshold,
    max_det: int = DEFAULTS.max_det,
    topk: int = DEFAULTS.topk,
) -> torch.nn.Module:
    """The eval-mode module that gets exported (BN-folded by default)."""
    net = fuse_model(model) if fuse else model.eval()
    if half:
        net = net.half()
    cfg = model.config
    if not nms:
        return RawGraph(net, cfg.num_classes, half).eval()
    keep = model.labels.keep_mask()
    mask = torch.tensor(keep) if keep is not None else None
    return NMSGraph(net, cfg, mask, score_threshold, iou_threshold, max_det, topk, half).eval()


def export_metadata(model: EfficientDet, nms: bool, **settings: object) -> dict[str, str]:
    """The string metadata stored in exported files (ONNX ``metadata_props``, TorchScript extra file)."""
    cfg = model.config
    names = [n if n is not None else "" for n in model.labels.names]  # "" = an ignored slot
    meta = {
        "producer": "efficientdet",
        "class_names": json.dumps(names),
        "category_ids": json.dumps([int(i) for i in model.labels.category_ids]),
        "config": json.dumps(cfg.to_dict()),
        "image_size": str(cfg.image_size),
        "mean": json.dumps(list(cfg.mean)),
        "std": json.dumps(list(cfg.std)),
        "input_format": "float32 (B, 3, S, S) RGB, letterboxed top-left, normalised (x / 255 - mean) / std",
        "outputs": "nms" if nms else "raw",
    }
    if nms:
        meta.update({k: json.dumps(v) for k, v in settings.items()})
    return meta


def prepare_export(
    model: EfficientDet, path: str | Path, batch: int, nms: bool, half: bool, fuse: bool,
    score_threshold: float, iou_threshold: float, max_det: int, topk: int,
) -> tuple[Path, torch.nn.Module, torch.Tensor, dict[str, str]]:
    """What every exporter needs: the output path (folder created), the graph from :func:`build_graph`,
    an example (batch, 3, S, S) input and the :func:`export_metadata` strings."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = build_graph(model, nms, half, fuse, score_threshold, iou_threshold, max_det, topk)
    size = model.config.image_size
    example = torch.randn(batch, 3, size, size)
    meta = export_metadata(model, nms, score_threshold=score_threshold, iou_threshold=iou_threshold,
                           max_det=max_det, topk=topk)
    return path, graph, example, meta


def export_onnx(
    model: EfficientDet,
    path: str | Path,
    batch: int = 1,
    dynamic_batch: bool = False,
    nms: bool = False,
    half: bool = False,
    opset: int = 17,
    score_threshold: float = DEFAULTS.score_threshold,
    iou_threshold: float = DEFAULTS.iou_threshold,
    max_det: int = DEFAULTS.max_det,
    topk: int = DEFAULTS.topk,
    fuse: bool = True,
) -> Path:
    """Export ``model`` (built at its ``config.image_size``) to one ONNX file and return its path."""
    import onnx

    if opset < MIN_OPSET:
        raise ConfigError(f"--opset {opset} is too old; use {MIN_OPSET} or newer")
    if batch <= 0:
        raise ConfigError(f"--batch {batch} must be a positive integer")
    path, graph, example, meta = prepare_export(model, path, batch, nms, half, fuse, score_threshold,
                                                iou_threshold, max_det, topk)
    outputs = ["boxes", "scores", "labels", "num_detections"] if nms else ["cls_logits", "box_deltas"]
    if nms and batch == 1 and not dynamic_batch:
        graph.single_image = True  # type: ignore[assignment]
    inputs = ["images", "image_sizes"] if nms else ["images"]
    dynamic_axes = {name: {0: "batch"} for name in ["images", *outputs]} if dynamic_batch else {}
    size = float(model.config.image_size)
    args: tuple[torch.Tensor, ...] = (example,)
    if nms:  # optional clip sizes: (1, 2) broadcasts over the batch, (B, 2) is per image
        args = (example, torch.full((1, 2), size))
        dynamic_axes["image_sizes"] = {0: "sizes"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python-int shapes (intended: S is fixed)
        torch.onnx.export(
            graph,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic_axes or None,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    proto = onnx.load(str(path))
    if nms:  # an input with an initializer of the same name is optional: default = the whole canvas
        from onnx import numpy_helper

        proto.graph.initializer.append(numpy_helper.from_array(np.full((1, 2), size, np.float32), "image_sizes"))
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "EfficientDet exported by efficientdet; see metadata_props"
    onnx.save(proto, str(path))  # < 2 GB: a single self-contained file
    return path


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file as a dict (see :func:`.onnxrt.onnx_metadata`)."""
    from .onnxrt import onnx_metadata

    return onnx_metadata(path)
