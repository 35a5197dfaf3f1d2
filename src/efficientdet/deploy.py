"""Run an exported EfficientDet (``efficientdet export --format onnx``) without PyTorch.

``OnnxModel("d0.onnx")(images)`` needs only onnxruntime, numpy and Pillow: a D0 process peaks at
~260 MB, where importing the CUDA build of PyTorch alone takes about 500 MB (BENCHMARKS.md). It is the
:class:`~efficientdet.inference.detector.Detector` with the onnxruntime runner
(:class:`~efficientdet.inference.onnxrt.OnnxRunner`), so it returns the same
:class:`~efficientdet.detections.Detections`; everything it needs (input size, mean/std, class names
and category ids, the NMS settings) comes from the file's metadata.

Files exported with ``--nms`` are the torch-free path; their score threshold, IoU threshold and
``max_det`` are fixed at export time (a stricter score threshold or a smaller ``max_det`` can still be
asked for here). Files with raw outputs are post-processed by the PyTorch post-processing (imported on
demand) and accept every setting, soft-NMS included.
"""

from __future__ import annotations

from pathlib import Path

from .inference.detector import Detector
from .inference.onnxrt import is_onnx_file, make_session, run_in_fixed_batches
from .inference.seg_onnxrt import OnnxSegmenter  # segmentation exports: (H, W) masks, also without PyTorch


class OnnxModel(Detector):
    """Detect objects with an exported ``.onnx`` file in onnxruntime (CPU), without PyTorch for NMS files.

    Args:
        path: a file written by ``efficientdet export --format onnx``.
        threads: onnxruntime intra-op threads (default: onnxruntime's choice, one per core).
        score_threshold, max_det: for ``--nms`` files at least / at most the exported values (default:
            those); for raw files any value (defaults 0.25 and 100, as ``predict``).
        iou_threshold, soft_nms, topk: raw files only (an ``--nms`` file has its NMS built in).
        precision: ``fp32`` (default: onnxruntime), ``bf16`` (OpenVINO with bfloat16 convolutions; needs
            AVX512-BF16 or AMX) or ``auto`` (bf16 where it measured faster on this CPU, see
            :mod:`efficientdet.inference.precision`).
    """

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        score_threshold: float | None = None,
        max_det: int | None = None,
        iou_threshold: float | None = None,
        soft_nms: bool = False,
        topk: int | None = None,
        precision: str = "fp32",
    ) -> None:
        from .inference.select import build_runner

        runner = build_runner(weights=Path(path), threads=threads, precision=precision,
                              backend="auto" if precision == "auto" else None)
        super().__init__(runner=runner, score_threshold=score_threshold, max_det=max_det,
                         iou_threshold=iou_threshold, soft_nms=soft_nms or None, topk=topk)
        self.path = self.runner.path
        self.session = self.runner.session
        self.metadata = self.runner.metadata
        self.nms = self.runner.outputs == "nms"

    @property
    def score_threshold(self) -> float:
        return self.settings.score_threshold

    @property
    def max_det(self) -> int:
        return self.settings.max_det


__all__ = ["OnnxModel", "OnnxSegmenter", "is_onnx_file", "make_session", "run_in_fixed_batches"]
