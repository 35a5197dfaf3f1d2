"""Bad input gets the right status and a one-line JSON error while another client keeps being served."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib

import httpx
from PIL import Image


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's header)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then length + "IHDR"
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


class Client(threading.Thread):
    """Keeps sending a good image until stopped; records every status."""

    def __init__(self, url: str, image: bytes) -> None:
        super().__init__(daemon=True)
        self.url, self.image = url, image
        self.statuses: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set():
                self.statuses.append(client.post(f"{self.url}/v1/detect", content=self.image).status_code)


def test_bad_inputs_answer_clear_errors_and_the_service_keeps_serving(serve, photo_files):
    good = photo_files[0].read_bytes()
    truncated = good[: len(good) // 3]
    big_bomb = png_claiming(60_000, 60_000)  # 3.6 gigapixels: past Pillow's own bomb limit
    our_bomb = png_claiming(7_000, 7_000)  # 49 megapixels: past this server's --max-pixels 40 M
    too_large = b"\xff\xd8\xff" + bytes(1_200_000)  # 1.2 MB > --max-upload-mb 1
    cases = [
        ("text body", dict(content=b"hello, not an image"), {}, 415, "not an image"),
        ("JSON body", dict(content=b'{"image": "x"}', headers={"content-type": "application/json"}), {}, 415,
         "got JSON"),
        ("empty body", dict(content=b""), {}, 400, "no image data"),
        ("truncated JPEG", dict(content=truncated), {}, 400, "truncated"),
        ("bomb (Pillow limit)", dict(content=big_bomb), {}, 400, "too large"),
        ("bomb (server limit)", dict(content=our_bomb), {}, 400, "7000x7000"),
        ("over the upload limit", dict(content=too_large), {}, 413, "--max-upload-mb"),
        ("over the limit, chunked", dict(content=iter([too_large[:600_000], too_large[600_000:]])), {}, 413,
         "--max-upload-mb"),
        ("form without 'file'", dict(files={"image": ("a.jpg", good)}), {}, 400, "no file field 'file'"),
        ("score not a number", dict(content=good), {"score_threshold": "abc"}, 422, "score_threshold"),
        ("score above 1", dict(content=good), {"score_threshold": "1.5"}, 422, "score_threshold"),
        ("max_det 0", dict(content=good), {"max_det": "0"}, 422, "max_det"),
        ("max_det above the server's", dict(content=good), {"max_det": "101"}, 422, "--max-det"),
        ("score under the floor", dict(content=good), {"score_threshold": "0.0001"}, 422, "0.001"),
        ("negative iou", dict(content=good), {"iou": "-0.1"}, 422, "iou"),
    ]
    with serve(max_upload_mb=1, max_pixels=40_000_000) as url:
        client = Client(url, good)
        client.start()
        while not client.statuses:  # the other client is being served before the bad requests start
            time.sleep(0.05)
        served_before = len(client.statuses)
        for what, kwargs, params, status, words in cases:
            res = httpx.post(f"{url}/v1/detect", params=params, timeout=60, **kwargs)
            assert res.status_code == status, (what, res.status_code, res.text)
            body = res.json()
            assert set(body) == {"error"} and words in body["error"], (what, body)
            assert "\n" not in body["error"] and "Traceback" not in res.text, what
        assert httpx.get(f"{url}/v1/nowhere").json() == {"error": "Not Found"}
        time.sleep(0.3)
        client.stop.set()
        client.join(60)
        after = httpx.post(f"{url}/v1/detect", content=good)
    assert after.status_code == 200 and after.json()["detections"]
    assert set(client.statuses) == {200}
    assert len(client.statuses) > served_before, "the good client was not served while the bad requests ran"


def test_api_key_is_required_on_the_api_only(serve, photo_files):
    good = photo_files[0].read_bytes()
    with serve(api_key="s3cret") as url:
        assert httpx.post(f"{url}/v1/detect", content=good).status_code == 401
        wrong = httpx.post(f"{url}/v1/detect", content=good, headers={"X-API-Key": "guess"})
        assert wrong.status_code == 401 and "API key" in wrong.json()["error"]
        assert httpx.get(f"{url}/v1/model", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert httpx.post(f"{url}/v1/detect", content=good, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert httpx.get(f"{url}/v1/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        # probes, metrics and the page stay open (the page asks for the key itself)
        assert httpx.get(f"{url}/healthz").status_code == 200 and httpx.get(f"{url}/readyz").status_code == 200
        assert httpx.get(f"{url}/").status_code == 200
        metrics = httpx.get(f"{url}/metrics").text
        assert 'efficientdet_requests_total{endpoint="/v1/detect",status="401"} 2.0' in metrics
        assert 'efficientdet_requests_total{endpoint="/v1/model",status="401"} 1.0' in metrics
