"""Run an exported EfficientDet (``efficientdet export --format onnx``) without PyTorch.

``OnnxModel("d0.onnx")(images)`` needs only onnxruntime, numpy and Pillow: a D0 process peaks at
~260 MB, where importing the CUDA build of PyTorch alone takes about 500 MB (BENCHMARKS.md). It reads everything
it needs from the file's metadata (input size, mean/std, class names and category ids, the NMS
settings) and returns the same :class:`~efficientdet.detections.Detections` as
:class:`~efficientdet.detector.Detector`:

image -> letterbox + normalise (numpy, :func:`~efficientdet.preprocess.preprocess_images`) ->
onnxruntime (network, and for ``--nms`` files top-k, decoding, clipping to the image and NMS) ->
boxes divided by the letterbox scale -> detections in original-image pixels.

Files exported with ``--nms`` are the torch-free path; their score threshold, IoU threshold and
``max_det`` are fixed at export time (a stricter score threshold or a smaller ``max_det`` can still be
asked for here). Files with raw outputs are post-processed by the PyTorch post-processing (imported on
demand) and accept every setting, soft-NMS included.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .detections import Detections, PreparedBatch
from .errors import ConfigError, WeightsError
from .images import is_single_image, to_pil
from .preprocess import preprocess_images


def make_session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session with every graph optimisation (NCHWc layout included).

    onnxruntime's worker threads keep spinning after a run by default and take the cores from the
    pre- and post-processing around it; ``session.force_spinning_stop`` stops them at the end of each
    run (~7 ms faster end to end for D0 on 2 cores, BENCHMARKS.md).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.force_spinning_stop", "1")
    # errors only: onnxruntime warns on every load that the optional ``image_sizes`` input (an initializer
    # that may be overridden, by design) is not constant-folded
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_in_fixed_batches(session: Any, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``session.run`` for any number of images when the file has a fixed batch size.

    Every array in ``feeds`` has the images on its first axis; they are cut into chunks of the exported
    batch, the last chunk zero-padded, and the outputs concatenated and trimmed (a fixed batch runs
    ~20% faster in onnxruntime than a dynamic one, so exports default to batch 1).
    """
    fixed = session.get_inputs()[0].shape[0]
    total = len(feeds["images"])
    if not isinstance(fixed, int) or fixed == total:
        return session.run(outputs, feeds)
    parts: list[list[np.ndarray]] = [[] for _ in outputs]
    for start in range(0, total, fixed):
        chunk = {}
        for name, value in feeds.items():
            part = value[start : start + fixed]
            if len(part) < fixed:
                part = np.concatenate([part, np.zeros((fixed - len(part), *part.shape[1:]), part.dtype)])
            chunk[name] = part
        n = min(fixed, total - start)
        for i, out in enumerate(session.run(outputs, chunk)):
            parts[i].append(out[:n])
    return [np.concatenate(p) for p in parts]


