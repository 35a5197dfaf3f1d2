"""The model behind the service: one loaded detector or segmenter, per-request options, batched calls.

The engine serves one of three kinds of model (:mod:`efficientdet.inference.tasks`): a detector
(``task == "detect"``: boxes), a segmentation-only model (``"segment"``: a
:class:`~efficientdet.inference.segmenter.Segmenter` or an exported
:class:`~efficientdet.inference.seg_onnxrt.OnnxSegmenter`; one (H, W) uint8 class-index mask per image)
or a joint model (``"detect,segment"``: a :class:`~efficientdet.inference.detector.Detector` whose
:class:`Detections` carry ``.mask``). :meth:`Engine.run` is the batcher's single entry point for all three.

A detector's post-processing settings are fixed when it is built, but every request may ask for its own
``score_threshold``, ``iou`` and ``max_det``. The engine therefore builds (or is given) its detector with
permissive settings -- the lowest score threshold (``score_floor``) and the largest ``max_det``
(``max_det_limit``) a request may ask for -- and filters each image's detections afterwards. For hard NMS
that is exact: greedy NMS keeps or drops a box by looking only at higher-scoring boxes, so boxes under a
request's threshold never change which boxes above it survive, and the result is a score-sorted prefix.
A request therefore gets exactly what ``efficientdet predict`` gives with the same options.

The same argument lets a batch run with the loosest settings among its requests instead of the loosest
a request may ask for: the engine runs each batch with the lowest score threshold and the largest
``max_det`` of its requests (and one NMS per distinct ``iou``), on shallow copies of the detector that share
its network and weights and differ only in their post-processing. Requests at the default threshold thus
cost what ``predict`` costs, while the page (which asks for everything down to the floor, to filter with
its slider) pays only for itself. Exported ``--nms`` ONNX files have their NMS inside the graph, so they
serve only their exported IoU (and at least their exported score threshold, at most their exported
``max_det``); their results are filtered the same way.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..detections import Detections
from ..errors import ConfigError
from ..inference.tasks import DETECT, JOINT, SEGMENT

#: lowest per-request score threshold a torch-backed server accepts (the official evaluation threshold)
DEFAULT_SCORE_FLOOR = 0.001


@dataclass(frozen=True)
class Options:
    """One request's post-processing options (``iou`` None: the detector's own IoU threshold)."""

    score_threshold: float = 0.25
    iou: float | None = None
    max_det: int = 100


class Engine:
    """Runs a detector or a segmenter on batches of decoded images, each with its own :class:`Options`.

    Args:
        detector: an :class:`efficientdet.Detector` (any runner; :class:`efficientdet.deploy.OnnxModel` is one)
            built with permissive settings (:func:`build_detector`): called as
            ``detector(list_of_PIL_images, batch_size=n) -> list[Detections]``; or a segmenter
            (``segmenter(list_of_PIL_images, batch_size=n) -> list[(H, W) uint8 mask]``, with ``class_names``).
        weights: what to report as the weights file in ``/v1/model``.
        backend: ``torch`` or ``onnxruntime`` (reported in ``/v1/model``).
        on_batch: called with the number of images of every forward pass (for metrics).

    Attributes:
        task: ``"detect"``, ``"segment"`` or ``"detect,segment"`` (what the model answers).
        seg_class_names: the segmentation classes (mask value = index, background first); empty for detectors.
    """

    def __init__(self, detector: Any, weights: str | None = None, backend: str | None = None,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.detector = detector
        self.weights = weights
        self.backend = backend or ("onnxruntime" if _is_onnx(detector) else "torch")
        self.on_batch = on_batch
        self.task = served_task(detector)
        if self.task == SEGMENT:
            self.seg_class_names: list[str] = list(detector.class_names)
            settings = dict(score_threshold=1.0, max_det=0, iou_threshold=0.5, iou_fixed=True)  # no detections
        else:
            self.seg_class_names = list(getattr(detector, "seg_class_names", None) or []) if self.segments else []
            settings = _settings(detector)
        self.score_floor: float = settings["score_threshold"]
        self.max_det_limit: int = settings["max_det"]
        self.default_iou: float = settings["iou_threshold"]
        self.iou_fixed: bool = settings["iou_fixed"]
        self._variants: dict[tuple[float, float, int], Any] = {}
        self._lock = threading.Lock()

    @property
    def detects(self) -> bool:
        """Whether the model gives boxes (``/v1/detect``)."""
        return self.task in (DETECT, JOINT)

    @property
    def segments(self) -> bool:
        """Whether the model gives a semantic mask per image (``/v1/segment``)."""
        return self.task in (SEGMENT, JOINT)

    def why_no_masks(self) -> str:
        """The one-line reason (with the fix) why this model cannot answer ``/v1/segment``."""
        if getattr(getattr(self.detector, "config", None), "seg_head", None):
            return ("this server runs the joint model's detection outputs only (exported files and the "
                    "onnxruntime backend hold no segmentation head); serve the checkpoint with --backend torch "
                    "for masks on /v1/segment, or use /v1/detect for boxes")
        return ("this model has no segmentation head; /v1/segment needs a segmentation checkpoint (a *_seg model, "
                "'efficientdet train --task segment'), a joint one ('--task detect,segment') or an exported "
                "segmentation .onnx; use /v1/detect for boxes")

    # -- options --------------------------------------------------------------------------------
    def check(self, options: Options) -> Options:
        """Validate a request's options against what this detector can answer exactly; ConfigError if not."""
        if not self.score_floor <= options.score_threshold <= 1.0:
            raise ConfigError(f"score_threshold={options.score_threshold} must be in [{self.score_floor}, 1] "
                              "on this server (its detector keeps nothing below that)")
        if not 1 <= options.max_det <= self.max_det_limit:
            raise ConfigError(f"max_det={options.max_det} must be in [1, {self.max_det_limit}] on this server; "
                              "start it with a larger --max-det to allow more")
        iou = self.default_iou if options.iou is None else float(options.iou)
        if not 0.0 <= iou <= 1.0:
            raise ConfigError(f"iou={iou} must be in [0, 1]")
        if iou != self.default_iou and self.iou_fixed:
            raise ConfigError(f"iou={iou}: this server's model has its NMS built in with iou={self.default_iou}; "
                              "omit iou (or serve with --backend torch or a raw-output ONNX export)")
        return dataclasses.replace(options, iou=iou)

    def _variant(self, iou: float, score_threshold: float, max_det: int) -> Any:
        """The detector with these post-processing settings (``Detector.with_settings``: a shallow copy sharing
        the network), kept."""
        if self.iou_fixed:  # the post-processing is inside the model: filter its output only
            return self.detector
        key = (iou, score_threshold, max_det)
        with self._lock:
            found = self._variants.get(key)
            if found is None:
                if len(self._variants) >= 32:  # a bounded cache: drop the oldest copy
                    del self._variants[next(iter(self._variants))]
                found = self._variants[key] = self.detector.with_settings(
                    iou_threshold=iou, score_threshold=score_threshold, max_det=max_det)
            return found

    # -- running --------------------------------------------------------------------------------
    def run(self, images: Sequence[Image.Image], options: Sequence[Options | None]
            ) -> list[Detections | np.ndarray | Exception]:
        """What the batcher calls: per image, its :class:`Detections` (joint models: with ``.mask``), its
        (H, W) uint8 mask (segmentation-only models; ``options`` are ignored) or the exception it raised."""
        if self.task == SEGMENT:
            return self.segment(images)
        return self.detect(images, [o if o is not None else self.check(Options()) for o in options])

    def segment(self, images: Sequence[Image.Image]) -> list[np.ndarray | Exception]:
        """A segmentation-only model's (H, W) uint8 class-index mask of each image (original size), in one
        forward pass; if it fails, each image runs alone so that one bad image fails only its own request."""
        try:
            return list(self._call(self.detector, list(images)))
        except Exception:
            outs: list[np.ndarray | Exception] = []
            for image in images:
                try:
                    outs.extend(self._call(self.detector, [image]))
                except Exception as exc:  # this image's own failure
                    outs.append(exc)
            return outs

    def detect(self, images: Sequence[Image.Image], options: Sequence[Options]) -> list[Detections | Exception]:
        """Detections for each image under its own (checked) options, or the exception that image raised.

        Images with the same IoU run in one forward pass; if that pass fails, each of its images runs
        alone so that one bad image fails only its own request.
        """
        results: list[Detections | Exception] = [ConfigError("not run")] * len(images)
        groups: dict[float, list[int]] = {}
        for i, opt in enumerate(options):
            groups.setdefault(float(opt.iou if opt.iou is not None else self.default_iou), []).append(i)
        for iou, idx in groups.items():
            loosest = (iou, min(options[i].score_threshold for i in idx), max(options[i].max_det for i in idx))
            try:
                outs = self._call(self._variant(*loosest), [images[i] for i in idx])
            except Exception:
                outs = []
                for i in idx:
                    try:
                        outs.extend(self._call(self._variant(*loosest), [images[i]]))
                    except Exception as exc:  # this image's own failure
                        outs.append(exc)
            for i, out in zip(idx, outs):
                results[i] = out if isinstance(out, Exception) else filter_detections(out, options[i])
        return results

    def _call(self, detector: Any, images: list[Image.Image]) -> list[Any]:
        out = detector(images, batch_size=len(images))
        if self.on_batch is not None:
            self.on_batch(len(images))
        return out

    def warmup(self) -> None:
        """One forward pass on a blank image, so the first request does not pay for lazy initialisation."""
        self.detector([Image.new("RGB", (64, 48), (114, 114, 114))], batch_size=1)

    # -- description ----------------------------------------------------------------------------
    def runtime(self) -> dict[str, str]:
        """``{"engine", "precision"}`` the model really runs in: ``torch``, ``onnxruntime`` or ``openvino``, and
        ``fp32``, ``bf16`` or ``int8`` (what ``--backend auto`` / ``--precision auto`` chose on this CPU)."""
        runner = getattr(self.detector, "runner", None)
        engine = getattr(runner, "engine", None)
        if engine is None:  # the PyTorch runner (or a segmenter, which runs in PyTorch or onnxruntime)
            engine = "onnxruntime" if self.backend == "onnxruntime" else "torch"
            precision = "bf16" if str(getattr(runner, "dtype", None)) == "torch.bfloat16" else "fp32"
        else:
            precision = str(getattr(runner, "precision", "fp32"))
        return {"engine": str(engine), "precision": precision}

    def info(self) -> dict[str, Any]:
        """What ``GET /v1/model`` answers: variant, task, input size, classes with ids, backend (with the engine and
        precision it runs in), weights, limits.

        ``classes`` are the detection classes (category ids) of a detector or joint model and the segmentation
        classes (id = mask value) of a segmentation-only one; ``seg_classes`` are the segmentation classes of
        any model that segments (else empty); ``options`` is null for a segmentation-only model.
        """
        d = self.detector
        seg_classes = [{"id": i, "name": str(n)} for i, n in enumerate(self.seg_class_names)]
        if self.task == SEGMENT:
            classes, num_classes, options = seg_classes, len(seg_classes), None
        else:
            labels = d.labels
            classes = [{"id": int(c), "name": str(n)} for c, n, ignored in
                       zip(labels.category_ids, labels.display_names, labels.ignored) if not ignored]
            num_classes = len(labels)
            options = {"score_threshold_min": self.score_floor, "max_det_max": self.max_det_limit,
                       "iou_default": self.default_iou, "iou_fixed": self.iou_fixed}
        return {
            "model": d.config.name,
            "task": self.task,
            "input_size": int(d.image_size),
            "classes": classes,
            "num_classes": num_classes,
            "seg_classes": seg_classes,
            "backend": self.backend,
            **self.runtime(),
            "weights": self.weights,
            "segmentation": self.segments,
            "options": options,
        }


