"""efficientdet.deploy: exported ONNX files run without PyTorch and give the Detector's detections."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from efficientdet import Detector, create_model
from efficientdet.cli import main
from efficientdet.deploy import OnnxModel
from efficientdet.errors import ConfigError, WeightsError
from efficientdet.export.onnx import export_onnx

from .test_export import assert_same_detections, assert_same_records


@pytest.fixture(scope="module")
def nms_file(tmp_path_factory, tiny_checkpoint):
    path = tmp_path_factory.mktemp("deploy") / "tiny_nms.onnx"
    export_onnx(create_model("d0", weights=tiny_checkpoint), path, nms=True, score_threshold=0.05, max_det=50)
    return path


def test_nms_file_gives_the_detector_detections_on_letterboxed_images(nms_file, tiny_checkpoint, photo_files):
    model = OnnxModel(nms_file, threads=1)
    assert model.nms and model.image_size == 128 and model.score_threshold == 0.05 and model.max_det == 50
    reference = Detector("d0", weights=tiny_checkpoint, score_threshold=0.05, max_det=50)
    paths = [str(p) for p in photo_files]  # 320x200, 150x260, 128x128: boxes are clipped to each image
    got = model(paths, batch_size=2)
    want = reference(paths)
    assert [g.image_size for g in got] == [(320, 200), (150, 260), (128, 128)]
    for g, w in zip(got, want):
        assert len(g) > 5
        assert g.boxes.dtype == np.float32 and g.labels.dtype == np.int64 and g.source is not None
        assert_same_detections(g.boxes, g.scores, g.labels, w)
        assert g.names == [w.names[int(np.argmin(np.abs(w.scores - s)))] for s in g.scores]
        assert (g.boxes[:, 2] <= g.image_size[0] + 1e-3).all() and (g.boxes[:, 3] <= g.image_size[1] + 1e-3).all()
    # a stricter threshold and fewer detections are filtered from the exported ones
    strict = OnnxModel(nms_file, score_threshold=0.3, max_det=3)(paths[0])[0]
    assert len(strict) <= 3 and (strict.scores >= 0.3).all()
    np.testing.assert_allclose(strict.scores, got[0].scores[got[0].scores >= 0.3][:3])


def test_deploy_does_not_import_torch(nms_file, photo_files):
    code = (
        "import json, sys\n"
        "from efficientdet.deploy import OnnxModel\n"
        f"dets = OnnxModel({str(nms_file)!r})({str(photo_files[0])!r})\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'n': len(dets[0]), 'names': dets[0].names[:2]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["torch"] is False and result["n"] > 5 and all(result["names"])


def test_raw_file_without_torch_is_a_one_line_error(tmp_path, tiny_checkpoint, photo_files):
    """Where PyTorch is missing (blocked here), a raw export says what to do instead of ModuleNotFoundError."""
    path = export_onnx(create_model("d0", weights=tiny_checkpoint), tmp_path / "raw.onnx")
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # import torch now raises ImportError, as without the package\n"
        "from efficientdet.deploy import OnnxModel\n"
        "from efficientdet.errors import ConfigError\n"
        f"model = OnnxModel({str(path)!r})\n"
        "try:\n"
        f"    model({str(photo_files[0])!r})\n"
        "except ConfigError as exc:\n"
        "    print('ConfigError:', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "raw.onnx has raw outputs (exported without --nms)" in out.stdout and "export --nms" in out.stdout


def test_raw_file_and_fixed_batch(tmp_path, tiny_checkpoint, photo_files):
    path = export_onnx(create_model("d0", weights=tiny_checkpoint), tmp_path / "raw_b2.onnx", batch=2)
    model = OnnxModel(path, score_threshold=0.05, max_det=50)
    assert not model.nms and model.session.get_inputs()[0].shape[0] == 2
    reference = Detector("d0", weights=tiny_checkpoint, score_threshold=0.05, max_det=50)
    paths = [str(p) for p in photo_files]
    for g, w in zip(model(paths, batch_size=3), reference(paths)):  # one full chunk of 2, one padded
        assert len(g) > 5
        assert_same_detections(g.boxes, g.scores, g.labels, w)


def test_settings_outside_the_export_and_bad_files_are_one_line_errors(tmp_path, nms_file):
    with pytest.raises(ConfigError, match="score threshold 0.01"):
        OnnxModel(nms_file, score_threshold=0.01)
    with pytest.raises(ConfigError, match="soft-NMS"):
        OnnxModel(nms_file, soft_nms=True)
    with pytest.raises(WeightsError, match="no such file"):
        OnnxModel(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(WeightsError, match="not a loadable ONNX model"):
        OnnxModel(tmp_path / "junk.onnx")
    foreign = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]),
        opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.save(foreign, tmp_path / "foreign.onnx")
    with pytest.raises(WeightsError, match="no efficientdet metadata"):
        OnnxModel(tmp_path / "foreign.onnx")


def test_predict_command_runs_an_onnx_file(tmp_path, nms_file, tiny_checkpoint, photo_files, capsys):
    onnx_json, torch_json = tmp_path / "onnx.json", tmp_path / "torch.json"
    paths = [str(p) for p in photo_files]
    common = ["--score-threshold", "0.05", "--max-det", "50"]
    assert main(["predict", *paths, "--weights", str(nms_file), "--json", str(onnx_json), *common]) == 0
    assert main(["predict", *paths, "--weights", str(tiny_checkpoint), "--json", str(torch_json), *common]) == 0
    got, want = json.loads(onnx_json.read_text()), json.loads(torch_json.read_text())
    assert len(got) == len(want) > 10
    assert_same_records(got, want)  # boxes and scores, image by image
    assert main(["predict", paths[0], "--weights", str(nms_file), "--score-threshold", "0.01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error:") and "re-export" in err
