"""int8 ONNX files: static post-training quantisation in onnxruntime, with calibration images.

Only the network is quantised; the post-processing of ``--nms`` files (top-k, decoding, NMS) and the
output reshapes stay float32. Inside the network every convolution *and* the ops between them (every
op type onnxruntime quantises: the SiLU as ``Sigmoid`` + ``Mul``, the squeeze-excite gate, the BiFPN's
weighted sums, max pooling, resizes, reshapes) are quantised, so activations stay uint8 from one
convolution to the next (after onnxruntime's own graph clean-up): quantising the convolutions alone
leaves each SiLU in float32 behind a dequantise/quantise pair and the file runs slower than float32
(BENCHMARKS.md). Weights are int8 per output channel, activations uint8 (the
``u8s8`` kernels of the VNNI / AMX-int8 instructions), QDQ format (onnxruntime fuses each
``DequantizeLinear -> op -> QuantizeLinear`` group into one integer kernel when it loads the file).

Calibration: up to ``max_images`` images from a folder, letterboxed and normalised exactly as the
:class:`~efficientdet.inference.detector.Detector` does, through onnxruntime's min/max calibrator.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError

#: op types quantised inside the network; ``None`` = every type onnxruntime can quantise (so that
#: reshapes, concatenations and resizes between convolutions do not fall back to float32 either)
OP_TYPES: list[str] | None = None
#: calibration images used by default (more changes the ranges very little for min/max calibration)
DEFAULT_CALIBRATION_IMAGES = 32


def calibration_files(folder: str | Path, max_images: int = DEFAULT_CALIBRATION_IMAGES) -> list[Path]:
    """The first ``max_images`` image files under ``folder`` (sorted, recursive)."""
    from ..images import IMAGE_SUFFIXES

    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"--calibration {folder}: not a folder; pass a folder of representative images")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)[:max_images]
    if not files:
        raise DataError(f"--calibration {folder}: no images found; int8 needs representative calibration images")
    return files


def calibration_key(files: Sequence[Path]) -> str:
    """A short hash of the calibration images' bytes (part of the cache key of an int8 export)."""
    h = hashlib.sha256()
    for path in files:
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]


def outside_network(model: object) -> list[str]:
    """Names of the nodes that are not part of the network itself (the module ``model`` of the export
    wrappers in :mod:`efficientdet.inference.graph`): the post-processing and the output reshapes."""
    return [n.name for n in model.graph.node if "/model/" not in n.name]  # type: ignore[attr-defined]


def spatial_means_as_pooling(model: object) -> int:
    """Rewrite ``ReduceMean`` over (H, W) with ``keepdims=1`` (the squeeze-excite input, as PyTorch exports
    ``x.mean((2, 3), keepdim=True)``) as ``GlobalAveragePool``, in place; returns how many.

    The same numbers, but onnxruntime has an integer kernel for the pooling and none for ``ReduceMean``, which
    would otherwise dequantise every expanded feature map of the backbone to float32 for its gate."""
    count = 0
    for node in model.graph.node:  # type: ignore[attr-defined]
        if node.op_type != "ReduceMean" or len(node.input) != 1:
            continue
        attrs = {a.name: a for a in node.attribute}
        axes = sorted(attrs["axes"].ints) if "axes" in attrs else None
        keep = attrs["keepdims"].i if "keepdims" in attrs else 1
        if axes in ([2, 3], [-2, -1]) and keep == 1:
            node.op_type = "GlobalAveragePool"
            del node.attribute[:]
            count += 1
    return count


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: Sequence[str | Path],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    per_channel: bool = True,
    quant_format: str = "qdq",
) -> Path:
    """Quantise the float32 file ``fp32_path`` (from :func:`~.onnx_export.export_onnx`) to ``out_path``.

    ``calibration``: image files (see :func:`calibration_files`); ``image_size``/``mean``/``std``: the
    model's preprocessing. The metadata of the float32 file is kept, plus ``precision = "int8"``.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from ..images import load_image
    from ..preprocess import preprocess_images

    if not calibration:
        raise DataError("int8 quantisation needs at least one calibration image (--calibration DIR)")
    fmt = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}.get(quant_format)
    if fmt is None:
        raise ConfigError(f"quant_format {quant_format!r}: use 'qdq' or 'qoperator'")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    proto = onnx.load(str(fp32_path))
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    fixed = batch.dim_value if batch.HasField("dim_value") else 1
    extra_inputs = {i.name for i in proto.graph.input} - {"images"}

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.files = list(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            if not self.files:
                return None
            chunk, self.files = self.files[:fixed], self.files[fixed:]
            images = [load_image(p) for p in chunk]
            images += images[-1:] * (fixed - len(images))  # pad the last chunk to the fixed batch
            x, _ = preprocess_images(images, image_size, mean, std, channels_last=False)
            feeds = {"images": np.ascontiguousarray(x, dtype=np.float32)}
            if "image_sizes" in extra_inputs:
                feeds["image_sizes"] = np.full((1, 2), float(image_size), np.float32)
            return feeds

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(f".{os.getpid()}.q.onnx")
    pre = out_path.with_suffix(f".{os.getpid()}.pre.onnx")
    import logging
    import warnings

    try:
        with warnings.catch_warnings():
            # onnxruntime logs a pre-processing hint on the root logger, numpy warns on all-zero ranges (e.g.
            # padding canvases); neither changes the result
            warnings.simplefilter("ignore")
            logging.disable(logging.WARNING)
            import onnxruntime as ort

            ort.set_default_logger_severity(3)  # the optional ``image_sizes`` input is not constant: intended
            try:
                # onnxruntime's own graph clean-up first (constant folding, shape ops): without it the int8
                # file kept float islands and ran slower than float32 (BENCHMARKS.md)
                quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
                prepared = onnx.load(str(pre))
                if spatial_means_as_pooling(prepared):
                    onnx.save(prepared, str(pre))
                exclude = outside_network(prepared)
                quantize_static(str(pre), str(tmp), Reader(), quant_format=fmt, per_channel=per_channel,
                                weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                                nodes_to_exclude=exclude, op_types_to_quantize=OP_TYPES)
            finally:
                logging.disable(logging.NOTSET)
                ort.set_default_logger_severity(2)
        quantized = onnx.load(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)
        pre.unlink(missing_ok=True)
    del quantized.metadata_props[:]
    for p in proto.metadata_props:
        entry = quantized.metadata_props.add()
        entry.key, entry.value = p.key, p.value
    entry = quantized.metadata_props.add()
    entry.key, entry.value = "precision", "int8"
    onnx.save(quantized, str(out_path))
    return out_path
