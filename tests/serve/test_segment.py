"""Semantic segmentation over HTTP on a real uvicorn server: segmentation-only checkpoints and exports, joint
models and detectors; every mask is checked against what `efficientdet predict --masks` writes."""

from __future__ import annotations

import base64
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from efficientdet.cli import main
from efficientdet.serve import ServeSettings, build_detector, create_app

from .conftest import IDS, NAMES, SEG_NAMES, start_cli_server, thread_server, tiny_seg_model, wait_ready
from .test_api import tied_sorted


def predict_masks(tmp_path: Path, files: list[Path], weights: Path, *options: str) -> tuple[Path, object]:
    """Run `efficientdet predict --masks DIR --json J`; returns DIR and the parsed JSON."""
    out = tmp_path / f"predict-{weights.stem}"
    assert main(["predict", *map(str, files), "--weights", str(weights), "--masks", str(out / "masks"),
                 "--json", str(out / "pred.json"), *options]) == 0
    return out / "masks", json.loads((out / "pred.json").read_text())


def decode_png(b64: str) -> tuple[bytes, Image.Image]:
    data = base64.b64decode(b64, validate=True)
    return data, Image.open(io.BytesIO(data))


def classes_by_hand(mask: np.ndarray) -> list[dict]:
    """The expected ``classes`` list: each class value present, by id, with its pixel count."""
    values, counts = np.unique(mask, return_counts=True)
    return [{"id": int(v), "name": SEG_NAMES[v], "pixels": int(c)} for v, c in zip(values, counts)]


def check_mask_answer(body: dict, path: Path, masks_dir: Path) -> np.ndarray:
    """``mask`` decodes (palette PNG, original size) to exactly predict's mask; ``classes`` count its pixels."""
    data, png = decode_png(body["mask"])
    want_file = masks_dir / f"{path.stem}.png"
    w, h = Image.open(path).size
    assert png.format == "PNG" and png.mode == "P" and png.size == (w, h)
    got, want = np.asarray(png), np.asarray(Image.open(want_file))
    np.testing.assert_array_equal(got, want)
    assert data == want_file.read_bytes()  # the same encoder: byte for byte
    assert body["classes"] == classes_by_hand(got)
    assert sum(c["pixels"] for c in body["classes"]) == w * h
    assert body["image"] == {"width": w, "height": h} and body["time_ms"] > 0
    return got


def test_segmentation_checkpoint_answers_predicts_masks(seg_weights, photo_files, tmp_path):
    masks_dir, counts = predict_masks(tmp_path, photo_files, seg_weights)
    with thread_server(create_app(build_detector(str(seg_weights)), ServeSettings(weights=str(seg_weights)))) as url:
        info = httpx.get(f"{url}/v1/model").json()
        assert info["task"] == "segment" and info["segmentation"] is True and info["options"] is None
        assert "score_threshold_default" not in info  # no detection scores to filter
        assert info["model"] == "efficientdet_d0_seg" and info["input_size"] == 128 and info["backend"] == "torch"
        assert info["classes"] == info["seg_classes"] == [{"id": i, "name": n} for i, n in enumerate(SEG_NAMES)]
        present = set()
        for path, record in zip(photo_files, counts):
            multipart = httpx.post(f"{url}/v1/segment", files={"file": (path.name, path.read_bytes())})
            raw = httpx.post(f"{url}/v1/segment", content=path.read_bytes(),
                             headers={"content-type": "application/octet-stream"})
            for res in (multipart, raw):
                assert res.status_code == 200, res.text
                body = res.json()
                assert set(body) == {"mask", "classes", "image", "time_ms"}
                mask = check_mask_answer(body, path, masks_dir)
                # predict --json's per-class pixel counts are the same numbers
                assert {c["name"]: c["pixels"] for c in body["classes"]} == record["pixels"]
            present |= set(np.unique(mask).tolist())
        assert present == {0, 1, 2, 3}, "the tiny model should give every class somewhere"
        # boxes are not what this model does: a 404 that names the right endpoint
        res = httpx.post(f"{url}/v1/detect", content=photo_files[0].read_bytes())
        assert res.status_code == 404 and "/v1/segment" in res.json()["error"]
        # detection options make no sense here: refused, not ignored
        res = httpx.post(f"{url}/v1/segment", params={"score_threshold": 0.5}, content=photo_files[0].read_bytes())
        assert res.status_code == 422 and "only segments" in res.json()["error"]
        # the upload checks are the same as /v1/detect's
        assert httpx.post(f"{url}/v1/segment", content=b'{"not": "an image"}').status_code == 415
        assert httpx.post(f"{url}/v1/segment", content=b"").status_code == 400
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}


