"""OpenVINO: the exported file in OpenVINO's CPU plugin (float32 and bf16), and how ``auto`` picks it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from efficientdet import Detector
from efficientdet.cli import main
from efficientdet.errors import ConfigError
from efficientdet.inference import bf16_probe, ov_runtime, precision
from efficientdet.inference.bf16_probe import bf16_measured_faster
from efficientdet.inference.config import PostprocessConfig
from efficientdet.inference.onnx_export import export_onnx
from efficientdet.inference.onnxrt import make_session
from efficientdet.inference.ov_runtime import OpenVinoSession
from efficientdet.inference.precision import CpuInfo
from efficientdet.inference.select import export_to_cache

ZEN4 = CpuInfo("AMD EPYC 9R14", frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}))
OLD = CpuInfo("Intel Xeon E5-2690 v4", frozenset({"avx2", "fma"}))


#: OpenVINO rejects a 3 x 3 max pool over the 2 x 2 P6 of a 128 px input (onnxruntime accepts it; with NMS
#: inside, OpenVINO crashed), so these models take 256 px
SIZE = 256


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFICIENTDET_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def ov_checkpoint(tmp_path_factory, make_tiny_model):
    from efficientdet.weights import save_checkpoint

    return save_checkpoint(tmp_path_factory.mktemp("ov") / "tiny256.pt", make_tiny_model(0, SIZE))


@pytest.fixture(scope="module")
def ov_model(make_tiny_model):
    return make_tiny_model(0, SIZE)


def test_float32_equals_onnxruntime_raw_and_with_nms_inside(tmp_path, ov_model):
    model = ov_model
    x = np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    raw = export_onnx(model, tmp_path / "raw.onnx")
    ref = make_session(raw).run(None, {"images": x})
    got = OpenVinoSession(raw, 1, "fp32").run(None, {"images": x})
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g, r, atol=1e-4, rtol=1e-4)
    nms = export_to_cache(model, tmp_path / "nms.onnx", PostprocessConfig(score_threshold=0.05))
    ov = OpenVinoSession(nms, 1, "fp32")
    # the optional per-image extent stays an input (OpenVINO would fold the initializer into a constant)
    assert [i.name for i in ov.get_overridable_initializers()] == ["image_sizes"]
    names = ["boxes", "scores", "labels", "num_detections"]
    for hw in ([SIZE, SIZE], [70, 40]):  # the second clips the boxes to a 40 x 70 image on the canvas
        feeds = {"images": x, "image_sizes": np.array([hw], np.float32)}
        ref = make_session(nms).run(names, feeds)
        got = ov.run(names, feeds)
        n = int(ref[3][0])
        assert n > 0 and int(got[3][0]) == n
        np.testing.assert_allclose(got[0][0, :n], ref[0][0, :n], atol=1e-3)
        np.testing.assert_allclose(got[1][0, :n], ref[1][0, :n], atol=1e-5)
        np.testing.assert_array_equal(got[2][0, :n], ref[2][0, :n])
    assert float(got[0][0, :n, [0, 2]].max()) <= 40.0 and float(got[0][0, :n, [1, 3]].max()) <= 70.0


@pytest.mark.skipif(not precision.bf16_capable(), reason="bf16 inference needs AVX512-BF16 or AMX")
def test_bf16_runs_in_bfloat16_and_stays_close(tmp_path, ov_model):
    raw = export_onnx(ov_model, tmp_path / "raw.onnx")
    x = np.random.default_rng(1).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    bf16 = OpenVinoSession(raw, 1, "bf16")
    assert "bfloat16" in str(bf16.compiled.get_property("INFERENCE_PRECISION_HINT"))
    ref = make_session(raw).run(None, {"images": x})
    got = bf16.run(None, {"images": x})
    for r, g in zip(ref, got):
        assert g.dtype == np.float32 and g.shape == r.shape
        assert not np.array_equal(g, r)  # really computed in reduced precision
        assert np.corrcoef(g.ravel(), r.ravel())[0, 1] > 0.99
        assert float(np.abs(g - r).max()) < 0.1 * float(r.max() - r.min())


def test_the_bf16_probe_measures_once_and_remembers(tmp_path, ov_model, make_tiny_model):
    raw = export_onnx(ov_model, tmp_path / "raw.onnx")
    answer = bf16_measured_faster(raw, 1, rounds=2)
    memo = list((tmp_path / "cache" / "openvino" / "probe").glob("*.json"))
    assert len(memo) == 1
    record = json.loads(memo[0].read_text())
    assert record["bf16"] == answer and record["ms"]["fp32"] > 0 and record["ms"]["bf16"] > 0
    assert answer == (record["ms"]["bf16"] < bf16_probe.PROBE_MARGIN * record["ms"]["fp32"])
    memo[0].write_text(json.dumps({"bf16": not answer}))  # a remembered answer is read, not re-measured
    assert bf16_measured_faster(raw, 1) is (not answer)
    assert bf16_measured_faster(raw, 2) == json.loads(  # other threads: measured anew
        sorted((tmp_path / "cache" / "openvino" / "probe").glob("*.json"), key=lambda p: p.stat().st_mtime)[-1]
        .read_text())["bf16"]


def test_a_graph_openvino_cannot_compile_is_not_faster(tmp_path, make_tiny_model):
    small = export_onnx(make_tiny_model(), tmp_path / "small.onnx")  # 128 px: OpenVINO rejects its P7 pooling
    with pytest.raises(ValueError, match="OpenVINO needs at least 192 px"):
        OpenVinoSession(small, 1, "bf16")
    assert bf16_measured_faster(small, 1) is False
    record = json.loads(bf16_probe.probe_path(small, 1).read_text())
    assert record["bf16"] is False and record["error"]


def _remember(path, threads, faster: bool) -> None:
    memo = bf16_probe.probe_path(path, threads)
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(json.dumps({"bf16": faster}))


def test_auto_runs_bf16_in_openvino_only_where_measured_faster(tmp_path, ov_checkpoint, photo_files, monkeypatch):
    monkeypatch.setattr(precision, "cpu_info", lambda: ZEN4)
    ref = Detector(weights=ov_checkpoint, backend="onnxruntime", score_threshold=0.3)
    assert ref.runner.engine == "onnxruntime"
    path = ref.runner.path  # the cached export that auto runs too
    _remember(path, 1, False)
    slow = Detector(weights=ov_checkpoint, backend="auto", precision="auto", threads=1, score_threshold=0.3)
    assert (slow.runner.engine, slow.runner.precision) == ("onnxruntime", "fp32")
    _remember(path, 1, True)
    fast = Detector(weights=ov_checkpoint, backend="auto", precision="auto", threads=1, score_threshold=0.3)
    assert (fast.runner.engine, fast.runner.precision) == ("openvino", "bf16") and fast.runner.path == path
    # a second start on this path needs no PyTorch (the export is cached, the measurement remembered)
    import os
    import subprocess
    import sys

    code = ("import sys; from efficientdet.inference import precision as p; p.cpu_info = lambda: p.CpuInfo("
            f"{ZEN4.name!r}, frozenset({sorted(ZEN4.flags)!r}))\n"
            "from efficientdet import Detector\n"
            f"d = Detector(weights={str(ov_checkpoint)!r}, backend='auto', precision='auto', threads=1, "
            "score_threshold=0.3)\n"
            "print(d.runner.engine, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert done.stdout.split() == ["openvino", "False"], done.stderr[-2000:]
    a, b = ref(photo_files[0])[0], fast(photo_files[0])[0]
    assert len(a) > 0 and abs(len(a) - len(b)) <= 1
    assert abs(float(a.scores.max()) - float(b.scores.max())) < 0.05
    # explicit choices win over the measurement; a CPU without bf16 never gets it
    assert Detector(weights=ov_checkpoint, backend="onnxruntime", precision="auto", threads=1).runner.engine == \
        "onnxruntime"
    assert Detector(weights=ov_checkpoint, backend="auto", precision="fp32", threads=1).runner.engine == \
        "onnxruntime"
    monkeypatch.setattr(precision, "cpu_info", lambda: OLD)
    assert Detector(weights=ov_checkpoint, precision="auto", backend="auto", threads=1).runner.engine == \
        "onnxruntime"


def test_backend_openvino_and_bf16_on_the_command_line(tmp_path, ov_checkpoint, photo_files, monkeypatch, capsys):
    monkeypatch.setattr(precision, "cpu_info", lambda: ZEN4)
    folder = photo_files[0].parent
    assert main(["predict", str(folder), "--weights", str(ov_checkpoint), "--backend", "openvino",
                 "--precision", "fp32", "--score-threshold", "0.3", "--json", str(tmp_path / "ov.json")]) == 0
    assert main(["predict", str(folder), "--weights", str(ov_checkpoint), "--backend", "onnxruntime",
                 "--precision", "fp32", "--score-threshold", "0.3", "--json", str(tmp_path / "ort.json")]) == 0
    ov, ort = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("ov", "ort"))
    assert len(ort) > 0 and len(ov) == len(ort)  # COCO records; equal scores may come in another order
    for a in ort:
        assert any(b["file_name"] == a["file_name"] and b["category_id"] == a["category_id"]
                   and np.allclose(b["bbox"], a["bbox"], atol=0.05) and abs(b["score"] - a["score"]) < 1e-3
                   for b in ov), a
    capsys.readouterr()
    assert main(["predict", str(folder), "--weights", str(ov_checkpoint), "--backend", "onnxruntime",
                 "--precision", "bf16"]) == 2
    assert "onnxruntime has no bf16 CPU kernels" in capsys.readouterr().err
    # an exported file: bf16 runs it in OpenVINO; int8 stays an error
    out = tmp_path / "m.onnx"
    assert main(["export", "--weights", str(ov_checkpoint), "--out", str(out)]) == 0
    det = Detector(weights=out, precision="bf16")
    assert (det.runner.engine, det.runner.precision) == ("openvino", "bf16")
    from efficientdet.deploy import OnnxModel

    assert (OnnxModel(out, precision="bf16").runner.engine, OnnxModel(out).runner.engine) == ("openvino",
                                                                                              "onnxruntime")
    with pytest.raises(ConfigError, match="drop --backend torch"):
        Detector(weights=out, backend="torch")


def test_missing_openvino_is_a_one_line_error(ov_checkpoint, monkeypatch):
    monkeypatch.setattr(ov_runtime, "openvino_available", lambda: False)
    with pytest.raises(ConfigError, match="pip install openvino"):
        Detector(weights=ov_checkpoint, backend="openvino")
    # auto without OpenVINO: onnxruntime, whatever the CPU
    monkeypatch.setattr(precision, "cpu_info", lambda: ZEN4)
    assert Detector(weights=ov_checkpoint, backend="auto", precision="auto").runner.engine == "onnxruntime"
