"""Inference runtimes: the :class:`~efficientdet.detector.Detector` with its network stage in onnxruntime.

``create_detector(model, backend="onnxruntime", ...)`` exports the network (raw outputs, dynamic batch,
BN folded) once to a cache folder keyed by the weights' content hash and the export settings
(``$EFFICIENTDET_CACHE/onnx`` or ``~/.cache/efficientdet/onnx``), then returns an :class:`OnnxDetector`:
same preprocessing and post-processing as the torch Detector, so results are the same to ~1e-5.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from ..deploy import make_session, run_in_fixed_batches
from ..detector import Detector
from ..errors import ConfigError
from .onnx import export_onnx

BACKENDS = ("torch", "onnxruntime")


def onnx_cache_dir() -> Path:
    root = os.environ.get("EFFICIENTDET_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "efficientdet"
    return base / "onnx"


def _model_key(model: torch.nn.Module, opset: int) -> str:
    """Hash of the weights + config + export settings (a changed checkpoint gets a new file)."""
    h = hashlib.sha256()
    h.update(repr(model.config.to_dict()).encode())  # type: ignore[attr-defined]
    h.update(f"raw-v2-opset{opset}-torch{torch.__version__}".encode())  # v2: graph without a Cast copy
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
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if self.device.type != "cpu":
            raise ConfigError("--backend onnxruntime runs on the CPU here; use --device cpu or --backend torch")
        if onnx_path is None:
            folder = onnx_cache_dir()
            # a fixed batch size runs ~20% faster in onnxruntime than a dynamic one; other batch sizes
            # are split / zero-padded to it in forward_network
            key = _model_key(self.model, opset)
            onnx_path = folder / f"{self.config.name}-{self.image_size}-b{batch}-{key}.onnx"
            if not Path(onnx_path).is_file():
                tmp = Path(onnx_path).with_suffix(f".{os.getpid()}.tmp")
                export_onnx(self.model, tmp, batch=batch, opset=opset)
                os.replace(tmp, onnx_path)
        self.onnx_path = Path(onnx_path)
        self.session = make_session(self.onnx_path, threads)
        self.network = None  # type: ignore[assignment]

    def forward_network(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (B, 3, S, S) float batch -> (B, N, C) logits and (B, N, 4) deltas from onnxruntime."""
        x = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        cls, box = run_in_fixed_batches(self.session, ["cls_logits", "box_deltas"], {"images": x})
        return torch.from_numpy(cls), torch.from_numpy(box)


def create_detector(model: object = "efficientdet_d0", backend: str = "torch", **kwargs: object) -> Detector:
    """A Detector for ``backend``: ``torch`` (BN-folded, channels-last PyTorch) or ``onnxruntime``.

    ``kwargs`` are :class:`Detector`'s (weights, device, score_threshold, iou_threshold, max_det,
    soft_nms, image_size ...); ``onnxruntime`` also takes ``onnx_path`` (use an existing export) and
    ``threads``.
    """
    if backend == "torch":
        kwargs.pop("threads", None)
        kwargs.pop("onnx_path", None)
        return Detector(model, **kwargs)  # type: ignore[arg-type]
    if backend == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise ConfigError("--backend onnxruntime needs the onnxruntime package; use --backend torch") from exc
        return OnnxDetector(model, **kwargs)
    raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
