"""``Detector``: the one place where inference is defined.

image(s) -> preprocess (letterbox + normalise) -> EfficientDet -> anchors + box decoding ->
post-processing -> :class:`Detections` in original-image pixels. Prediction, evaluation, the
benchmark and export all go through this class.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .anchors import generate_anchors
from .detections import Detections, PreparedBatch
from .errors import ConfigError
from .factory import create_model
from .images import is_single_image, to_pil
from .model.efficientdet import EfficientDet, flatten_outputs
from .postprocess import PostprocessConfig, Postprocessor
from .preprocess import preprocess_batch

ImageInput = str | Path | Image.Image | np.ndarray | torch.Tensor


class Detector:
    """Detect objects in images with an EfficientDet model.

    Args:
        model: a variant name (``efficientdet_d0``, ``d0`` ...) or a built :class:`EfficientDet`.
        weights: checkpoint path or published name (see :func:`efficientdet.create_model`).
        device: ``cpu``, ``cuda`` or a torch device.
        score_threshold, iou_threshold, max_det, soft_nms, topk: post-processing settings.
        image_size: override the network input size (multiple of 128 for the official geometry).
        optimize: run inference on a BatchNorm-folded, channels-last copy of the model
            (:func:`efficientdet.export.fuse.fuse_model`; on the CPU also with each activation fused into
            its convolution, :mod:`efficientdet.export.mkldnn`): same outputs to ~1e-5, about 2x faster on CPU.
            ``None`` (default): on when the Detector builds the model from a name, off when it is given a
            model instance (which may still be training: a fused copy would not follow its weights).
        backend: ``"torch"`` (this class) or ``"onnxruntime"``: the model is exported once (cached) and run in
            onnxruntime on the CPU, NMS included (:class:`efficientdet.export.runtime.OnnxDetector`, which
            also takes ``threads``, ``onnx_path`` and ``batch``); same detections to ~1e-5.
    """

    #: the preprocessed batch's layout: channels-last strides (what the optimised network runs in)
    channels_last_input = True

    def __new__(cls, *args: object, backend: str = "torch", **kwargs: object) -> Detector:
        if cls is Detector and backend != "torch":
            from .export.runtime import detector_class

            cls = detector_class(backend)
        return super().__new__(cls)

    def __init__(
        self,
        model: str | EfficientDet = "efficientdet_d0",
        weights: str | Path | None = None,
        device: str | torch.device = "cpu",
        score_threshold: float = 0.25,
        iou_threshold: float = 0.5,
        max_det: int = 100,
        soft_nms: bool = False,
        topk: int = 5000,
        image_size: int | None = None,
        num_classes: int | None = None,
        optimize: bool | None = None,
        backend: str = "torch",
    ) -> None:
        for name, value, lo, hi in (
            ("score_threshold", score_threshold, 0.0, 1.0),
            ("iou_threshold", iou_threshold, 0.0, 1.0),
        ):
            if not lo <= value <= hi:
                raise ConfigError(f"{name}={value} must be in [{lo}, {hi}]")
        if max_det <= 0:
            raise ConfigError(f"max_det={max_det} must be a positive integer")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda requested but no CUDA GPU is available; use --device cpu")
        if isinstance(model, EfficientDet):
            self.model = model
        else:
            self.model = create_model(model, weights=weights, num_classes=num_classes, image_size=image_size)
        self.model.eval().to(self.device)
        if optimize is None:
            optimize = not isinstance(model, EfficientDet)
        self.network: torch.nn.Module = self.model
        self.channels_last = bool(optimize)
        if optimize:
            from .export.fuse import fuse_model

            self.network = fuse_model(self.model).to(self.device, memory_format=torch.channels_last)
            if self.device.type == "cpu":
                from .export.mkldnn import fuse_conv_activations, mkldnn_available

                if mkldnn_available():
                    fuse_conv_activations(self.network)
        self.config = self.model.config
        self.image_size = self.config.image_size
        self.class_names: list[str | None] = list(
            getattr(self.model, "class_names", []) or [f"class{i}" for i in range(self.config.num_classes)]
        )
        self.category_ids: list[int] = list(
            getattr(self.model, "category_ids", []) or range(1, self.config.num_classes + 1)
        )
        self.postprocess = Postprocessor(PostprocessConfig(score_threshold, iou_threshold, max_det, topk, soft_nms))
        cfg = self.config
        self.anchors = generate_anchors(
            self.image_size, cfg.min_level, cfg.max_level, cfg.anchor_scale, cfg.num_scales, cfg.aspect_ratios
        ).to(self.device)
        unused = [n is None for n in self.class_names]
        self.class_mask = torch.tensor([not u for u in unused], device=self.device) if any(unused) else None

    # -- stages -----------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """RGB PIL images -> (normalised (B, 3, S, S), scales (B,), original (h, w) sizes (B, 2)).

        The batch has channels-last strides (what the optimised network runs in) unless
        ``channels_last_input`` is False (a contiguous NCHW batch, what onnxruntime takes).
        """
        batch, scales = preprocess_batch(images, self.image_size, self.config.mean, self.config.std,
                                         channels_last=self.channels_last_input)
        sizes = [(img.height, img.width) for img in images]
        return batch.to(self.device), torch.tensor(scales, dtype=torch.float64), torch.tensor(sizes)

    @torch.inference_mode()
    def forward_network(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (B, 3, S, S) float batch -> flattened (B, N, C) logits and (B, N, 4) deltas."""
        batch = batch.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        cls, box = self.network(batch)
        return flatten_outputs(cls, box, self.config.num_classes)

    @torch.inference_mode()
    def postprocess_outputs(
        self, cls: torch.Tensor, box: torch.Tensor, scales: torch.Tensor, sizes: torch.Tensor
    ) -> list[dict[str, torch.Tensor]]:
        """Flattened outputs + the preprocessing's scales and original sizes -> per-image detections."""
        return self.postprocess(cls, box, self.anchors, scales.to(self.device), sizes.to(self.device), self.class_mask)

    # -- public -----------------------------------------------------------------------------------
    def __call__(self, images: ImageInput | Iterable[ImageInput], batch_size: int = 8) -> list[Detections]:
        """Detect in one image or many; always returns a list of :class:`Detections` in input order."""
        if batch_size <= 0:
            raise ConfigError(f"batch_size={batch_size} must be a positive integer")
        items = [images] if is_single_image(images) else list(images)  # type: ignore[arg-type]
        results: list[Detections] = []
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            results.extend(self._run(chunk))
        return results

    def prepare(self, images: Sequence[ImageInput]) -> PreparedBatch:
        """The CPU half of a call: images -> RGB PIL images + the letterboxed, normalised batch.

        Thread-safe; a pipeline (:mod:`efficientdet.pipeline`) prepares the next batch with it while
        :meth:`detect_prepared` runs the network on this one. ``detect_prepared(prepare(x))`` equals
        ``self(x, batch_size=len(x))``.
        """
        t0 = time.perf_counter()
        pils = [to_pil(x) for x in images]
        inputs = self.preprocess(pils)
        return PreparedBatch(list(images), pils, inputs, time.perf_counter() - t0)

    def detect_prepared(self, prepared: PreparedBatch) -> list[Detections]:
        """Network + post-processing of a :meth:`prepare`'d batch -> one :class:`Detections` per image."""
        batch, scales, sizes = prepared.inputs
        t1 = time.perf_counter()
        cls, box = self.forward_network(batch)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        outs = self.postprocess_outputs(cls, box, scales, sizes)
        t3 = time.perf_counter()
        n = len(prepared.images)
        timings = {
            "preprocess_ms": prepared.preprocess_s * 1e3 / n,
            "inference_ms": (t2 - t1) * 1e3 / n,
            "postprocess_ms": (t3 - t2) * 1e3 / n,
        }
        return [
            Detections.from_arrays(out["boxes"].cpu().numpy(), out["scores"].cpu().numpy(),
                                   out["labels"].cpu().numpy(), self.class_names, self.category_ids,
                                   (img.width, img.height), src, timings)
            for src, img, out in zip(prepared.sources, prepared.images, outs)
        ]

    def _run(self, chunk: list[ImageInput]) -> list[Detections]:
        return self.detect_prepared(self.prepare(chunk))
