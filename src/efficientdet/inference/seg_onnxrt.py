"""Run an exported segmentation network (:func:`efficientdet.inference.seg_export.export_seg_onnx`) without
PyTorch: onnxruntime, numpy and Pillow only.

image -> letterbox + normalise (numpy) -> onnxruntime (network and arg-max) -> the image's region of
the canvas label map, resized (nearest) to the original size -> an (H, W) uint8 mask. The PyTorch
:class:`~efficientdet.inference.segmenter.Segmenter` resizes the logits (bilinear) before the arg-max instead, so
the two can differ along class boundaries of upscaled images; on the canvas they agree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WeightsError
from ..images import is_single_image, to_pil
from ..masks import canvas_labels_to_original
from ..preprocess import preprocess_images
from ..variants import ModelConfig
from .onnxrt import make_session, run_in_fixed_batches


class OnnxSegmenter:
    """``OnnxSegmenter("seg.onnx")(images) -> [(H, W) uint8 mask, ...]`` at the original sizes.

    Attributes from the file's metadata: ``image_size``, ``mean``, ``std``, ``class_names``
    (segmentation classes, background first), ``config`` (the model's
    :class:`~efficientdet.variants.ModelConfig`).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnx

        path = Path(path)
        proto = onnx.load(str(path), load_external_data=False)
        meta = {p.key: p.value for p in proto.metadata_props}
        if meta.get("outputs") != "seg":
            raise WeightsError(f"{path}: not a segmentation export (outputs={meta.get('outputs')!r}); export with "
                               "--task segment")
        self.session = make_session(path, threads)
        self.image_size = int(meta["image_size"])
        self.mean = tuple(json.loads(meta["mean"]))
        self.std = tuple(json.loads(meta["std"]))
        self.class_names: list[str] = json.loads(meta.get("seg_class_names", "[]"))
        self.config = ModelConfig.from_dict(json.loads(meta["config"]))

    def __call__(self, images: Any, batch_size: int = 8) -> list[np.ndarray]:
        items = [images] if is_single_image(images) else list(images)
        out: list[np.ndarray] = []
        for start in range(0, len(items), batch_size):
            pils = [to_pil(im) for im in items[start : start + batch_size]]
            batch, scales = preprocess_images(pils, self.image_size, self.mean, self.std, channels_last=False)
            (labels,) = run_in_fixed_batches(self.session, ["masks"], {"images": batch})
            out += [canvas_labels_to_original(lab, im.width, im.height, s) for lab, im, s in zip(labels, pils, scales)]
        return out
