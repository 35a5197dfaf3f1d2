"""What a weights file does, and the segmenter that runs a segmentation-only one.

A checkpoint or export is one of three kinds: a detector (``"detect"``: boxes, run by
:class:`~efficientdet.inference.detector.Detector`), a segmentation-only model (``"segment"``: a
``*_seg`` checkpoint whose config has ``detect: False``, or an ``.onnx`` exported with
``--task segment``; one (H, W) uint8 class-index mask per image, run by
:class:`~efficientdet.inference.segmenter.Segmenter` or the torch-free
:class:`~efficientdet.inference.seg_onnxrt.OnnxSegmenter`) or a joint model (``"detect,segment"``:
detection and segmentation heads on one BiFPN; the Detector's results carry ``.mask``). ``predict`` and
``serve`` both decide with :func:`weights_task` and load with :func:`load_segmenter`.

Importing this module does not import PyTorch (an ``.onnx`` file is told apart from its metadata).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

DETECT, SEGMENT, JOINT = "detect", "segment", "detect,segment"


def weights_task(weights: str | Path | None) -> str:
    """``"segment"``, ``"detect,segment"`` or ``"detect"`` for a checkpoint or an exported ``.onnx`` file
    (``None``, a published name or an ordinary checkpoint: ``"detect"``)."""
    if not weights:
        return DETECT
    from .onnxrt import is_onnx_file

    if is_onnx_file(weights):
        return SEGMENT if _onnx_outputs(weights) == "seg" else DETECT
    path = Path(weights)
    if not path.is_file():  # a published name: a COCO detector
        return DETECT
    memo = _memo_path(path)
    try:
        task = memo.read_text(encoding="utf-8").strip()
        if task in (DETECT, SEGMENT, JOINT):
            return task
    except OSError:
        pass
    from ..weights import load_checkpoint

    config = load_checkpoint(weights).config or {}
    task = DETECT if not config.get("seg_head") else JOINT if config.get("detect", True) else SEGMENT
    try:  # remembered, so that the next command on this file needs no PyTorch to decide
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(task, encoding="utf-8")
        os.replace(tmp, memo)
    except OSError:
        pass
    return task


def _memo_path(path: Path) -> Path:
    """Where :func:`weights_task` remembers a checkpoint's task: keyed by its absolute path, size and
    modification time (a rewritten file gets a new entry), next to the onnxruntime exports."""
    from .select import onnx_cache_dir

    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:20]
    return onnx_cache_dir().parent / "tasks" / f"{path.stem}-{key}.txt"


def load_segmenter(weights: str | Path, model: str | None = None, device: str = "cpu",
                   image_size: int | None = None, batch_size: int = 8, threads: int | None = None) -> Any:
    """The segmenter of a segmentation-only ``weights`` file: an exported ``.onnx`` runs in onnxruntime
    (:class:`~.seg_onnxrt.OnnxSegmenter`, torch-free), a checkpoint in PyTorch
    (:class:`~.segmenter.Segmenter` on ``create_model(model, weights=..., image_size=...)``).

    Both are called as ``segmenter(images, batch_size=n) -> [(H, W) uint8 mask, ...]`` at the original sizes
    and have ``class_names`` (segmentation classes, background first), ``image_size`` and ``config``.
    """
    from ..errors import ConfigError
    from .onnxrt import is_onnx_file

    if is_onnx_file(weights):
        if str(device) != "cpu" or image_size is not None:
            raise ConfigError(f"{weights}: an exported ONNX file runs in onnxruntime on the CPU at its exported "
                              "size; drop --device and --image-size")
        from .seg_onnxrt import OnnxSegmenter

        return OnnxSegmenter(weights, threads=threads)
    from ..factory import create_model
    from .segmenter import Segmenter

    return Segmenter(create_model(model, weights=weights, image_size=image_size), device=device,
                     batch_size=batch_size)


class MasksAsDetections:
    """A segmenter called as a detector: ``(images, batch_size=n) -> [Detections]`` with no boxes and
    ``.mask`` the (H, W) uint8 class map at the original size. So that what takes detectors (the video
    loop, tracking-free) runs segmentation-only models too; ``seg_class_names`` names the mask values."""

    def __init__(self, segmenter: Any) -> None:
        self.segmenter = segmenter
        self.seg_class_names = list(segmenter.class_names)
        self.device = getattr(segmenter, "device", "cpu")

    def __call__(self, images: Any, batch_size: int = 1) -> list[Any]:
        import time

        import numpy as np

        from ..detections import Detections
        from ..images import is_single_image, to_pil

        items = [to_pil(im) for im in ([images] if is_single_image(images) else list(images))]
        t0 = time.perf_counter()
        masks = self.segmenter(items, batch_size=batch_size) if items else []
        ms = (time.perf_counter() - t0) * 1e3 / max(1, len(items))
        out = []
        for image, mask in zip(items, masks):
            det = Detections.from_arrays(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                                         [], [], image.size, None,
                                         {"preprocess_ms": 0.0, "inference_ms": ms, "postprocess_ms": 0.0})
            det.mask = mask
            out.append(det)
        return out


def _onnx_outputs(path: str | Path) -> str | None:
    """The ``outputs`` metadata entry of an exported file (``seg``, ``nms``, ``raw``), read with ``onnx``."""
    from ..errors import WeightsError
    from .onnxrt import onnx_metadata

    if not Path(path).is_file():
        raise WeightsError(f"{path}: no such file; export one with 'efficientdet export'")
    try:
        return onnx_metadata(path).get("outputs")
    except Exception as exc:  # onnx raises its own (protobuf) errors
        raise WeightsError(f"{path}: not a loadable ONNX model ({type(exc).__name__})") from None