def filter_detections(det: Detections, options: Options) -> Detections:
    """Keep the detections with ``score >= score_threshold``, at most ``max_det`` (scores are sorted); a joint
    model's ``mask`` (one per image) stays as it is."""
    keep = np.flatnonzero(det.scores >= options.score_threshold)[: options.max_det]
    return dataclasses.replace(
        det, boxes=det.boxes[keep], scores=det.scores[keep], labels=det.labels[keep],
        names=[det.names[i] for i in keep], category_ids=det.category_ids[keep],
        track_ids=None if det.track_ids is None else det.track_ids[keep])


def served_task(model: Any) -> str:
    """``"segment"`` for a segmenter (no post-processing settings), ``"detect,segment"`` for a detector whose
    results carry masks (``Detector.segments``), else ``"detect"``."""
    if not hasattr(model, "settings"):
        return SEGMENT
    return JOINT if getattr(model, "segments", False) else DETECT


def _is_onnx(detector: Any) -> bool:
    from ..inference.onnxrt import OnnxRunner

    if not hasattr(detector, "settings"):  # a segmenter: OnnxSegmenter holds an onnxruntime session
        return hasattr(detector, "session")
    return isinstance(getattr(detector, "runner", None), OnnxRunner)


def _settings(detector: Any) -> dict[str, Any]:
    """The detector's post-processing settings: score threshold, max_det, IoU, whether the IoU is fixed
    (a runner with the NMS inside its graph)."""
    settings = detector.settings
    fixed = getattr(detector.runner, "outputs", "raw") == "nms"
    return dict(score_threshold=settings.score_threshold, max_det=settings.max_det,
                iou_threshold=settings.iou_threshold, iou_fixed=fixed)


