"""``efficientdet export --format onnx``: write one self-contained ``.onnx`` file.

The graph builders and the exporter live with the runtimes that run them
(:mod:`efficientdet.inference.onnx_export`; the onnxruntime backend exports through them too); this
module is the export-side name for them.
"""

from ..inference.onnx_export import MIN_OPSET, build_graph, export_metadata, export_onnx, read_onnx_metadata

__all__ = ["MIN_OPSET", "build_graph", "export_metadata", "export_onnx", "read_onnx_metadata"]
