"""Start-up, readiness, shutdown and replicas: `efficientdet serve` and uvicorn workers as real processes."""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from efficientdet.cli import main
from efficientdet.serve import ServeSettings, build_detector, create_app

from .conftest import SRC, start_cli_server, thread_server, wait_ready


def test_sigterm_finishes_the_request_in_flight_and_exits_0(tiny_weights, photo_files):
    # --max-wait-ms 3000: a lone request waits 3 s for company, so it is surely in flight at SIGTERM
    proc, url = start_cli_server(["--weights", str(tiny_weights), "--max-wait-ms", "3000"])
    try:
        assert url.startswith("http://127.0.0.1:")
        wait_ready(url, process=proc)
        with ThreadPoolExecutor(1) as pool:
            t0 = time.monotonic()
            pending = pool.submit(httpx.post, f"{url}/v1/detect", content=photo_files[0].read_bytes(), timeout=60)
            time.sleep(1.0)
            assert not pending.done(), "the request should still be waiting in the batcher"
            proc.send_signal(signal.SIGTERM)
            res = pending.result()
            waited = time.monotonic() - t0
        assert res.status_code == 200 and res.json()["detections"] and waited >= 2.5
        assert proc.wait(60) == 0
        out, err = proc.communicate()
        assert "Traceback" not in err and "stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()


def test_bad_weights_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["serve", "--weights", str(tmp_path / "nothing.pt"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing.pt" in err and "Traceback" not in err


class GatedDetector:
    """A real detector whose calls wait for ``gate`` (``entered`` is set once a call has started)."""

    def __init__(self, detector) -> None:
        self.detector = detector
        self.gate, self.entered = threading.Event(), threading.Event()

    def __getattr__(self, name):  # the wrapped detector's attributes (not while copy.copy builds a copy)
        if name == "detector":
            raise AttributeError(name)
        return getattr(self.detector, name)

    def with_settings(self, **changes):  # the engine's per-options copies stay wrapped (and share the state)
        clone = copy.copy(self)
        clone.detector = self.detector.with_settings(**changes)
        return clone

    def __call__(self, images, batch_size=8):
        self.entered.set()
        assert self.gate.wait(60)
        return self.detector(images, batch_size=batch_size)


def test_healthz_answers_while_the_model_works(tiny_weights, photo_files):
    gated = GatedDetector(build_detector(str(tiny_weights)))
    gated.gate.set()  # warm-up passes
    with thread_server(create_app(gated, ServeSettings())) as url:
        gated.gate.clear()
        gated.entered.clear()
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, f"{url}/v1/detect", content=photo_files[0].read_bytes(), timeout=60)
            assert gated.entered.wait(30), "the model never started"
            t0 = time.monotonic()
            health = httpx.get(f"{url}/healthz", timeout=5)
            metrics = httpx.get(f"{url}/metrics", timeout=5)
            assert time.monotonic() - t0 < 2 and health.status_code == 200 and metrics.status_code == 200
            assert not pending.done(), "the model call should still be running"
            gated.gate.set()
            assert pending.result().status_code == 200


def test_not_ready_until_the_model_is_loaded_and_warm(tiny_weights, photo_files):
    gate = threading.Event()

    def factory():
        assert gate.wait(60)
        return build_detector(str(tiny_weights))

    with thread_server(create_app(detector_factory=factory), wait=False) as url:
        deadline = time.monotonic() + 30
        while True:  # the server answers before the model is there
            try:
                health = httpx.get(f"{url}/healthz")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert health.status_code == 200
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        early = httpx.post(f"{url}/v1/detect", content=photo_files[0].read_bytes())
        assert early.status_code == 503 and early.headers["retry-after"] == "1" and "not ready" in early.json()["error"]
        gate.set()
        wait_ready(url)
        assert httpx.post(f"{url}/v1/detect", content=photo_files[0].read_bytes()).status_code == 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_uvicorn_workers_load_the_model_once_per_replica(tiny_weights, photo_files):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": SRC, "EFFICIENTDET_SERVE_WEIGHTS": str(tiny_weights),
           "EFFICIENTDET_SERVE_MAX_BATCH": "4"}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "efficientdet.serve.app:create_app_from_env",
                             "--workers", "2", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    try:
        wait_ready(url, timeout=120, process=proc)
        deadline = time.monotonic() + 120
        while sum("model ready in process" in ln for ln in lines) < 2:  # both replicas, each loaded once
            assert time.monotonic() < deadline, lines
            lines.append(proc.stderr.readline())
        answers = [httpx.post(f"{url}/v1/detect", content=photo_files[0].read_bytes(), timeout=60) for _ in range(4)]
        assert all(a.status_code == 200 for a in answers)
        assert httpx.get(f"{url}/v1/model").json()["options"]["max_det_max"] == 100
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
    pids = {ln.rsplit(" ", 1)[1].strip() for ln in lines if "model ready in process" in ln}
    assert len(pids) == 2, lines


