"""The HTTP detection and segmentation service: a FastAPI app around one detector or segmenter.

Endpoints (see the README's "Serve" section for ``curl`` examples; ``/docs`` has the OpenAPI page):

* ``POST /v1/detect``: an image (multipart field ``file`` or the raw body) -> ``{"detections": [...],
  "image": {"width", "height"}, "time_ms"}``, each detection the record ``predict --json`` writes
  (``bbox`` xywh in original pixels, ``score``, ``category_id``, ``category_name``); query options
  ``score_threshold``, ``iou``, ``max_det``. A segmentation-only model answers 404 (use ``/v1/segment``).
* ``POST /v1/segment``: semantic segmentation -> ``{"mask": base64 PNG, "classes": [{"id", "name",
  "pixels"}, ...], "image", "time_ms"}``; the PNG is the palette PNG of class indices at the original size
  that ``predict --masks`` writes, ``classes`` the classes present with their pixel counts. A joint model
  answers its ``detections`` too (same query options as ``/v1/detect``); a detector answers 404.
* ``GET /v1/model`` (``task``: ``detect``, ``segment`` or ``detect,segment``; classes), ``GET /healthz``
  (alive), ``GET /readyz`` (model loaded and warmed up),
  ``GET /metrics`` (Prometheus), ``GET /`` (the browser page, served from the package: no CDN).

Every error is JSON ``{"error": "one line"}`` with the right status; no traceback reaches a client.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import os
import sys
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import EfficientDetError
from .batching import Batcher
from .engine import Engine, Options
from .metrics import CONTENT_TYPE, Metrics
from .uploads import UploadError, decode_upload

log = logging.getLogger("efficientdet.serve")

STATIC_DIR = Path(__file__).parent / "static"

#: the largest image (width * height) a server decodes by default: 40 megapixels
DEFAULT_MAX_PIXELS = 40_000_000

_KNOWN_PATHS = {"/", "/v1/detect", "/v1/segment", "/v1/model", "/healthz", "/readyz", "/metrics"}


@dataclass
class ServeSettings:
    """Settings of one server (the ``efficientdet serve`` options).

    Attributes:
        max_batch: images per forward pass at most; 1 turns batching off.
        max_wait_ms: how long the first request of a batch waits for others.
        max_upload_mb: larger request bodies are refused with 413 (without being stored).
        max_pixels: larger images (from the header) are refused with 400 before decoding.
        api_key: when set, ``/v1/*`` needs header ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``.
        score_threshold: the default of a request's ``score_threshold`` (and the page's slider).
        weights: reported by ``/v1/model``.
    """

    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_upload_mb: float = 20.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    api_key: str | None = None
    score_threshold: float = 0.25
    weights: str | None = None

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class _State:
    """What the routes share: the engine once loaded, the batcher, metrics, readiness."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.metrics = Metrics(settings.max_batch)
        self.engine: Engine | None = None
        self.batcher: Batcher | None = None
        self.ready = False
        self.status = "starting"
        self.load_error: str | None = None


def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def create_app(detector: Any | None = None, settings: ServeSettings | None = None, *,
               detector_factory: Callable[[], Any] | None = None) -> FastAPI:
    """The service for ``detector`` (already loaded) or ``detector_factory`` (loaded in the background).

    ``detector`` is a callable ``detector(list_of_PIL_images, batch_size=n) -> list[Detections]`` built with
    permissive settings, or a segmenter (``-> list[(H, W) uint8 mask]``; see
    :func:`efficientdet.serve.engine.build_detector`, which builds either from a weights file). With a factory
    the server answers ``/healthz`` at once and ``/readyz`` (and detection) only after the model is loaded and
    warmed up, which is what makes rolling restarts safe.
    """
    if (detector is None) == (detector_factory is None):
        raise ValueError("pass exactly one of detector and detector_factory")
    settings = settings or ServeSettings()
    state = _State(settings)

    def load_and_warm() -> None:
        det = detector if detector is not None else detector_factory()  # type: ignore[misc]
        engine = Engine(det, weights=settings.weights, on_batch=state.metrics.observe_batch)
        state.engine = engine
        state.status = "warming up"
        engine.warmup()

    async def prepare(batcher: Batcher) -> None:
        state.status = "loading"
        try:
            await asyncio.get_running_loop().run_in_executor(batcher.executor, load_and_warm)
        except Exception as exc:  # the server stays up and says why it is not ready
            state.status = "failed"
            state.load_error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, EfficientDetError) else str(exc)
            print(f"efficientdet serve: error: the model failed to load: {state.load_error}", file=sys.stderr,
                  flush=True)
            return
        state.ready = True
        state.status = "ready"
        state.metrics.ready.set(1)
        print(f"efficientdet serve: model ready in process {os.getpid()}", file=sys.stderr, flush=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = Batcher(_EngineProxy(state), settings.max_batch, settings.max_wait_ms, state.metrics)
        state.batcher = batcher
        batcher.start()
        task = asyncio.get_running_loop().create_task(prepare(batcher))
        try:
            yield
        finally:
            state.ready = False
            state.status = "shutting down"
            task.cancel()
            await batcher.stop()

    app = FastAPI(title="efficientdet serve", version=__import__("efficientdet").__version__, lifespan=lifespan,
                  description="EfficientDet object detection and semantic segmentation over HTTP.")
    app.state.serve = state

    # -- errors: JSON, one line, never a traceback ---------------------------------------------------
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
            parts.append(f"{where}: {err.get('msg')}" + (f" (got {err['input']!r})" if "input" in err else ""))
        return _error(422, "invalid options: " + "; ".join(parts))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); the server logged the details")

    # -- middleware: API key, metrics -----------------------------------------------------------------
    @app.middleware("http")
    async def count_and_guard(request: Request, call_next):
        start = time.perf_counter()
        path = request.url.path
        endpoint = path if path in _KNOWN_PATHS else ("/static" if path.startswith("/static/") else "other")
        if settings.api_key and path.startswith("/v1/") and not _key_ok(request, settings.api_key):
            response: Response = _error(401, "missing or wrong API key; send header 'X-API-Key: KEY' or "
                                             "'Authorization: Bearer KEY'", headers={"WWW-Authenticate": "Bearer"})
        else:
            try:
                response = await call_next(request)
            except Exception as exc:  # noqa: BLE001 - the last line of defence; logged, never shown
                log.exception("unhandled error on %s %s", request.method, path)
                response = _error(500, f"internal error ({type(exc).__name__}); the server logged the details")
        state.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        state.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        return response

    # -- routes ---------------------------------------------------------------------------------------
    body_doc = {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "string", "format": "binary"}}, "required": ["file"]}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}

    async def run_model(request: Request, score_threshold: float | None, iou: float | None,
                        max_det: int | None, segment: bool) -> Response:
        t0 = time.perf_counter()
        engine, batcher = state.engine, state.batcher
        if not state.ready or engine is None or batcher is None:
            return _error(503, f"model not ready ({state.status}); retry shortly", headers={"Retry-After": "1"},
                          **({"reason": state.load_error} if state.load_error else {}))
        if segment and not engine.segments:
            return _error(404, engine.why_no_masks())
        if not segment and not engine.detects:
            return _error(404, "this model only segments (task 'segment': a mask per image, no boxes); POST the "
                               "image to /v1/segment")
        options: Options | None = None
        if engine.detects:
            try:
                default_score = max(settings.score_threshold, engine.score_floor)  # an --nms export may need more
                options = engine.check(Options(
                    default_score if score_threshold is None else score_threshold, iou,
                    min(100, engine.max_det_limit) if max_det is None else max_det))
            except EfficientDetError as exc:
                return _error(422, f"invalid options: {exc}")
        elif (score_threshold, iou, max_det) != (None, None, None):
            return _error(422, "invalid options: score_threshold, iou and max_det filter detections; this model "
                               "only segments, drop them")
        try:
            data, name = await _read_image_bytes(request, settings.max_upload_bytes)
            image = await asyncio.to_thread(decode_upload, data, settings.max_pixels, name)
        except UploadError as exc:
            return _error(exc.status, exc.message)
        try:
            result = await batcher.submit(image, options)
        except EfficientDetError as exc:
            return _error(400, f"{name}: {exc}")
        except Exception as exc:  # this image's own failure in the model; logged, the server goes on
            what = "segmentation" if segment else "detection"
            log.error("%s failed for %s: %s: %s", what, name, type(exc).__name__, exc)
            return _error(500, f"{name}: {what} failed ({type(exc).__name__}); the server logged the details")
        body: dict[str, Any] = {}
        mask = result
        if engine.detects:
            records = result.to_coco()
            for rec in records:
                rec.pop("file_name", None)
            body["detections"] = records
            mask = result.mask
        if segment:
            body.update(await asyncio.to_thread(mask_record, mask, engine.seg_class_names))
        body["image"] = {"width": image.width, "height": image.height}
        body["time_ms"] = round((time.perf_counter() - t0) * 1e3, 2)
        return JSONResponse(body)

    @app.post("/v1/detect", openapi_extra=body_doc, summary="Detect objects in one image")
    async def detect(request: Request,
                     score_threshold: float | None = Query(None, ge=0.0, le=1.0, description="minimum score"),
                     iou: float | None = Query(None, ge=0.0, le=1.0, description="NMS IoU threshold"),
                     max_det: int | None = Query(None, ge=1, description="detections per image at most")):
        return await run_model(request, score_threshold, iou, max_det, segment=False)

    @app.post("/v1/segment", openapi_extra=body_doc,
              summary="Segment one image: a palette PNG of class indices (base64) and pixels per class",
              description="Segmentation-only models: `mask`, `classes`, `image`, `time_ms`. Joint models also "
                          "answer `detections` (the query options filter them, as on /v1/detect).")
    async def segment(request: Request,
                      score_threshold: float | None = Query(None, ge=0.0, le=1.0,
                                                            description="joint models: minimum detection score"),
                      iou: float | None = Query(None, ge=0.0, le=1.0, description="joint models: NMS IoU threshold"),
                      max_det: int | None = Query(None, ge=1, description="joint models: detections at most")):
        return await run_model(request, score_threshold, iou, max_det, segment=True)

    @app.get("/v1/model", summary="The served model: variant, input size, classes, backend, weights")
    async def model_info():
        if state.engine is None:
            return _error(503, f"model not loaded ({state.status})", headers={"Retry-After": "1"})
        info = state.engine.info()
        if info.get("options") is not None:  # a detecting model (a segmentation-only one has no scores)
            info["score_threshold_default"] = max(settings.score_threshold, state.engine.score_floor)
        info["max_batch"] = settings.max_batch
        info["max_upload_mb"] = settings.max_upload_mb
        return info

    @app.get("/healthz", summary="Alive (answers while the model works)")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="Ready: model loaded and warmed up")
    async def readyz():
        if state.ready:
            return {"ready": True}
        body: dict[str, Any] = {"ready": False, "status": state.status}
        if state.load_error:
            body["error"] = state.load_error
        return JSONResponse(body, status_code=503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


class _EngineProxy:
    """The batcher's view of the engine, which exists only once the model is loaded."""

    def __init__(self, state: _State) -> None:
        self.state = state

    def run(self, images, options):  # noqa: ANN001 - same signature as Engine.run
        assert self.state.engine is not None
        return self.state.engine.run(images, options)


def _key_ok(request: Request, key: str) -> bool:
    given = request.headers.get("x-api-key")
    if given is None:
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
    return given is not None and hmac.compare_digest(given.encode(), key.encode())


async def _read_image_bytes(request: Request, limit: int) -> tuple[bytes, str]:
    """The uploaded file's bytes and a name for messages: multipart field ``file`` or the raw body.

    Over ``limit`` bytes: UploadError 413, decided from ``Content-Length`` when present and otherwise while
    reading, without keeping more than ``limit`` bytes in memory.
    """
    too_big = UploadError(413, f"upload larger than the server's limit of {limit / 1024 / 1024:g} MB "
                               "(--max-upload-mb); send a smaller image")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        await _drain(request, 4 * limit)
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            await _drain(request, 4 * limit)
            raise too_big
        chunks.append(chunk)
    body = b"".join(chunks)
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        return body, "upload"
    replay = Request(request.scope, receive=_replay(body))
    try:
        form = await replay.form(max_files=1, max_fields=10)
    except Exception as exc:
        raise UploadError(400, f"malformed multipart form ({type(exc).__name__}: {exc})") from None
    item = form.get("file")
    if item is None or isinstance(item, str):
        fields = ", ".join(form.keys()) or "none"
        raise UploadError(400, f"the multipart form has no file field 'file' (fields: {fields}); send the image "
                               "as -F file=@image.jpg or as the raw body")
    data = await item.read()
    name = os.path.basename(item.filename or "upload")
    await form.close()
    return data, name


async def _drain(request: Request, budget: int) -> None:
    """Read (and drop) up to ``budget`` more bytes so that the client sees the answer, not a reset."""
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > budget:
                return
    except Exception:  # the client gave up: nothing to answer to anyway
        return


def _replay(body: bytes):
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def encode_mask(mask: Any) -> str:
    """An (H, W) uint8 class-index mask (original pixels) -> base64 of its palette PNG: the bytes
    ``predict --masks`` writes (:func:`efficientdet.masks.palette_png`)."""
    from ..masks import palette_png

    return base64.b64encode(palette_png(mask)).decode("ascii")


def mask_record(mask: Any, class_names: list[str]) -> dict[str, Any]:
    """``{"mask": base64 palette PNG, "classes": [{"id", "name", "pixels"}, ...]}`` (classes present, by id)."""
    from ..masks import class_pixels

    return {"mask": encode_mask(mask), "classes": class_pixels(mask, class_names)}


# -- app factory for ``uvicorn --workers N`` ------------------------------------------------------------------
ENV_PREFIX = "EFFICIENTDET_SERVE_"


def settings_from_env(env: dict[str, str] | None = None) -> tuple[dict[str, Any], ServeSettings]:
    """Model arguments and :class:`ServeSettings` from ``EFFICIENTDET_SERVE_*`` variables (WEIGHTS required;
    MODEL, BACKEND, DEVICE, MAX_BATCH, MAX_WAIT_MS, MAX_UPLOAD_MB, MAX_PIXELS, MAX_DET, API_KEY,
    SCORE_THRESHOLD)."""
    from ..errors import ConfigError

    env = dict(os.environ if env is None else env)

    def get(name: str, cast: Callable[[str], Any] = str, default: Any = None) -> Any:
        text = env.get(ENV_PREFIX + name)
        if text is None or text == "":
            return default
        try:
            return cast(text)
        except ValueError:
            raise ConfigError(f"{ENV_PREFIX}{name}={text!r} is not a valid {cast.__name__}") from None

    weights = get("WEIGHTS")
    if not weights:
        raise ConfigError(f"{ENV_PREFIX}WEIGHTS is not set; point it at a checkpoint or an .onnx file")
    model_args = dict(weights=weights, model=get("MODEL"), backend=get("BACKEND"), device=get("DEVICE", str, "cpu"),
                      max_det=get("MAX_DET", int, 100))
    settings = ServeSettings(max_batch=get("MAX_BATCH", int, 8), max_wait_ms=get("MAX_WAIT_MS", float, 10.0),
                             max_upload_mb=get("MAX_UPLOAD_MB", float, 20.0),
                             max_pixels=get("MAX_PIXELS", int, DEFAULT_MAX_PIXELS), api_key=get("API_KEY"),
                             score_threshold=get("SCORE_THRESHOLD", float, 0.25), weights=weights)
    return model_args, settings


def create_app_from_env() -> FastAPI:
    """An app configured from ``EFFICIENTDET_SERVE_*`` variables, for ``uvicorn --factory --workers N
    efficientdet.serve.app:create_app_from_env``: each worker process loads the model once, in the background,
    and reports ready on ``/readyz`` when it is warmed up."""
    from .engine import build_detector

    model_args, settings = settings_from_env()
    return create_app(detector_factory=lambda: build_detector(**model_args), settings=settings)
