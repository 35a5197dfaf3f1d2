"""Inference runtimes: the :class:`~efficientdet.detector.Detector` with its network stage in onnxruntime.

``create_detector(model, backend="onnxruntime", ...)`` exports the model (BN folded, fixed batch) once to a
cache folder keyed by the weights' content hash and the export settings (``$EFFICIENTDET_CACHE/onnx`` or
``~/.cache/efficientdet/onnx``), then returns an :class:`OnnxDetector`. With hard NMS (the default) the
file has the post-processing inside (``--nms``: top-k, decoding, clipping to each image, NMS) and runs
through :class:`efficientdet.deploy.OnnxModel`, the fastest path (BENCHMARKS.md); with soft-NMS it has
raw outputs and the PyTorch post-processing follows. Either way the detections equal the torch
Detector's to ~1e-5.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..deploy import OnnxModel, make_session, run_in_fixed_batches
from ..detections import Detections, PreparedBatch
from ..detector import Detector
from ..errors import ConfigError
from .onnx import export_onnx

BACKENDS = ("torch", "onnxruntime")


def onnx_cache_dir() -> Path:
    root = os.environ.get("EFFICIENTDET_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "efficientdet"
    return base / "onnx"


def _model_key(model: torch.nn.Module, opset: int, settings: str = "raw") -> str:
    """Hash of the weights + config + export settings (a changed checkpoint gets a new file)."""
    h = hashlib.sha256()
    h.update(repr(model.config.to_dict()).encode())  # type: ignore[attr-defined]
    h.update(repr(getattr(model, "class_names", None)).encode())  # masked classes are in NMS graphs
    h.update(f"{settings}-v3-opset{opset}-torch{torch.__version__}".encode())  # v3: graph format of session 3
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class OnnxDetector(Detector):
    """A :class:`Detector` whose ``forward_network`` runs an exported ONNX file in onnxruntime (CPU)."""

    channels_last_input = False  # preprocessing writes the contiguous NCHW batch onnxruntime takes

    def __init__(self, *args: object, onnx_path: str | Path | None = None, threads: int | None = None,
                 opset: int = 17, batch: int = 1, **kwargs: object) -> None:
        kwargs["optimize"] = False  # the exported graph is already BN-folded
        kwargs["backend"] = "torch"  # the parent builds the PyTorch model that gets exported
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if self.device.type != "cpu":
            raise ConfigError("--backend onnxruntime runs on the CPU here; use --device cpu or --backend torch")
        cfg = self.postprocess.config
        self.nms = not cfg.soft_nms
        settings = dict(score_threshold=cfg.score_threshold, iou_threshold=cfg.iou_threshold,
                        max_det=cfg.max_det, topk=cfg.topk) if self.nms else {}
        if onnx_path is None:
            # a fixed batch size runs ~20% faster in onnxruntime than a dynamic one; other batch sizes
            # are split / zero-padded to it (deploy.run_in_fixed_batches)
            key = _model_key(self.model, opset, repr(sorted(settings.items())) if self.nms else "raw")
            onnx_path = onnx_cache_dir() / f"{self.config.name}-{self.image_size}-b{batch}-{key}.onnx"
            if not Path(onnx_path).is_file():
                tmp = Path(onnx_path).with_suffix(f".{os.getpid()}.tmp")
                export_onnx(self.model, tmp, batch=batch, opset=opset, nms=self.nms, **settings)
                os.replace(tmp, onnx_path)
        else:  # a given file decides: post-processing inside (--nms export) or raw outputs
            from .onnx import read_onnx_metadata

            self.nms = read_onnx_metadata(onnx_path).get("outputs") == "nms"
        self.onnx_path = Path(onnx_path)
        self.deployed = OnnxModel(self.onnx_path, threads=threads, score_threshold=cfg.score_threshold,
                                  max_det=cfg.max_det) if self.nms else None
        self.session = self.deployed.session if self.deployed else make_session(self.onnx_path, threads)
        self.network = None  # type: ignore[assignment]

    def prepare(self, images: Sequence[object]) -> PreparedBatch:
        if self.deployed is not None:  # network + post-processing in onnxruntime, numpy around it
            return self.deployed.prepare(images)
        return super().prepare(images)

    def detect_prepared(self, prepared: PreparedBatch) -> list[Detections]:
        if self.deployed is not None:
            return self.deployed.detect_prepared(prepared)
        return super().detect_prepared(prepared)

    def forward_network(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (B, 3, S, S) float batch -> (B, N, C) logits and (B, N, 4) deltas from onnxruntime.

        Only for raw-output files (soft-NMS); an ``--nms`` file runs whole in ``__call__``."""
        if self.deployed is not None:
            raise ConfigError(f"{self.onnx_path} has the post-processing inside; call the detector instead")
        x = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        cls, box = run_in_fixed_batches(self.session, ["cls_logits", "box_deltas"], {"images": x})
        return torch.from_numpy(cls), torch.from_numpy(box)


def detector_class(backend: str) -> type[Detector]:
    """The :class:`Detector` class for ``backend`` (``Detector(..., backend=...)`` uses this)."""
    if backend == "torch":
        return Detector
    if backend == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise ConfigError("--backend onnxruntime needs the onnxruntime package; use --backend torch") from exc
        return OnnxDetector
    raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def create_detector(model: object = "efficientdet_d0", backend: str = "torch", **kwargs: object) -> Detector:
    """A Detector for ``backend``: ``torch`` (BN-folded, channels-last PyTorch) or ``onnxruntime``.

    ``kwargs`` are :class:`Detector`'s (weights, device, score_threshold, iou_threshold, max_det,
    soft_nms, image_size ...); ``onnxruntime`` also takes ``onnx_path`` (use an existing export) and
    ``threads``.
    """
    cls = detector_class(backend)
    if cls is Detector:
        kwargs.pop("threads", None)
        kwargs.pop("onnx_path", None)
    return cls(model, **kwargs)  # type: ignore[arg-type]