def build_detector(weights: str, model: str | None = None, backend: str | None = None, device: str = "cpu",
                   score_floor: float = DEFAULT_SCORE_FLOOR, max_det: int = 100,
                   image_size: int | None = None, precision: str = "auto", calibration: str | None = None) -> Any:
    """The model a server runs for ``weights``: a permissive detector (score threshold ``score_floor``,
    ``max_det``, IoU 0.5), or for a segmentation-only checkpoint or export its segmenter
    (:func:`efficientdet.inference.tasks.load_segmenter`; no detection settings apply).

    ``precision``/``calibration``: as :class:`~efficientdet.inference.detector.Detector`'s (``int8`` runs in
    onnxruntime, so it selects that backend when none is given).

    ``backend`` ``None`` or ``auto`` means torch here: the PyTorch runner keeps the NMS outside the network,
    so requests can ask for their own IoU, and runs batches of any size. ``onnxruntime`` exports the model
    with the NMS inside (fixed IoU). An ``.onnx`` file is served as it is; an ``--nms`` file with its own
    exported thresholds as the floor. A joint (detection + segmentation) checkpoint runs in PyTorch unless
    ``backend`` says otherwise (the segmentation output comes from the PyTorch runner only).
    """
    from ..deploy import OnnxModel
    from ..inference.detector import Detector
    from ..inference.onnxrt import is_onnx_file
    from ..inference.tasks import load_segmenter, weights_task

    if weights_task(weights) == SEGMENT:
        if backend == "torch" and is_onnx_file(weights):
            raise ConfigError(f"{weights}: an exported ONNX file runs in onnxruntime; drop --backend torch")
        if backend == "onnxruntime" and not is_onnx_file(weights):
            raise ConfigError(f"{weights}: a segmentation checkpoint runs in PyTorch here; drop --backend "
                              "onnxruntime, or export it ('efficientdet export') and serve the .onnx file")
        if precision not in ("auto", "fp32") or calibration is not None:
            raise ConfigError(f"{weights}: segmentation models run in float32; drop --precision/--calibration")
        return load_segmenter(weights, model=model, device=device, image_size=image_size)
    if is_onnx_file(weights):
        if backend == "torch" or device != "cpu" or image_size is not None:
            raise ConfigError(f"{weights}: an exported ONNX file runs in onnxruntime on the CPU at its exported "
                              "size; drop --backend torch, --device and --image-size")
        if precision not in ("auto", "fp32") or calibration is not None:
            raise ConfigError(f"{weights}: an exported file runs in the precision it was exported in; drop "
                              "--precision/--calibration (quantise: 'efficientdet export --int8 --calibration DIR')")
        onnx = OnnxModel(weights)  # its own thresholds first, to know the floor of an --nms file
        if onnx.nms:
            return onnx
        return OnnxModel(weights, score_threshold=score_floor, max_det=max_det)
    if backend in (None, "auto"):
        backend = "onnxruntime" if precision == "int8" else "torch"
    return Detector(model, weights=weights, device=device, score_threshold=score_floor, iou_threshold=0.5,
                    max_det=max_det, image_size=image_size, backend=backend, precision=precision,
                    calibration=calibration)
