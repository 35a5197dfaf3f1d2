"""Running exported ONNX files in onnxruntime, torch-free: sessions, fixed-batch feeding and the runner.

:class:`OnnxRunner` is the network stage of a :class:`~efficientdet.inference.detector.Detector` for a
``.onnx`` file: it reads everything it needs from the file's metadata (input size, mean/std, labels,
which outputs the file has and, for ``--nms`` files, the post-processing settings built into it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WeightsError
from ..labels import LabelMap
from ..variants import ModelConfig
from .config import PostprocessConfig


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


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file as a dict (values are strings; JSON for structured ones), read with
    ``onnx`` without PyTorch and without the weights of external-data files."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


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


def is_onnx_file(weights: object) -> bool:
    """Whether a ``--weights`` value names an exported ONNX file (by its suffix)."""
    return isinstance(weights, str | Path) and str(weights).lower().endswith(".onnx")


class OnnxRunner:
    """The network stage for an exported file, in onnxruntime (or OpenVINO) on the CPU.

    ``engine="openvino"`` runs the same file in OpenVINO's CPU plugin (:mod:`.ov_runtime`) with
    ``precision`` ``fp32`` or ``bf16``; everything else (metadata, outputs, batching) is shared.

    ``outputs == "nms"`` (``--nms`` files): :meth:`run` returns ``(boxes (B, K, 4) canvas pixels, scores
    (B, K), labels (B, K), num (B,))`` with the file's own top-k, decoding, clipping and NMS;
    ``exported`` holds those settings. ``outputs == "raw"``: ``(cls_logits (B, N, C), box_deltas (B, N, 4))``
    for the PyTorch post-processing.
    """

    channels_last = False  # takes the contiguous NCHW batch
    device = "cpu"

    def __init__(self, path: str | Path, threads: int | None = None, engine: str = "onnxruntime",
                 precision: str = "fp32") -> None:
        self.path = Path(path)
        self.engine, self.precision = engine, precision
        if not self.path.is_file():
            raise WeightsError(f"{self.path}: no such file; export one with 'efficientdet export --format onnx'")
        try:
            if engine == "openvino":
                from .ov_runtime import OpenVinoSession

                self.session = OpenVinoSession(self.path, threads, precision)
            else:
                self.session = make_session(self.path, threads)
        except Exception as exc:  # onnxruntime and OpenVINO raise their own exception types
            raise WeightsError(f"{self.path}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("producer") != "efficientdet" or "config" not in meta:
            raise WeightsError(f"{self.path}: no efficientdet metadata; export the file with 'efficientdet export'")
        self.metadata: dict[str, str] = meta
        self.config = ModelConfig.from_dict(json.loads(meta["config"]))
        self.image_size = int(meta["image_size"])
        self.mean, self.std = json.loads(meta["mean"]), json.loads(meta["std"])
        names = json.loads(meta.get("class_names", "[]"))  # "" = an ignored slot
        ids = json.loads(meta.get("category_ids", "[]"))
        self.labels = LabelMap.create([n or None for n in names] or None, ids or None, self.config.num_classes)
        self.outputs = "nms" if meta.get("outputs") == "nms" else "raw"
        self.exported: PostprocessConfig | None = None
        self._clip_input = False
        if self.outputs == "nms":
            self.exported = PostprocessConfig(**{k: json.loads(meta[k]) for k in
                                                 ("score_threshold", "iou_threshold", "max_det", "topk")})
            overridable = {i.name for i in self.session.get_overridable_initializers()}
            self._clip_input = "image_sizes" in overridable  # older files clip to the canvas only

    def run(self, batch: np.ndarray, canvas_hw: np.ndarray) -> tuple[np.ndarray, ...]:
        """Normalised float32 (B, 3, S, S) + each image's (height, width) on the canvas -> the file's outputs."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if self.outputs == "raw":
            return tuple(run_in_fixed_batches(self.session, ["cls_logits", "box_deltas"], {"images": x}))
        feeds = {"images": x}
        if self._clip_input:  # each image's extent on the canvas, as the Detector clips (float32)
            feeds["image_sizes"] = np.asarray(canvas_hw, dtype=np.float32)
        return tuple(run_in_fixed_batches(self.session, ["boxes", "scores", "labels", "num_detections"], feeds))
