"""TorchScript export (``torch.jit.trace``) of the same graphs as the ONNX export.

The file is a ``torch.jit`` archive loadable without this package (``torch.jit.load``); the metadata of
:func:`efficientdet.export.onnx.export_metadata` is stored as the extra file ``efficientdet.json``.
Input and outputs are those of :mod:`efficientdet.inference.graph`. Raw graphs accept any batch size; the
in-graph NMS loops over the traced batch, so ``nms=True`` files are fixed to ``batch``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from ..errors import ConfigError
from ..inference.config import DEFAULTS
from ..inference.onnx_export import prepare_export
from ..model.efficientdet import EfficientDet

EXTRA_FILE = "efficientdet.json"


def export_torchscript(
    model: EfficientDet,
    path: str | Path,
    batch: int = 1,
    dynamic_batch: bool = False,
    nms: bool = False,
    half: bool = False,
    score_threshold: float = DEFAULTS.score_threshold,
    iou_threshold: float = DEFAULTS.iou_threshold,
    max_det: int = DEFAULTS.max_det,
    topk: int = DEFAULTS.topk,
    fuse: bool = True,
) -> Path:
    """Trace ``model``'s inference graph and save it to ``path`` (``.pt``); returns the path."""
    if nms and dynamic_batch:
        raise ConfigError("--format torchscript --nms needs a fixed --batch (the traced NMS is unrolled per image)")
    path, graph, example, meta = prepare_export(model, path, batch, nms, half, fuse, score_threshold,
                                                iou_threshold, max_det, topk)
    if nms and batch == 1:
        graph.single_image = True  # type: ignore[assignment]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(graph, example, check_trace=False)
    torch.jit.save(traced, str(path), _extra_files={EXTRA_FILE: json.dumps(meta)})
    return path


def load_torchscript(path: str | Path, device: str = "cpu") -> tuple[torch.jit.ScriptModule, dict[str, str]]:
    """Load a file written by :func:`export_torchscript`: (module, metadata dict)."""
    extra = {EXTRA_FILE: ""}
    module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    return module.eval(), json.loads(extra[EXTRA_FILE] or "{}")
