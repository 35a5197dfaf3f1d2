"""The model behind the service: one loaded detector, per-request options, batched calls.

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

import copy
import dataclasses
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..detections import Detections
from ..errors import ConfigError

#: lowest per-request score threshold a torch-backed server accepts (the official evaluation threshold)
DEFAULT_SCORE_FLOOR = 0.001


@dataclass(frozen=True)
class Options:
    """One request's post-processing options (``iou`` None: the detector's own IoU threshold)."""

    score_threshold: float = 0.25
    iou: float | None = None
    max_det: int = 100


class Engine:
    """Runs a detector on batches of decoded images, each with its own :class:`Options`.

    Args:
        detector: an :class:`efficientdet.Detector` (any runner; :class:`efficientdet.deploy.OnnxModel` is one)
            built with permissive settings (:func:`build_detector`): called as
            ``detector(list_of_PIL_images, batch_size=n) -> list[Detections]``.
        weights: what to report as the weights file in ``/v1/model``.
        backend: ``torch`` or ``onnxruntime`` (reported in ``/v1/model``).
        on_batch: called with the number of images of every forward pass (for metrics).
    """

    def __init__(self, detector: Any, weights: str | None = None, backend: str | None = None,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.detector = detector
        self.weights = weights
        self.backend = backend or ("onnxruntime" if _is_onnx(detector) else "torch")
        self.on_batch = on_batch
        settings = _settings(detector)
        self.score_floor: float = settings["score_threshold"]
        self.max_det_limit: int = settings["max_det"]
        self.default_iou: float = settings["iou_threshold"]
        self.iou_fixed: bool = settings["iou_fixed"]
        #: whether the detector's results carry per-detection ``masks`` ((n, H, W) bool, original pixels)
        self.segmentation = bool(getattr(detector, "segmentation", False))
        self._variants: dict[tuple[float, float, int], Any] = {}
        self._lock = threading.Lock()

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
        """The detector with these post-processing settings (a shallow copy sharing the network), kept."""
        if self.iou_fixed:  # the post-processing is inside the model: filter its output only
            return self.detector
        key = (iou, score_threshold, max_det)
        with self._lock:
            found = self._variants.get(key)
            if found is None:
                if len(self._variants) >= 32:  # a bounded cache: drop the oldest copy
                    del self._variants[next(iter(self._variants))]
                found = self._variants[key] = _with_settings(self.detector, iou, score_threshold, max_det)
            return found

    # -- running --------------------------------------------------------------------------------
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

    def _call(self, detector: Any, images: list[Image.Image]) -> list[Detections]:
        out = detector(images, batch_size=len(images))
        if self.on_batch is not None:
            self.on_batch(len(images))
        return out

    def warmup(self) -> None:
        """One forward pass on a blank image, so the first request does not pay for lazy initialisation."""
        self.detector([Image.new("RGB", (64, 48), (114, 114, 114))], batch_size=1)

    # -- description ----------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """What ``GET /v1/model`` answers: variant, input size, classes with ids, backend, weights, limits."""
        d = self.detector
        labels = d.labels
        return {
            "model": d.config.name,
            "input_size": int(d.image_size),
            "classes": [{"id": int(c), "name": str(n)} for c, n, ignored in
                        zip(labels.category_ids, labels.display_names, labels.ignored) if not ignored],
            "num_classes": len(labels),
            "backend": self.backend,
            "weights": self.weights,
            "segmentation": self.segmentation,
            "options": {"score_threshold_min": self.score_floor, "max_det_max": self.max_det_limit,
                        "iou_default": self.default_iou, "iou_fixed": self.iou_fixed},
        }


def filter_detections(det: Detections, options: Options) -> Detections:
    """Keep the detections with ``score >= score_threshold``, at most ``max_det`` (scores are sorted)."""
    keep = np.flatnonzero(det.scores >= options.score_threshold)[: options.max_det]
    extra = {name: getattr(det, name)[keep] for name in ("masks",) if getattr(det, name, None) is not None}
    out = dataclasses.replace(
        det, boxes=det.boxes[keep], scores=det.scores[keep], labels=det.labels[keep],
        names=[det.names[i] for i in keep], category_ids=det.category_ids[keep])
    for name, value in extra.items():  # a segmentation model's per-detection masks follow their boxes
        setattr(out, name, value)
    return out


def _is_onnx(detector: Any) -> bool:
    from ..inference.onnxrt import OnnxRunner

    return isinstance(getattr(detector, "runner", None), OnnxRunner)


def _settings(detector: Any) -> dict[str, Any]:
    """The detector's post-processing settings: score threshold, max_det, IoU, whether the IoU is fixed
    (a runner with the NMS inside its graph)."""
    settings = detector.settings
    fixed = getattr(detector.runner, "outputs", "raw") == "nms"
    return dict(score_threshold=settings.score_threshold, max_det=settings.max_det,
                iou_threshold=settings.iou_threshold, iou_fixed=fixed)


def _with_settings(detector: Any, iou: float, score_threshold: float, max_det: int) -> Any:
    """A shallow copy of ``detector`` whose post-processing uses these settings (same runner: network, weights)."""
    clone = copy.copy(detector)
    clone.settings = detector.settings.updated(iou_threshold=iou, score_threshold=score_threshold, max_det=max_det)
    clone._postprocessor = None  # built from the settings on first use
    return clone


def build_detector(weights: str, model: str | None = None, backend: str | None = None, device: str = "cpu",
                   score_floor: float = DEFAULT_SCORE_FLOOR, max_det: int = 100,
                   image_size: int | None = None) -> Any:
    """The permissive detector a server runs: score threshold ``score_floor``, ``max_det``, IoU 0.5.

    ``backend`` ``None`` or ``auto`` means torch here: the PyTorch runner keeps the NMS outside the network,
    so requests can ask for their own IoU, and runs batches of any size. ``onnxruntime`` exports the model
    with the NMS inside (fixed IoU). An ``.onnx`` file is served as it is; an ``--nms`` file with its own
    exported thresholds as the floor.
    """
    from ..deploy import OnnxModel
    from ..inference.detector import Detector
    from ..inference.onnxrt import is_onnx_file

    if is_onnx_file(weights):
        if backend == "torch" or device != "cpu" or image_size is not None:
            raise ConfigError(f"{weights}: an exported ONNX file runs in onnxruntime on the CPU at its exported "
                              "size; drop --backend torch, --device and --image-size")
        onnx = OnnxModel(weights)  # its own thresholds first, to know the floor of an --nms file
        if onnx.nms:
            return onnx
        return OnnxModel(weights, score_threshold=score_floor, max_det=max_det)
    return Detector(model, weights=weights, device=device, score_threshold=score_floor, iou_threshold=0.5,
                    max_det=max_det, image_size=image_size, backend="torch" if backend in (None, "auto") else backend)
