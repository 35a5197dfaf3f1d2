"""The detection API on a real uvicorn server: equality with `predict`, batching, model info, metrics."""

from __future__ import annotations

import copy
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from efficientdet import Detector
from efficientdet.cli import main
from efficientdet.serve import build_detector
from efficientdet.serve.app import encode_mask

from .conftest import IDS, NAMES


def predict_records(tmp_path, files, weights, *options: str) -> dict[str, list[dict]]:
    """What `efficientdet predict --json` writes, per file name (file_name dropped)."""
    out = tmp_path / f"pred{abs(hash(options))}.json"
    assert main(["predict", *map(str, files), "--weights", str(weights), "--json", str(out), *options]) == 0
    per_file: dict[str, list[dict]] = {f.name: [] for f in files}
    for rec in json.loads(out.read_text()):
        per_file[rec.pop("file_name")].append(rec)
    return per_file


def tied_sorted(records: list[dict]) -> list[dict]:
    """Records by descending score, boxes breaking ties (detections with equal scores have no fixed order)."""
    return sorted(records, key=lambda r: (-r["score"], r["bbox"], r["category_id"]))


@pytest.mark.parametrize("query,cli", [
    ({}, []),
    ({"score_threshold": 0.3, "iou": 0.35, "max_det": 4}, ["--score-threshold", "0.3", "--iou", "0.35",
                                                            "--max-det", "4"]),
    ({"score_threshold": 0.05, "max_det": 100}, ["--score-threshold", "0.05"]),
])
def test_detect_equals_predict(serve, tiny_weights, photo_files, tmp_path, query, cli):
    want = predict_records(tmp_path, photo_files, tiny_weights, "--backend", "torch", *cli)  # the server's runtime
    assert sum(map(len, want.values())) > 3, "the tiny model should detect something"
    with serve() as url:
        for path in photo_files:
            multipart = httpx.post(f"{url}/v1/detect", params=query, files={"file": (path.name, path.read_bytes())})
            raw = httpx.post(f"{url}/v1/detect", params=query, content=path.read_bytes(),
                             headers={"content-type": "application/octet-stream"})
            for res in (multipart, raw):
                assert res.status_code == 200, res.text
                body = res.json()
                w, h = Image.open(path).size
                assert body["image"] == {"width": w, "height": h} and body["time_ms"] > 0
                # boxes, scores, ids and names exactly; equal scores (flat image regions) may come in either order
                assert tied_sorted(body["detections"]) == tied_sorted(want[path.name])


def test_concurrent_requests_are_batched_and_answer_the_same(serve, photo_files):
    images = [p.read_bytes() for p in photo_files] * 4  # 12 requests
    with serve(max_batch=8, max_wait_ms=300) as url:
        alone = {p.name: httpx.post(f"{url}/v1/detect", content=p.read_bytes()).json()["detections"]
                 for p in photo_files}
        barrier = threading.Barrier(len(images))

        def one(data: bytes) -> httpx.Response:
            barrier.wait()
            return httpx.post(f"{url}/v1/detect", content=data, timeout=60)

        with ThreadPoolExecutor(len(images)) as pool:
            answers = list(pool.map(one, images))
        families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)}
    assert all(r.status_code == 200 for r in answers)
    sizes = {s.name.rsplit("_", 1)[1] + s.labels.get("le", ""): s.value for s in families["efficientdet_batch_size"]
             .samples}
    passes = sizes["count"]
    # 3 warm-up-free single requests + 12 concurrent ones; some forward pass held more than one image
    assert sizes["sum"] == 3 + 12 + 1 - 1  # every image went through the model exactly once (warm-up excluded)
    assert passes - sizes["bucket1.0"] > 0, f"no batch larger than 1 was observed: {sizes}"
    assert passes < 3 + 12
    for res, path in zip(answers, photo_files * 4):
        got, want = res.json()["detections"], alone[path.name]
        assert [d["category_id"] for d in got] == [d["category_id"] for d in want]
        np.testing.assert_allclose([d["bbox"] for d in got], [d["bbox"] for d in want], atol=0.01)
        np.testing.assert_allclose([d["score"] for d in got], [d["score"] for d in want], atol=2e-5)