class OnnxModel:
    """Detect objects with an exported ``.onnx`` file in onnxruntime (CPU), without PyTorch for NMS files.

    Args:
        path: a file written by ``efficientdet export --format onnx`` (or :func:`efficientdet.export.onnx.export_onnx`).
        threads: onnxruntime intra-op threads (default: onnxruntime's choice, one per core).
        score_threshold, max_det: for ``--nms`` files at least / at most the exported values (default:
            those); for raw files any value (defaults 0.25 and 100, as ``predict``).
        iou_threshold, soft_nms, topk: raw files only (an ``--nms`` file has its NMS built in).
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
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise WeightsError(f"{self.path}: no such file; export one with 'efficientdet export --format onnx'")
        try:
            self.session = make_session(self.path, threads)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise WeightsError(f"{self.path}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("producer") != "efficientdet" or "config" not in meta:
            raise WeightsError(f"{self.path}: no efficientdet metadata; export the file with 'efficientdet export'")
        self.metadata = meta
        self.config: dict = json.loads(meta["config"])
        self.image_size = int(meta["image_size"])
        self.mean, self.std = json.loads(meta["mean"]), json.loads(meta["std"])
        num_classes = int(self.config["num_classes"])
        exported_names = json.loads(meta.get("class_names", "[]"))  # "" = an unused (masked) class slot
        names = exported_names or [f"class{i}" for i in range(num_classes)]
        self.class_names: list[str] = [n or f"class{i}" for i, n in enumerate(names)]
        self.category_ids: list[int] = json.loads(meta.get("category_ids", "[]")) or list(range(1, num_classes + 1))
        self.nms = meta.get("outputs") == "nms"
        if self.nms:
            self._init_nms(meta, score_threshold, max_det, iou_threshold, soft_nms, topk)
        else:
            self._init_raw(score_threshold, max_det, iou_threshold, soft_nms, topk, exported_names)

    def _init_nms(self, meta: dict[str, str], score_threshold: float | None, max_det: int | None,
                  iou_threshold: float | None, soft_nms: bool, topk: int | None) -> None:
        exported = {k: json.loads(meta[k]) for k in ("score_threshold", "iou_threshold", "max_det", "topk")}
        fix = f"re-export without --nms (raw outputs) or with the setting you need; {self.path} has {exported}"
        if soft_nms or (iou_threshold is not None and iou_threshold != exported["iou_threshold"]) or (
            topk is not None and topk != exported["topk"]
        ):
            raise ConfigError(f"{self.path}: soft-NMS, --iou and topk are fixed in an --nms export; {fix}")
        self.score_threshold = exported["score_threshold"] if score_threshold is None else float(score_threshold)
        self.max_det = exported["max_det"] if max_det is None else int(max_det)
        if self.score_threshold < exported["score_threshold"] or self.max_det > exported["max_det"]:
            raise ConfigError(f"{self.path}: score threshold {self.score_threshold} / max_det {self.max_det} are "
                              f"outside the exported ones; {fix}")
        overridable = {i.name for i in self.session.get_overridable_initializers()}
        self._clip_input = "image_sizes" in overridable  # older files clip to the canvas only

    def _init_raw(self, score_threshold: float | None, max_det: int | None, iou_threshold: float | None,
                  soft_nms: bool, topk: int | None, names: list[str]) -> None:
        import torch  # raw outputs need the PyTorch post-processing (torchvision's NMS)

        from .anchors import generate_anchors
        from .postprocess import PostprocessConfig, Postprocessor

        self.score_threshold = 0.25 if score_threshold is None else float(score_threshold)
        self.max_det = 100 if max_det is None else int(max_det)
        self.postprocessor = Postprocessor(PostprocessConfig(
            self.score_threshold, 0.5 if iou_threshold is None else iou_threshold, self.max_det,
            5000 if topk is None else topk, soft_nms))
        c = self.config
        self.anchors = generate_anchors(self.image_size, c["min_level"], c["max_level"], c["anchor_scale"],
                                        c["num_scales"], [tuple(r) for r in c["aspect_ratios"]])
        self.class_mask = torch.tensor([bool(n) for n in names]) if names and not all(names) else None

    def __call__(self, images: Any, batch_size: int = 8) -> list[Detections]:
        """Detect in one image or many (paths, PIL images, arrays); a list of :class:`Detections` in order."""
        if batch_size <= 0:
            raise ConfigError(f"batch_size={batch_size} must be a positive integer")
        items = [images] if is_single_image(images) else list(images)
        results: list[Detections] = []
        for start in range(0, len(items), batch_size):
            results.extend(self._run(items[start : start + batch_size]))
        return results

    def prepare(self, images: Sequence[Any]) -> PreparedBatch:
        """The CPU half of a call (thread-safe): images -> RGB PIL images + the letterboxed, normalised
        batch; :meth:`detect_prepared` runs the rest (``detect_prepared(prepare(x))`` equals ``self(x)``)."""
        t0 = time.perf_counter()
        pils = [to_pil(x) for x in images]
        batch, scales = preprocess_images(pils, self.image_size, self.mean, self.std, channels_last=False)
        return PreparedBatch(list(images), pils, (batch, scales), time.perf_counter() - t0)

    def _run(self, chunk: Sequence[Any]) -> list[Detections]:
        return self.detect_prepared(self.prepare(chunk))

    def detect_prepared(self, prepared: PreparedBatch) -> list[Detections]:
        """onnxruntime + post-processing of a :meth:`prepare`'d batch -> one :class:`Detections` per image."""
        chunk, pils = prepared.sources, prepared.images
        batch, scales = prepared.inputs
        scale = np.asarray(scales, dtype=np.float32)
        t1 = time.perf_counter()
        if self.nms:
            feeds = {"images": batch}
            if self._clip_input:  # each image's extent on the canvas, as the Detector clips (float32)
                hw = np.asarray([(p.height, p.width) for p in pils], dtype=np.float32)
                feeds["image_sizes"] = hw * scale[:, None]
            boxes, scores, labels, num = run_in_fixed_batches(
                self.session, ["boxes", "scores", "labels", "num_detections"], feeds)
            t2 = time.perf_counter()
            outs = []
            for i in range(len(pils)):
                n = int(num[i])
                keep = scores[i, :n] >= self.score_threshold
                keep[self.max_det:] = False
                outs.append((boxes[i, :n][keep] / scale[i], scores[i, :n][keep], labels[i, :n][keep]))
        else:
            outs, t2 = self._raw(batch, scales, pils)
        t3 = time.perf_counter()
        n = len(chunk)
        timings = {"preprocess_ms": prepared.preprocess_s * 1e3 / n, "inference_ms": (t2 - t1) * 1e3 / n,
                   "postprocess_ms": (t3 - t2) * 1e3 / n}
        return [Detections.from_arrays(b, s, lab, self.class_names, self.category_ids, (p.width, p.height), src,
                                       timings)
                for src, p, (b, s, lab) in zip(chunk, pils, outs)]

    def _raw(self, batch: np.ndarray, scales: list[float], pils: Sequence[Image.Image]) -> tuple[list, float]:
        import torch

        cls, box = run_in_fixed_batches(self.session, ["cls_logits", "box_deltas"], {"images": batch})
        t2 = time.perf_counter()
        sizes = torch.tensor([(p.height, p.width) for p in pils])
        with torch.inference_mode():
            dets = self.postprocessor(torch.from_numpy(cls), torch.from_numpy(box), self.anchors,
                                      torch.tensor(scales, dtype=torch.float64), sizes, self.class_mask)
        return [(d["boxes"].numpy(), d["scores"].numpy(), d["labels"].numpy()) for d in dets], t2


def is_onnx_file(weights: object) -> bool:
    """Whether a ``--weights`` value names an exported ONNX file (by its suffix)."""
    return isinstance(weights, str | Path) and str(weights).lower().endswith(".onnx")


__all__ = ["OnnxModel", "is_onnx_file", "make_session", "run_in_fixed_batches"]