def test_segmentation_onnx_export_is_served_in_onnxruntime(photo_files, tmp_path):
    from efficientdet.inference.seg_export import export_seg_onnx

    onnx_file = export_seg_onnx(tiny_seg_model(), tmp_path / "seg.onnx")
    masks_dir, _ = predict_masks(tmp_path, photo_files, onnx_file)
    with thread_server(create_app(build_detector(str(onnx_file)), ServeSettings(max_upload_mb=1))) as url:
        info = httpx.get(f"{url}/v1/model").json()
        assert (info["task"], info["backend"]) == ("segment", "onnxruntime")
        assert [c["name"] for c in info["classes"]] == SEG_NAMES
        for path in photo_files:
            res = httpx.post(f"{url}/v1/segment", files={"file": (path.name, path.read_bytes())})
            assert res.status_code == 200, res.text
            check_mask_answer(res.json(), path, masks_dir)
        big = httpx.post(f"{url}/v1/segment", content=b"\0" * (2 * 1024 * 1024))
        assert big.status_code == 413 and "--max-upload-mb" in big.json()["error"]


def test_concurrent_segment_requests_share_forward_passes(seg_weights, photo_files):
    payloads = [p.read_bytes() for p in photo_files] * 3  # 9 requests
    app = create_app(build_detector(str(seg_weights)), ServeSettings(max_batch=8, max_wait_ms=300))
    with thread_server(app) as url:
        alone = {p.name: np.asarray(decode_png(httpx.post(f"{url}/v1/segment", content=p.read_bytes())
                                               .json()["mask"])[1]) for p in photo_files}
        barrier = threading.Barrier(len(payloads))

        def one(data: bytes) -> httpx.Response:
            barrier.wait()
            return httpx.post(f"{url}/v1/segment", content=data, timeout=60)

        with ThreadPoolExecutor(len(payloads)) as pool:
            answers = list(pool.map(one, payloads))
        families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)}
    assert [a.status_code for a in answers] == [200] * len(payloads)
    sizes = {s.name.rsplit("_", 1)[1] + s.labels.get("le", ""): s.value
             for s in families["efficientdet_batch_size"].samples}
    assert sizes["sum"] == 3 + 9  # every image went through the model once (warm-up excluded)
    assert sizes["count"] - sizes["bucket1.0"] > 0, f"no forward pass held more than one image: {sizes}"
    for res, path in zip(answers, photo_files * 3):
        got = np.asarray(decode_png(res.json()["mask"])[1])
        # the same masks as one image at a time (a batched convolution may round a near-tie differently)
        assert got.shape == alone[path.name].shape and (got == alone[path.name]).mean() > 0.999


def test_joint_model_answers_boxes_and_the_mask(joint_weights, photo_files, tmp_path):
    masks_dir, doc = predict_masks(tmp_path, photo_files, joint_weights)
    want = {f.name: [] for f in photo_files}
    for rec in doc["detections"]:
        want[rec.pop("file_name")].append(rec)
    assert sum(map(len, want.values())) > 3, "the tiny joint model should detect something"
    with thread_server(create_app(build_detector(str(joint_weights)), ServeSettings())) as url:
        info = httpx.get(f"{url}/v1/model").json()
        assert info["task"] == "detect,segment" and info["segmentation"] is True and info["backend"] == "torch"
        assert info["classes"] == [{"id": i, "name": n} for i, n in zip(IDS, NAMES)]
        assert info["seg_classes"] == [{"id": i, "name": n} for i, n in enumerate(SEG_NAMES)]
        for path, record in zip(photo_files, doc["segmentation"]):
            boxes = httpx.post(f"{url}/v1/detect", content=path.read_bytes())
            both = httpx.post(f"{url}/v1/segment", files={"file": (path.name, path.read_bytes())})
            assert boxes.status_code == both.status_code == 200, both.text
            assert set(boxes.json()) == {"detections", "image", "time_ms"}
            body = both.json()
            assert set(body) == {"detections", "mask", "classes", "image", "time_ms"}
            assert tied_sorted(body["detections"]) == tied_sorted(boxes.json()["detections"]) \
                == tied_sorted(want[path.name])
            check_mask_answer(body, path, masks_dir)
            assert {c["name"]: c["pixels"] for c in body["classes"]} == record["pixels"]
        # the query options filter the detections of /v1/segment as they do on /v1/detect
        strict = httpx.post(f"{url}/v1/segment", params={"score_threshold": 0.9, "max_det": 1},
                            content=photo_files[0].read_bytes()).json()
        assert len(strict["detections"]) <= 1 and all(d["score"] >= 0.9 for d in strict["detections"])
        assert strict["mask"] == httpx.post(f"{url}/v1/segment", content=photo_files[0].read_bytes()).json()["mask"]


