"""``Detector``: the one definition of inference, for every runtime.

image(s) -> preprocess (letterbox + normalise, numpy) -> runner (the network: PyTorch, or an ONNX file
in onnxruntime with raw outputs or with the post-processing inside) -> post-process (top-k, decoding,
NMS; or, for files with NMS inside, the score/count limits) -> :class:`Detections` in original-image
pixels. Prediction, evaluation, the benchmark, the service and ``efficientdet.deploy`` all go through
this class. Importing it does not import PyTorch; the PyTorch runner and post-processing are imported
when a Detector needs them.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..detections import Detections, PreparedBatch
from ..errors import ConfigError
from ..images import is_single_image, to_pil
from ..preprocess import preprocess_images
from .config import PREDICT, PostprocessConfig

ImageInput = Any  # str | Path | PIL.Image.Image | np.ndarray (H, W, 3) | torch.Tensor (3, H, W)


class Detector:
    """Detect objects in images with an EfficientDet model.

    Args:
        model: a variant name (``efficientdet_d0``, ``d0`` ...; default: the one saved in ``weights``, else
            D0) or a built :class:`~efficientdet.model.efficientdet.EfficientDet`.
        weights: checkpoint path or published name (see :func:`efficientdet.create_model`), or an exported
            ``.onnx`` file (run in onnxruntime).
        device: ``cpu``, ``cuda`` or a torch device.
        score_threshold, iou_threshold, max_det, soft_nms, topk: post-processing settings (default
            :data:`efficientdet.inference.config.PREDICT`; for ``--nms`` ONNX files the exported ones).
        image_size: override the network input size (multiple of 128 for the official geometry).
        optimize: run a BatchNorm-folded, channels-last copy with fused activations (same outputs to ~1e-5,
            about 2x faster on the CPU). ``None``: on when the Detector builds the model from a name, off for a
            given model instance (which may still be training).
        backend: ``"torch"`` (default; ``"onnxruntime"`` for ``precision="int8"``), ``"auto"`` or
            ``"onnxruntime"`` (exported once, cached, NMS inside; see
            :mod:`efficientdet.inference.select`). ``threads``, ``onnx_path`` and ``batch`` are onnxruntime's.
        runner: a ready runner (advanced; replaces model/weights/backend).
        precision: ``fp32``, ``bf16`` (PyTorch, oneDNN bfloat16), ``int8`` (onnxruntime, quantised with the
            ``calibration`` images: a folder) or ``auto`` (per CPU; see :mod:`efficientdet.inference.precision`).
    """

    def __init__(
        self,
        model: Any = None,
        weights: str | Path | None = None,
        device: Any = "cpu",
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_det: int | None = None,
        soft_nms: bool | None = None,
        topk: int | None = None,
        image_size: int | None = None,
        num_classes: int | None = None,
        optimize: bool | None = None,
        backend: str | None = None,
        threads: int | None = None,
        onnx_path: str | Path | None = None,
        batch: int = 1,
        runner: Any = None,
        precision: str = "fp32",
        calibration: str | Path | None = None,
    ) -> None:
        given = dict(score_threshold=score_threshold, iou_threshold=iou_threshold, max_det=max_det,
                     soft_nms=soft_nms, topk=topk)
        wanted = PREDICT.updated(**given)
        if runner is None:
            from .select import build_runner

            runner = build_runner(model, weights=weights, backend=backend, device=device, image_size=image_size,
                                  num_classes=num_classes, optimize=optimize, threads=threads, onnx_path=onnx_path,
                                  batch=batch, settings=wanted, precision=precision, calibration=calibration)
        self.runner = runner
        self.config = runner.config
        self.labels = runner.labels
        self.image_size: int = runner.image_size
        self.device = runner.device
        exported: PostprocessConfig | None = getattr(runner, "exported", None)
        self.settings = exported.updated(**given) if exported is not None else wanted
        self._postprocessor: Any = None
        if exported is not None:
            _check_within(runner, exported, self.settings)

    # -- convenience views --------------------------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The PyTorch model (torch runner only)."""
        return getattr(self.runner, "model", None)

    @property
    def class_names(self) -> list[str]:
        return self.labels.display_names

    @property
    def segments(self) -> bool:
        """Whether results carry a semantic ``Detections.mask``: a joint (detection + segmentation) or a
        segmentation-only model (no boxes then) on the PyTorch runner. Exported detection files and the
        onnxruntime backend hold the detection outputs only (segmentation files: ``deploy.OnnxSegmenter``)."""
        return bool(getattr(self.config, "seg_head", None)) and self.model is not None

    @property
    def seg_class_names(self) -> list[str]:
        """Segmentation classes of a joint model (index = mask value, background first); else empty."""
        return list(getattr(self.model, "seg_class_names", None) or []) if self.segments else []

    def with_settings(self, **changes: Any) -> Detector:
        """A copy with other post-processing settings (``score_threshold``, ``iou_threshold``, ``max_det``,
        ``soft_nms``, ``topk``: :class:`PostprocessConfig` fields) that shares this one's runner.

        Shallow: the network, its weights and its memory are not copied, so a copy per option set is cheap
        (the service keeps one per distinct request options). A file with NMS inside accepts only settings
        within its exported ones (ConfigError otherwise), as the constructor does.
        """
        clone = copy.copy(self)
        clone.settings = self.settings.updated(**changes)
        clone._postprocessor = None  # built from the new settings on first use
        exported: PostprocessConfig | None = getattr(self.runner, "exported", None)
        if exported is not None:
            _check_within(self.runner, exported, clone.settings)
        return clone

    @property
    def category_ids(self) -> list[int]:
        return list(self.labels.category_ids)

    # -- stages -------------------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """RGB PIL images -> (normalised batch in the runner's layout, scales (B,), original (h, w) sizes (B, 2)).

        The batch is float32 (B, S, S, 3) for a channels-last runner (a channels-last (B, 3, S, S) view
        once it is a tensor), else contiguous (B, 3, S, S)."""
        r = self.runner
        batch, scales = preprocess_images(images, self.image_size, r.mean, r.std, channels_last=r.channels_last)
        sizes = np.asarray([(img.height, img.width) for img in images], dtype=np.int64).reshape(-1, 2)
        return batch, np.asarray(scales, dtype=np.float64), sizes

    def forward_network(self, batch: Any, canvas_hw: np.ndarray | None = None) -> tuple[Any, ...]:
        """The runner's outputs for a preprocessed batch (raw (B, N, C) logits + (B, N, 4) deltas, or the
        outputs of a file with NMS inside)."""
        return self.runner.run(batch, canvas_hw)

    def postprocess_outputs(self, outputs: Sequence[Any], scales: np.ndarray, sizes: np.ndarray
                            ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Runner outputs -> per image (boxes (n, 4) xyxy original pixels, scores (n,), labels (n,))."""
        if self.runner.outputs == "nms":
            boxes, scores, labels, num = outputs
            out = []
            for i in range(len(scales)):
                n = int(num[i])
                keep = scores[i, :n] >= self.settings.score_threshold
                keep[self.settings.max_det:] = False
                out.append((boxes[i, :n][keep] / np.float32(scales[i]), scores[i, :n][keep], labels[i, :n][keep]))
            return out
        return self._postprocess_raw(outputs, scales, sizes)

    def _postprocess_raw(self, outputs: Sequence[Any], scales: np.ndarray, sizes: np.ndarray
                         ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        try:
            import torch
        except ImportError as exc:  # the torch-free deployment path with a file exported without --nms
            where = getattr(self.runner, "path", None) or "this model"
            raise ConfigError(f"{where} has raw outputs (exported without --nms), whose post-processing needs "
                              "PyTorch: re-export with 'efficientdet export --nms' for the torch-free path, or "
                              "pip install torch") from exc

        from ..anchors import anchors_for
        from .postprocess import Postprocessor

        device = torch.device(self.device)
        if self._postprocessor is None:
            keep = self.labels.keep_mask()
            self._postprocessor = (Postprocessor(self.settings), anchors_for(self.config).to(device),
                                   torch.tensor(keep, device=device) if keep is not None else None)
        post, anchors, mask = self._postprocessor
        cls, box = (torch.as_tensor(o).to(device) for o in outputs)
        with torch.inference_mode():
            dets = post(cls, box, anchors, torch.from_numpy(scales).to(device),
                        torch.from_numpy(sizes).to(device), mask)
        return [(d["boxes"].cpu().numpy(), d["scores"].cpu().numpy(), d["labels"].cpu().numpy()) for d in dets]

    # -- public -------------------------------------------------------------------------------------------
    def __call__(self, images: ImageInput | Iterable[ImageInput], batch_size: int = 8) -> list[Detections]:
        """Detect in one image or many; always returns a list of :class:`Detections` in input order."""
        if batch_size <= 0:
            raise ConfigError(f"batch_size={batch_size} must be a positive integer")
        items = [images] if is_single_image(images) else list(images)
        results: list[Detections] = []
        for start in range(0, len(items), batch_size):
            results.extend(self._run(items[start : start + batch_size]))
        return results

    def prepare(self, images: Sequence[ImageInput]) -> PreparedBatch:
        """The CPU half of a call: images -> RGB PIL images + the letterboxed, normalised batch.

        Thread-safe: a pipeline (:mod:`efficientdet.pipeline`) prepares the next batch with it while
        :meth:`detect_prepared` runs the network on this one. ``detect_prepared(prepare(x))`` equals
        ``self(x, batch_size=len(x))``.
        """
        t0 = time.perf_counter()
        pils = [to_pil(x) for x in images]
        inputs = self.preprocess(pils)
        return PreparedBatch(list(images), pils, inputs, time.perf_counter() - t0)

    def detect_prepared(self, prepared: PreparedBatch) -> list[Detections]:
        """Runner + post-processing of a :meth:`prepare`'d batch -> one :class:`Detections` per image."""
        batch, scales, sizes = prepared.inputs
        t1 = time.perf_counter()
        outputs = self.forward_network(batch, sizes.astype(np.float32) * scales.astype(np.float32)[:, None])
        seg = None
        if self.runner.outputs == "raw" and len(outputs) == 3:  # a joint model: segmentation logits too
            seg, outputs = outputs[2], outputs[:2]
        t2 = time.perf_counter()
        if self.runner.outputs == "seg":  # a segmentation-only model: no boxes, the mask
            seg = outputs[0]
            outs = [(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))] * len(scales)
        else:
            outs = self.postprocess_outputs(outputs, scales, sizes)
        masks: list[Any] = [None] * len(prepared.images)
        if seg is not None:
            from .segmenter import logits_to_masks

            masks = logits_to_masks(seg, [img.size for img in prepared.images], scales.tolist())
        t3 = time.perf_counter()
        n = len(prepared.images)
        timings = {"preprocess_ms": prepared.preprocess_s * 1e3 / n, "inference_ms": (t2 - t1) * 1e3 / n,
                   "postprocess_ms": (t3 - t2) * 1e3 / n}
        names = self.labels.display_names
        results = [Detections.from_arrays(b, s, lab, names, self.labels.category_ids, (img.width, img.height), src,
                                          timings)
                   for src, img, (b, s, lab) in zip(prepared.sources, prepared.images, outs)]
        for det, mask in zip(results, masks):
            det.mask = mask
        return results

    def _run(self, chunk: list[ImageInput]) -> list[Detections]:
        return self.detect_prepared(self.prepare(chunk))


def _check_within(runner: Any, exported: PostprocessConfig, wanted: PostprocessConfig) -> None:
    """A file with NMS inside can only be asked for a stricter score threshold or fewer detections."""
    fix = (f"re-export without --nms (raw outputs) or with the setting you need; {runner.path} has "
           f"score_threshold={exported.score_threshold}, iou_threshold={exported.iou_threshold}, "
           f"max_det={exported.max_det}, topk={exported.topk}")
    if wanted.soft_nms or wanted.iou_threshold != exported.iou_threshold or wanted.topk != exported.topk:
        raise ConfigError(f"{runner.path}: soft-NMS, --iou and topk are fixed in an --nms export; {fix}")
    if wanted.score_threshold < exported.score_threshold or wanted.max_det > exported.max_det:
        raise ConfigError(f"{runner.path}: score threshold {wanted.score_threshold} / max_det {wanted.max_det} are "
                          f"outside the exported ones; {fix}")