def test_model_info_health_readiness_and_metrics(serve, tiny_weights):
    with serve(max_batch=4) as url:
        info = httpx.get(f"{url}/v1/model").json()
        assert info["model"] == "efficientdet_d0" and info["input_size"] == 128 and info["backend"] == "torch"
        assert (info["engine"], info["precision"]) == ("torch", "fp32")
        assert info["classes"] == [{"id": i, "name": n} for i, n in zip(IDS, NAMES)]
        assert info["weights"] == str(tiny_weights) and info["max_batch"] == 4 and info["segmentation"] is False
        assert info["task"] == "detect" and info["seg_classes"] == []
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{url}/readyz").json() == {"ready": True}
        schema = httpx.get(f"{url}/openapi.json").json()
        assert {"/v1/detect", "/v1/segment", "/v1/model", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
        assert "multipart/form-data" in schema["paths"]["/v1/detect"]["post"]["requestBody"]["content"]
        res = httpx.get(f"{url}/metrics")
        assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain")
        names = {f.name for f in text_string_to_metric_families(res.text)}
    assert {"efficientdet_requests", "efficientdet_request_seconds", "efficientdet_batch_size",
            "efficientdet_queue_depth", "efficientdet_ready"} <= names
    assert 'efficientdet_requests_total{endpoint="/v1/model",status="200"} 1.0' in res.text


def test_segment_without_a_segmentation_head_is_a_clear_404(serve, photo_files):
    with serve() as url:
        res = httpx.post(f"{url}/v1/segment", content=photo_files[0].read_bytes())
    assert res.status_code == 404 and "no segmentation head" in res.json()["error"]


def test_encode_mask_round_trips_as_a_palette_png(tmp_path):
    import base64
    import io

    from efficientdet.masks import save_palette_mask

    mask = np.zeros((5, 7), np.uint8)
    mask[1:3, 2:6] = 3
    mask[4, 6] = 20
    data = base64.b64decode(encode_mask(mask))
    png = Image.open(io.BytesIO(data))
    assert png.format == "PNG" and png.mode == "P" and png.size == (7, 5)
    np.testing.assert_array_equal(np.asarray(png), mask)  # class indices, not colours
    assert data == save_palette_mask(mask, tmp_path / "m.png").read_bytes()  # what predict --masks writes


def test_a_batch_with_mixed_options_gives_each_image_what_a_detector_with_its_options_gives(tiny_weights,
                                                                                            photo_files):
    from efficientdet.serve.engine import Engine, Options

    engine = Engine(build_detector(str(tiny_weights)))
    images = [Image.open(p).convert("RGB") for p in photo_files]
    settings = [(0.4, 0.5, 3), (0.001, 0.5, 50), (0.25, 0.3, 7)]
    batch = [images[i % len(images)] for i in range(len(settings))]
    got = engine.detect(batch, [engine.check(Options(*s)) for s in settings])  # one pass per distinct iou
    for image, det, (score, iou, max_det) in zip(batch, got, settings):
        want = Detector("d0", weights=tiny_weights, score_threshold=score, iou_threshold=iou, max_det=max_det)(image)[0]
        assert len(want) > 0
        np.testing.assert_allclose(det.boxes, want.boxes, atol=1e-3)
        np.testing.assert_allclose(det.scores, want.scores, atol=1e-6)
        np.testing.assert_array_equal(det.labels, want.labels)


class FailsOnWidth:
    """A real detector that raises (as a broken model might) on any batch holding an image of ``width``."""

    def __init__(self, detector, width: int) -> None:
        self.detector, self.width = detector, width
        self.calls: list[int] = []

    def __getattr__(self, name):  # the wrapped detector's attributes (not while copy.copy builds a copy)
        if name == "detector":
            raise AttributeError(name)
        return getattr(self.detector, name)

    def with_settings(self, **changes):  # the engine's per-options copies stay wrapped (and share the state)
        clone = copy.copy(self)
        clone.detector = self.detector.with_settings(**changes)
        return clone

    def __call__(self, images, batch_size=8):
        self.calls.append(len(images))
        if any(im.width == self.width for im in images):
            raise RuntimeError("simulated failure inside the network")
        return self.detector(images, batch_size=batch_size)


def test_an_image_that_fails_in_the_model_fails_only_its_own_request(serve, tiny_weights, photo_files, tmp_path):
    bad = tmp_path / "odd.png"
    Image.new("RGB", (77, 40), (200, 30, 30)).save(bad)
    detector = FailsOnWidth(build_detector(str(tiny_weights)), width=77)
    payloads = [p.read_bytes() for p in photo_files] + [bad.read_bytes()]
    with serve(detector=detector, max_batch=8, max_wait_ms=500) as url:
        barrier = threading.Barrier(len(payloads))

        def one(data: bytes) -> httpx.Response:
            barrier.wait()
            return httpx.post(f"{url}/v1/detect", content=data, timeout=60)

        with ThreadPoolExecutor(len(payloads)) as pool:
            answers = list(pool.map(one, payloads))
    assert max(detector.calls) > 1, f"the bad image never shared a batch: {detector.calls}"
    assert [a.status_code for a in answers] == [200, 200, 200, 500]
    assert "detection failed" in answers[3].json()["error"] and "Traceback" not in answers[3].text
    assert all(a.json()["detections"] for a in answers[:3])


def test_an_exported_nms_onnx_file_serves_what_predict_gives(serve, tiny_weights, photo_files, tmp_path):
    from efficientdet import create_model
    from efficientdet.export.onnx import export_onnx

    onnx_file = tmp_path / "tiny_nms.onnx"
    export_onnx(create_model("d0", weights=tiny_weights), onnx_file, nms=True, score_threshold=0.1, max_det=50)
    want = predict_records(tmp_path, photo_files, onnx_file, "--score-threshold", "0.2", "--max-det", "10")
    detector = build_detector(str(onnx_file))
    with serve(detector=detector) as url:
        info = httpx.get(f"{url}/v1/model").json()
        assert (info["engine"], info["precision"]) == ("onnxruntime", "fp32")  # a 128 px file stays in onnxruntime
        assert info["backend"] == "onnxruntime" and info["options"] == {
            "score_threshold_min": 0.1, "max_det_max": 50, "iou_default": 0.5, "iou_fixed": True}
        for path in photo_files:
            res = httpx.post(f"{url}/v1/detect", params={"score_threshold": 0.2, "max_det": 10},
                             content=path.read_bytes())
            assert tied_sorted(res.json()["detections"]) == tied_sorted(want[path.name])
        assert "NMS built in" in httpx.post(f"{url}/v1/detect", params={"iou": 0.3},
                                            content=photo_files[0].read_bytes()).json()["error"]
        low = httpx.post(f"{url}/v1/detect", params={"score_threshold": 0.05}, content=photo_files[0].read_bytes())
        assert low.status_code == 422 and "0.1" in low.json()["error"]
    assert sum(map(len, want.values())) > 0
