"""Fixtures of the service tests: a tiny checkpoint, real servers (uvicorn in a thread or `efficientdet serve`
in a subprocess) on 127.0.0.1 with an ephemeral port."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch

from efficientdet import create_model
from efficientdet.serve import ServeSettings, build_detector, create_app
from efficientdet.serve.server import bind, url_of
from efficientdet.weights import save_checkpoint

NAMES = ["cat", "dog", "bird"]
IDS = [1, 5, 9]
SRC = str(Path(__file__).resolve().parents[2] / "src")


def tiny_model(seed: int = 0, **overrides) -> torch.nn.Module:
    """D0 backbone at 128 px, a 16-channel one-layer BiFPN and heads, perturbed so that scores spread
    (``overrides``: more model settings, e.g. a segmentation head for a joint model)."""
    torch.manual_seed(seed)
    model = create_model("d0", num_classes=3, class_names=NAMES, category_ids=IDS, image_size=128, fpn_channels=16,
                         fpn_layers=1, head_layers=1, **overrides).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        # the features reaching the class predictor vary little: amplify them, and bias the classes so that
        # ~20 detections of two classes with distinct scores pass 0.25 on the test photos
        w = model.class_net.predict.pw.weight
        w.mul_(100.0 / float(w.std()))  # std 100, whatever the initialisation
        model.class_net.predict.pw.bias.copy_(torch.tensor([-5.5, -3.5, -6.5] * 9))
    return model


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("serve") / "tiny.pt", tiny_model())


SEG_NAMES = ["background", "sky", "road", "tree"]


def _spread_seg_classifier(weight: torch.Tensor) -> None:
    """Large random classifier weights (no bias): every class wins somewhere on the test photos."""
    torch.manual_seed(1)
    weight.normal_(0, 10.0)


def tiny_seg_model() -> torch.nn.Module:
    """A segmentation-only ``d0_seg`` (P2 classifier) at 128 px with a 16-channel BiFPN and head, 4 classes."""
    torch.manual_seed(0)
    model = create_model("d0_seg", seg_classes=len(SEG_NAMES), seg_class_names=SEG_NAMES, image_size=128,
                         fpn_channels=16, fpn_layers=1, seg_head="p2", min_level=2, seg_channels=16,
                         seg_layers=1).eval()
    with torch.no_grad():
        _spread_seg_classifier(model.seg_net.classifier.weight)
        model.seg_net.classifier.bias.zero_()
    return model


def tiny_joint_model() -> torch.nn.Module:
    """:func:`tiny_model` with the official decoder segmentation head (detection + segmentation, 4 classes)."""
    model = tiny_model(seg_head="decoder", seg_classes=len(SEG_NAMES), seg_class_names=SEG_NAMES)
    with torch.no_grad():
        _spread_seg_classifier(model.seg_net.classifier.conv.weight)
        model.seg_net.classifier.conv.bias.zero_()
    return model


@pytest.fixture(scope="session")
def seg_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("serve_seg") / "tiny_seg.pt", tiny_seg_model())


@pytest.fixture(scope="session")
def joint_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("serve_joint") / "tiny_joint.pt", tiny_joint_model())


def wait_ready(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Poll ``/readyz`` until it answers 200 (fails if ``process`` exits first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}: {process.stderr.read()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready after {timeout} s")


@contextmanager
def thread_server(app, wait: bool = True) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on 127.0.0.1:<free port>; yields the base URL."""
    import uvicorn

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = url_of(sock)
    try:
        if wait:
            wait_ready(url)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        assert not thread.is_alive(), "the server thread did not stop"


@pytest.fixture
def serve(tiny_weights):
    """``serve(**settings)``: a context manager running the tiny model with those ServeSettings."""

    def start(max_det: int = 100, detector=None, **kwargs):
        det = detector if detector is not None else build_detector(str(tiny_weights), max_det=max_det)
        return thread_server(create_app(det, ServeSettings(weights=str(tiny_weights), **kwargs)))

    return start


def start_cli_server(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """``python -m efficientdet serve ARGS --port 0`` in a subprocess; returns it and the URL it printed."""
    full_env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
                "HF_HUB_OFFLINE": "1", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "efficientdet", "serve", *args, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)
    line = proc.stdout.readline()
    if "serving on" not in line:
        proc.kill()
        raise AssertionError(f"no URL printed: {line!r} {proc.stderr.read()}")
    url = line.split("serving on ", 1)[1].split()[0]
    return proc, url
