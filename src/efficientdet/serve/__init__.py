"""``efficientdet serve``: an HTTP detection and segmentation service (FastAPI on uvicorn) with batching,
metrics and a page.

    from efficientdet.serve import ServeSettings, build_detector, create_app
    app = create_app(build_detector("d0.pt"), ServeSettings(max_batch=8))  # any ASGI server runs it

``build_detector`` gives a detector for detection and joint checkpoints (``/v1/detect``; joint ones also
``/v1/segment``) and a segmenter for segmentation-only checkpoints and exports (``/v1/segment``).

See :mod:`efficientdet.serve.app` for the endpoints and the README's "Serve" section for examples.
"""

from __future__ import annotations

from .app import ServeSettings, create_app, create_app_from_env
from .engine import Engine, Options, build_detector

__all__ = ["Engine", "Options", "ServeSettings", "build_detector", "create_app", "create_app_from_env"]