def test_an_nms_onnx_file_is_served_without_pytorch_and_ctrl_c_exits_0(tiny_weights, photo_files, tmp_path):
    from efficientdet import create_model
    from efficientdet.export.onnx import export_onnx

    onnx_file = tmp_path / "tiny_nms.onnx"
    export_onnx(create_model("d0", weights=tiny_weights), onnx_file, nms=True, score_threshold=0.1)
    proc, url = start_cli_server(["--weights", str(onnx_file)])
    try:
        wait_ready(url, process=proc)
        res = httpx.post(f"{url}/v1/detect", files={"file": ("a.jpg", photo_files[0].read_bytes())})
        assert res.status_code == 200 and res.json()["detections"]
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "onnxruntime" in maps and "libtorch" not in maps  # the deployment path: no PyTorch loaded
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(60) == 0


def test_a_rolling_restart_behind_a_readiness_checking_balancer_loses_no_request(tiny_weights, photo_files):
    """Two replicas; one is stopped and replaced by a new one that takes a while to load, while a client
    keeps sending through a balancer that routes only to replicas whose /readyz answers 200."""
    image = photo_files[0].read_bytes()
    replicas: dict[str, str | None] = {"a": None, "b": None}
    statuses: list[int] = []
    served_by: list[str] = []
    stop = threading.Event()

    def balancer() -> None:
        turn = 0
        while not stop.is_set():
            ready = []
            for name, url in sorted(replicas.items()):
                try:
                    if url and httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        ready.append((name, url))
                except httpx.TransportError:
                    pass
            if not ready:
                time.sleep(0.05)
                continue
            name, url = ready[turn % len(ready)]
            turn += 1
            try:
                statuses.append(httpx.post(f"{url}/v1/detect", content=image, timeout=60).status_code)
                served_by.append(name)
            except httpx.TransportError:  # the replica went away between the probe and the request
                statuses.append(-1)

    gate = threading.Event()

    def slow_factory():
        assert gate.wait(60)
        return build_detector(str(tiny_weights))

    with thread_server(create_app(build_detector(str(tiny_weights)))) as url_b:
        replicas["b"] = url_b
        with thread_server(create_app(build_detector(str(tiny_weights)))) as url_a:
            replicas["a"] = url_a
            client = threading.Thread(target=balancer, daemon=True)
            client.start()
            while served_by.count("a") < 2:
                time.sleep(0.05)
            replicas["a"] = None  # taken out of the balancer first (drained), then stopped gracefully
            drained = len(statuses) + 2
            while len(statuses) < drained:
                time.sleep(0.05)
        served_before = len(statuses)
        with thread_server(create_app(detector_factory=slow_factory), wait=False) as url_a2:
            replicas["a2"] = url_a2  # up but not ready: the balancer must not use it yet
            while len(statuses) < served_before + 3:
                time.sleep(0.05)
            assert "a2" not in served_by
            gate.set()
            wait_ready(url_a2)
            deadline = time.monotonic() + 60
            while served_by.count("a2") < 2:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            stop.set()
            client.join(60)
    assert set(statuses) == {200}, statuses
