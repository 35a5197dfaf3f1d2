"""--precision: the per-CPU decision, int8 files quantised in onnxruntime, the bf16 PyTorch runner."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from efficientdet import Detector
from efficientdet.cli import main
from efficientdet.errors import ConfigError
from efficientdet.inference.onnx_export import export_onnx
from efficientdet.inference.precision import CpuInfo, cpu_info, resolve_precision
from efficientdet.inference.torch_runner import TorchRunner

ZEN4 = CpuInfo("AMD EPYC 9R14", frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}))
SPR = CpuInfo("Intel Xeon Platinum 8488C", frozenset({"avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8",
                                                      "amx_tile"}))
OLD = CpuInfo("Intel Xeon E5-2690 v4", frozenset({"avx2", "fma"}))


def test_cpu_info_reads_the_name_and_flags(tmp_path):
    text = ("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n\n"
            "processor\t: 1\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2\n")
    (tmp_path / "cpuinfo").write_text(text)
    info = cpu_info.__wrapped__(str(tmp_path / "cpuinfo"))
    assert info.name == "AMD EPYC 9R14" and info.cpu_class == "avx512_bf16" and info.int8_dot and not info.amx_bf16
    assert cpu_info.__wrapped__(str(tmp_path / "missing")).flags == frozenset()
    assert SPR.cpu_class == "amx" and OLD.cpu_class == "other" and not OLD.int8_dot


def test_auto_picks_a_reduced_precision_only_where_measured_and_possible():
    assert resolve_precision("auto", "cpu", None, ZEN4) == "fp32"  # bf16 is measured where the file runs
    assert resolve_precision("auto", "cpu", "calib/", ZEN4) == "int8"  # VNNI + calibration images
    assert resolve_precision("auto", "cpu", "calib/", OLD) == "fp32"  # no int8 dot products
    assert resolve_precision("auto", "cuda", "calib/", SPR) == "fp32"
    assert resolve_precision("bf16", "cpu", None, ZEN4) == "bf16"
    with pytest.raises(ConfigError, match="--calibration DIR"):
        resolve_precision("int8", "cpu", None, ZEN4)
    with pytest.raises(ConfigError, match="no bf16 instructions"):
        resolve_precision("bf16", "cpu", None, OLD)
    with pytest.raises(ConfigError, match="unknown precision"):
        resolve_precision("fp8", "cpu", None, ZEN4)


def test_spatial_mean_becomes_global_average_pooling_with_the_same_values(tmp_path):
    from onnx import TensorProto, helper

    from efficientdet.inference.quantize import spatial_means_as_pooling

    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=1),
             helper.make_node("ReduceMean", ["x"], ["c"], axes=[1], keepdims=1)]  # over channels: kept
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 5])],
                              [helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, 3, 1, 1]),
                               helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 1, 4, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.arange(60, dtype=np.float32).reshape(1, 3, 4, 5)
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert spatial_means_as_pooling(model) == 1
    assert [n.op_type for n in model.graph.node] == ["GlobalAveragePool", "ReduceMean"]
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(after[0].ravel(), [9.5, 29.5, 49.5], rtol=1e-6)  # means of 0..19, 20..39, 40..59
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], before[0], rtol=1e-6)


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_export_int8_quantises_the_network_ops_and_stays_close(tmp_path, tiny_checkpoint, make_tiny_model,
                                                                photo_files, capsys):
    calib = tmp_path / "calib"
    calib.mkdir()
    for p in photo_files:
        p.rename(calib / p.name)
    assert main(["export", "--weights", str(tiny_checkpoint), "--int8", "--out", str(tmp_path / "a.onnx")]) == 2
    assert "--int8 needs --calibration DIR" in capsys.readouterr().err
    out = tmp_path / "q.onnx"
    assert main(["export", "--weights", str(tiny_checkpoint), "--int8", "--calibration", str(calib),
                 "--out", str(out)]) == 0
    assert "int8 (calibrated on 3 images)" in capsys.readouterr().out
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["precision"] == "int8" and meta["producer"] == "efficientdet"
    producers = {o: n for n in proto.graph.node for o in n.output}
    assert not [n for n in proto.graph.node if n.op_type == "ReduceMean"]  # the SE means became pooling
    pools = [n for n in proto.graph.node if n.op_type == "GlobalAveragePool"]
    sigmoids = [n for n in proto.graph.node if n.op_type == "Sigmoid"]
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert sigmoids and convs
    # SiLU / the SE gate quantised as well as the convolutions: each one reads a dequantised int8 tensor
    assert pools
    for node in sigmoids + convs + pools:
        assert producers[node.input[0]].op_type == "DequantizeLinear", node.name
    assert all(producers[w].op_type == "DequantizeLinear" for w in (c.input[1] for c in convs))
    # against the float32 file of the same model
    fp32 = export_onnx(make_tiny_model(), tmp_path / "fp32.onnx")
    x = np.random.default_rng(0).standard_normal((1, 3, 128, 128)).astype(np.float32)
    ref = _session(fp32).run(None, {"images": x})
    got = _session(out).run(None, {"images": x})
    for r, g in zip(ref, got):
        assert r.shape == g.shape
        assert np.corrcoef(r.ravel(), g.ravel())[0, 1] > 0.98
    # predicting with the file: it runs in its own precision; --precision int8 on it is an error
    assert main(["predict", str(calib), "--weights", str(out), "--score-threshold", "0.3"]) == 0
    assert main(["predict", str(calib), "--weights", str(out), "--precision", "int8"]) == 2
    from efficientdet.serve.engine import build_detector

    with pytest.raises(ConfigError, match="precision it was exported in"):
        build_detector(str(out), precision="int8", calibration=str(calib))


def test_detector_int8_is_cached_by_calibration_images(tmp_path, tiny_checkpoint, photo_files, monkeypatch):
    monkeypatch.setenv("EFFICIENTDET_CACHE", str(tmp_path / "cache"))
    calib = tmp_path / "calib"
    calib.mkdir()
    for p in photo_files[:2]:
        p.rename(calib / p.name)
    det = Detector(weights=tiny_checkpoint, precision="int8", calibration=calib, score_threshold=0.3)
    path = det.runner.path
    assert det.runner.metadata["precision"] == "int8" and "-int8-" in path.name and path.is_file()
    mtime = path.stat().st_mtime_ns
    ref = Detector(weights=tiny_checkpoint, backend="onnxruntime", score_threshold=0.3)(photo_files[2])[0]
    again = Detector(weights=tiny_checkpoint, precision="int8", calibration=calib, score_threshold=0.3)
    assert again.runner.path == path and path.stat().st_mtime_ns == mtime  # reused, not re-quantised
    got = again(photo_files[2])[0]
    assert len(got) > 0 and len(ref) > 0
    assert abs(float(got.scores.max()) - float(ref.scores.max())) < 0.05
    with pytest.raises(ConfigError, match="drop --backend torch"):
        Detector(weights=tiny_checkpoint, precision="int8", calibration=calib, backend="torch")
    with pytest.raises(ConfigError, match="--calibration is for --precision int8 or auto"):
        Detector(weights=tiny_checkpoint, precision="fp32", calibration=calib)
    # auto with a backend that cannot run int8: float32 in that backend, not an error
    assert Detector(weights=tiny_checkpoint, precision="auto", calibration=calib, backend="torch").runner.dtype is None


def test_bf16_runner_runs_the_network_in_bfloat16(make_tiny_model):
    # the optimised (oneDNN) path needs bf16-capable vector units (AVX-512 or AVX-NE-CONVERT), which
    # --precision bf16 requires anyway (resolve_precision above); elsewhere the plain PyTorch kernels
    optimize = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    model = make_tiny_model()
    fp32 = TorchRunner(model, torch.device("cpu"), optimize)
    bf16 = TorchRunner(model, torch.device("cpu"), optimize, dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.network.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # the model itself is untouched
    x = np.random.default_rng(1).standard_normal((1, 128, 128, 3)).astype(np.float32)
    (c32, b32), (c16, b16) = fp32.run(x), bf16.run(x)
    assert c16.dtype == torch.float32 and c16.shape == c32.shape and b16.shape == b32.shape
    # bf16 keeps 8 bits of mantissa: the outputs agree to a few percent of their range, not exactly
    for ref, got in ((c32, c16), (b32, b16)):
        assert float((got - ref).abs().max()) < 0.1 * float(ref.max() - ref.min())
        assert np.corrcoef(got.ravel().numpy(), ref.ravel().numpy())[0, 1] > 0.99
    assert not torch.equal(c16, c32)


def test_training_precision_default_is_float32_on_the_cpu():
    from efficientdet.train import TrainConfig
    from efficientdet.train.build import amp_dtype

    cpu = torch.device("cpu")
    assert amp_dtype(TrainConfig(), cpu) is None  # bf16 autocast measured slower on the CPUs measured
    assert amp_dtype(TrainConfig(amp=True), cpu) == torch.bfloat16
    assert amp_dtype(TrainConfig(amp=False), torch.device("cuda")) is None
    assert amp_dtype(TrainConfig(), torch.device("cuda")) == torch.float16
