"""ONNX / TorchScript export through the CLI, checked against PyTorch with onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from efficientdet import Detector, create_model
from efficientdet.cli import main
from efficientdet.export.onnx import read_onnx_metadata
from efficientdet.export.torchscript import load_torchscript
from efficientdet.inference.graph import RawGraph
from efficientdet.labels import LabelMap
from efficientdet.preprocess import letterbox, normalize


def _torch_raw(model, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        cls, box = RawGraph(model.eval(), model.config.num_classes)(x)
    return cls.numpy(), box.numpy()


def _canvas(model, path) -> torch.Tensor:
    from PIL import Image

    canvas, _ = letterbox(Image.open(path).convert("RGB"), model.config.image_size, model.config.mean)
    return normalize(torch.from_numpy(canvas)[None], model.config.mean, model.config.std)


def assert_same_detections(boxes, scores, labels, got, box_atol: float = 1e-3, score_atol: float = 1e-5) -> None:
    """Same detections up to the order of (nearly) tied scores."""
    assert len(scores) == len(got)
    np.testing.assert_allclose(scores, got.scores, atol=score_atol)
    for box, score, label in zip(boxes, scores, labels):
        close = (np.abs(got.boxes - box).max(axis=1) <= box_atol) & (np.abs(got.scores - score) <= score_atol)
        assert ((got.labels == label) & close).any(), f"detection {box} {score} {label} not found"


def assert_same_records(got: list[dict], want: list[dict], box_atol: float = 5e-3, score_atol: float = 2e-5) -> None:
    """Equal ``predict --json`` records (COCO results: bbox [x, y, w, h] rounded to 1e-3, score to 1e-5), image by
    image, up to the order of (nearly) tied scores: each record is matched by category, score and box."""
    files = sorted({r["file_name"] for r in want})
    assert files == sorted({r["file_name"] for r in got}) and files
    for name in files:
        g = [r for r in got if r["file_name"] == name]
        w = [r for r in want if r["file_name"] == name]
        assert len(g) == len(w) > 0, name
        np.testing.assert_allclose([r["score"] for r in g], [r["score"] for r in w], atol=score_atol, rtol=0)
        boxes = np.array([r["bbox"] for r in w])
        scores = np.array([r["score"] for r in w])
        ids = np.array([r["category_id"] for r in w])
        for r in g:
            close = (np.abs(boxes - r["bbox"]).max(axis=1) <= box_atol) & (np.abs(scores - r["score"]) <= score_atol)
            assert ((ids == r["category_id"]) & close).any(), f"{name}: {r} not in the reference records"


def test_onnx_raw_export_dynamic_batch(tmp_path, tiny_checkpoint):
    out = tmp_path / "onnx" / "tiny.onnx"
    rc = main(["export", "--model", "d0", "--weights", str(tiny_checkpoint), "--out", str(out), "--dynamic-batch"])
    assert rc == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny.onnx"]  # self-contained: no external data
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    model = create_model("d0", weights=tiny_checkpoint)
    meta = read_onnx_metadata(out)
    assert json.loads(meta["class_names"]) == list(model.labels.names)
    assert json.loads(meta["category_ids"]) == list(model.labels.category_ids)
    assert int(meta["image_size"]) == 128 and meta["outputs"] == "raw"
    assert json.loads(meta["config"])["fpn_channels"] == 16
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 3, 128, 128)
        cls, box = session.run(None, {"images": x.numpy()})
        ref_cls, ref_box = _torch_raw(model, x)
        assert cls.shape == (batch, ref_cls.shape[1], 90) and box.shape == (batch, ref_cls.shape[1], 4)
        np.testing.assert_allclose(cls, ref_cls, atol=1e-4, rtol=0)
        np.testing.assert_allclose(box, ref_box, atol=1e-4, rtol=0)


def test_onnx_nms_export_matches_detector(tmp_path, tiny_checkpoint, photo_files):
    out = tmp_path / "nms.onnx"
    args = ["export", "--model", "d0", "--weights", str(tiny_checkpoint), "--out", str(out), "--nms",
            "--score-threshold", "0.05", "--max-det", "50"]
    assert main(args) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores", "labels", "num_detections"]
    detector = Detector("d0", weights=tiny_checkpoint, score_threshold=0.05, max_det=50)
    square = photo_files[2]  # 128x128 = the network input: canvas pixels are original pixels
    boxes, scores, labels, num = session.run(None, {"images": _canvas(detector.model, square).numpy()})
    assert boxes.shape == (1, 50, 4) and scores.shape == (1, 50) and labels.shape == (1, 50)
    got = detector(str(square))[0]
    n = int(num[0])
    assert n == len(got) and n > 5
    assert (labels[0, n:] == -1).all() and (scores[0, n:] == 0).all()
    assert_same_detections(boxes[0, :n], scores[0, :n], labels[0, :n], got)


def test_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", "--model", "d0", "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--weights" in err and "\n" not in err
    assert main(["export", "--model", "d0", "--random-weights", "--image-size", "128", "--opset", "13",
                 "--out", str(tmp_path / "x.onnx")]) == 2
    assert "opset" in capsys.readouterr().err


def test_torchscript_round_trip(tmp_path, tiny_checkpoint):
    out = tmp_path / "tiny.pt"
    assert main(["export", "--model", "d0", "--weights", str(tiny_checkpoint), "--format", "torchscript",
                 "--out", str(out)]) == 0
    module, meta = load_torchscript(out)
    model = create_model("d0", weights=tiny_checkpoint)
    assert json.loads(meta["class_names"]) == list(model.labels.names)
    for batch in (1, 2):
        x = torch.randn(batch, 3, 128, 128)
        with torch.no_grad():
            cls, box = module(x)
        ref_cls, ref_box = _torch_raw(model, x)
        np.testing.assert_allclose(cls.numpy(), ref_cls, atol=1e-4, rtol=0)
        np.testing.assert_allclose(box.numpy(), ref_box, atol=1e-4, rtol=0)


@pytest.mark.parametrize("soft_nms", [False, True])
def test_onnxruntime_backend_equals_torch(tmp_path, monkeypatch, tiny_checkpoint, photo_files, soft_nms):
    from efficientdet.inference import create_detector

    monkeypatch.setenv("EFFICIENTDET_CACHE", str(tmp_path / "cache"))
    kwargs = dict(weights=tiny_checkpoint, score_threshold=0.05, soft_nms=soft_nms)
    onnx_det = Detector("d0", backend="onnxruntime", **kwargs)  # the same as create_detector(...)
    assert type(onnx_det.runner).__name__ == "OnnxRunner"
    assert onnx_det.runner.path.parent == tmp_path / "cache" / "onnx" and onnx_det.runner.path.is_file()
    assert (onnx_det.runner.outputs == "nms") is (not soft_nms)  # hard NMS runs inside the exported graph
    torch_det = create_detector("d0", backend="torch", **kwargs)
    paths = [str(p) for p in photo_files]
    for a, b in zip(onnx_det(paths, batch_size=2), torch_det(paths)):
        assert len(a) > 0
        assert_same_detections(a.boxes, a.scores, a.labels, b)
    again = create_detector("d0", backend="onnxruntime", **kwargs)  # cached: same file
    assert again.runner.path == onnx_det.runner.path


def test_onnxruntime_fixed_batch_splits_and_pads(tmp_path, monkeypatch, tiny_checkpoint, photo_files):
    """A graph exported for batch 2 serves 3 images: one full chunk, one zero-padded chunk."""
    from efficientdet.inference import create_detector

    monkeypatch.setenv("EFFICIENTDET_CACHE", str(tmp_path / "cache"))
    kwargs = dict(weights=tiny_checkpoint, score_threshold=0.05)
    onnx_det = create_detector("d0", backend="onnxruntime", batch=2, **kwargs)
    assert onnx_det.runner.session.get_inputs()[0].shape[0] == 2
    torch_det = create_detector("d0", backend="torch", **kwargs)
    paths = [str(p) for p in photo_files]
    for a, b in zip(onnx_det(paths, batch_size=3), torch_det(paths)):
        assert len(a) > 0
        assert_same_detections(a.boxes, a.scores, a.labels, b)


@pytest.mark.parametrize("threshold", [0.0, 0.05])
def test_nms_graph_single_image_selection_equals_the_batch_top_k(make_tiny_model, threshold):
    """The NonZero candidate path (fixed batch of one) keeps exactly the pairs of the top-k path."""
    from efficientdet.export.onnx import build_graph

    model = make_tiny_model(3)
    n = model.config.num_classes
    model.labels = LabelMap(tuple(None if i % 7 == 0 else f"c{i}" for i in range(n)), tuple(range(1, n + 1)))
    graph = build_graph(model, nms=True, score_threshold=threshold, max_det=60, topk=300)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        graph.single_image = False
        want = graph(x)
        graph.single_image = True
        got = graph(x)
    n = int(want[3][0])
    assert int(got[3][0]) == n and n > 10
    assert torch.equal(got[2], want[2]) and torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
    assert not any(int(label) % 7 == 0 for label in got[2][0, :n])


def test_half_export_runs_in_onnxruntime_close_to_float32(tmp_path, tiny_checkpoint):
    out = tmp_path / "half.onnx"
    assert main(["export", "--model", "d0", "--weights", str(tiny_checkpoint), "--out", str(out), "--half"]) == 0
    proto = onnx.load(str(out))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)  # weights stored in fp16
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 128, 128)
    cls, box = session.run(None, {"images": x.numpy()})
    ref_cls, ref_box = _torch_raw(create_model("d0", weights=tiny_checkpoint), x)
    assert cls.dtype == np.float32 and cls.shape == ref_cls.shape
    np.testing.assert_allclose(cls, ref_cls, atol=0.05 * float(np.abs(ref_cls).max()), rtol=0)
    np.testing.assert_allclose(box, ref_box, atol=0.05 * float(np.abs(ref_box).max()), rtol=0)


def test_nms_graph_drops_boxes_clipped_to_nothing(make_tiny_model):
    """An image 4 px high on the canvas: boxes lying below it clip to zero height; the graph drops them
    (as the Detector does) instead of returning copies that NMS cannot suppress."""
    from efficientdet.export.onnx import build_graph

    graph = build_graph(make_tiny_model(3), nms=True, score_threshold=0.05, max_det=60, topk=300)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        full = graph(x)
        strip = graph(x, torch.tensor([[4.0, 128.0]]))
    n_full, n = int(full[3][0]), int(strip[3][0])
    assert n_full > 10 and int((full[0][0, :n_full, 1] >= 4).sum()) > 0  # some boxes lie wholly below the strip
    boxes = strip[0][0, :n]
    assert n > 0 and bool(((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all())
    assert float(boxes[:, 3].max()) <= 4.0