def test_detection_model_segment_is_a_404_that_names_the_fix(serve, photo_files):
    with serve() as url:
        assert httpx.get(f"{url}/v1/model").json()["task"] == "detect"
        res = httpx.post(f"{url}/v1/segment", content=photo_files[0].read_bytes())
        assert httpx.get(f"{url}/healthz").status_code == 200
    error = res.json()["error"]
    assert res.status_code == 404 and "no segmentation head" in error
    assert "--task segment" in error and "/v1/detect" in error


def test_serve_command_with_a_segmentation_checkpoint(seg_weights, photo_files):
    proc, url = start_cli_server(["--weights", str(seg_weights), "--max-batch", "4", "--api-key", "s3cret"])
    try:
        wait_ready(url, process=proc)
        key = {"X-API-Key": "s3cret"}
        assert httpx.post(f"{url}/v1/segment", content=photo_files[0].read_bytes()).status_code == 401
        assert httpx.get(f"{url}/v1/model", headers=key).json()["task"] == "segment"
        res = httpx.post(f"{url}/v1/segment", content=photo_files[2].read_bytes(), headers=key)
        assert res.status_code == 200 and np.asarray(decode_png(res.json()["mask"])[1]).shape == (128, 128)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


def test_joint_model_in_onnxruntime_serves_boxes_and_says_how_to_get_masks(joint_weights, photo_files, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("EFFICIENTDET_CACHE", str(tmp_path / "cache"))  # the backend's export goes here
    with thread_server(create_app(build_detector(str(joint_weights), backend="onnxruntime"), ServeSettings())) as url:
        info = httpx.get(f"{url}/v1/model").json()
        assert (info["task"], info["backend"], info["seg_classes"]) == ("detect", "onnxruntime", [])
        assert httpx.post(f"{url}/v1/detect", content=photo_files[0].read_bytes()).json()["detections"]
        res = httpx.post(f"{url}/v1/segment", content=photo_files[0].read_bytes())
    assert res.status_code == 404 and "--backend torch" in res.json()["error"]


def test_serve_refuses_settings_a_segmentation_checkpoint_cannot_use(seg_weights, capsys):
    assert main(["serve", "--weights", str(seg_weights), "--backend", "onnxruntime", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "efficientdet export" in err and "Traceback" not in err
    assert main(["serve", "--weights", str(seg_weights), "--precision", "int8", "--port", "0"]) == 2
    assert "float32" in capsys.readouterr().err


class FailingSegmenter:
    """A real segmenter that raises (as a broken model might) on any batch holding an image of ``width``."""

    def __init__(self, segmenter, width: int) -> None:
        self.segmenter, self.width, self.calls = segmenter, width, []
        self.class_names = segmenter.class_names

    def __call__(self, images, batch_size=8):
        self.calls.append(len(images))
        if any(im.width == self.width for im in images):
            raise RuntimeError("simulated failure inside the network")
        return self.segmenter(images, batch_size=batch_size)


def test_an_image_that_fails_in_the_segmenter_fails_only_itself(seg_weights, photo_files):
    from efficientdet.serve.engine import Engine

    segmenter = FailingSegmenter(build_detector(str(seg_weights)), width=77)
    engine = Engine(segmenter)
    assert engine.task == "segment" and engine.seg_class_names == SEG_NAMES
    good = [Image.open(p).convert("RGB") for p in photo_files[:2]]
    out = engine.run([good[0], Image.new("RGB", (77, 40)), good[1]], [None] * 3)
    assert segmenter.calls == [3, 1, 1, 1]  # the batch, then each image alone
    assert isinstance(out[1], RuntimeError)
    for image, mask in zip(good, (out[0], out[2])):
        np.testing.assert_array_equal(mask, segmenter.segmenter([image])[0])
