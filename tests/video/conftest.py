"""Fixtures for the video tests: real video files made with PyAV, a tiny detector, a local HTTP server."""

from __future__ import annotations

import functools
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from efficientdet import Detector, create_model
from efficientdet.weights import save_checkpoint

TINY = dict(image_size=128, fpn_channels=16, fpn_layers=1, head_layers=1)
FPS = 25


def scene(i: int, width: int, height: int) -> np.ndarray:
    """Frame ``i`` of the test clips: a colour gradient with a red and a green rectangle moving across it."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([xx * 200 // max(1, width), yy * 200 // max(1, height), np.full_like(xx, 60)], -1).astype(np.uint8)
    x = (i * 7) % max(1, width - width // 4)
    img[height // 5 : height // 2, x : x + width // 4] = (230, 30, 30)
    y = (i * 5) % max(1, height - height // 4)
    img[y : y + height // 4, width // 2 : width // 2 + width // 5] = (30, 220, 60)
    return img


def make_video(path: Path, frames: int = 24, width: int = 320, height: int = 192, fps: int = FPS,
               codec: str = "libx264", options: dict[str, str] | None = None, rotation: int = 0) -> Path:
    """Encode ``frames`` frames of :func:`scene` into ``path`` (the container from the suffix); ``rotation``:
    the display matrix's counter-clockwise degrees (a phone filming upright stores -90 and landscape pixels)."""
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(scene(i, width, height), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def decode_all(path: str | Path) -> tuple[list[np.ndarray], list[float], dict]:
    """Every frame of a video (RGB arrays), their times in seconds, and the stream's properties."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = {"width": stream.codec_context.width, "height": stream.codec_context.height,
                "rate": stream.average_rate, "codec": stream.codec_context.name}
        frames, times = [], []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.pts * stream.time_base))
    return frames, times, info


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: the tiny network gains nothing from more, and a busy machine makes two slow."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model():
    torch.manual_seed(0)
    model = create_model("d0", num_classes=2, class_names=["red", "green"], category_ids=[3, 7], **TINY)
    with torch.no_grad():  # perturbed so that scores vary with the picture and some pass the threshold
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        model.class_net.predict.pw.weight.normal_(0, 1.0)
        model.class_net.predict.pw.bias.fill_(-3.0)
    return model.eval()


@pytest.fixture
def detector(one_thread) -> Detector:
    return Detector(tiny_model(), score_threshold=0.2, max_det=8)


@pytest.fixture
def tiny_weights(tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "tiny.pt", tiny_model())


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return make_video(tmp_path / "clip.mp4")


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder; ``/drop/NAME`` announces the whole file, sends half of it and cuts the connection."""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if not self.path.startswith("/drop/"):
            super().do_GET()
            return
        data = (Path(self.directory) / self.path[len("/drop/"):]).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "video/mp2t")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, served folder) of an HTTP server on 127.0.0.1 running in this process."""
    root = tmp_path / "served"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()
