"""A full-size D0 (512 px, 64-channel BiFPN, 90 classes) exported with ``--nms``: onnxruntime gives the
Detector's detections, and ``predict --weights x.onnx`` writes the records of the PyTorch ``predict``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from efficientdet import Detector, create_model
from efficientdet.cli import main
from efficientdet.deploy import OnnxModel
from efficientdet.preprocess import preprocess_batch
from efficientdet.weights import save_checkpoint

from .test_export import assert_same_detections, assert_same_records


def informative_d0(image: Image.Image, seed: int = 0) -> nn.Module:
    """Full-size D0 with random weights whose detections depend on the image and are distinct.

    With the training initialisation (heads at std 0.01) the class scores do not depend on the image at all,
    so every image gives the same (tied) detections. Here every conv gets std ``1.25 / sqrt(fan_in)`` (the
    signal neither dies out nor explodes over the depth), BN gets random statistics, and the predictors are
    rescaled so that on ``image`` the class logits have mean -4 and std 1 (plus a random offset per class)
    and the box deltas std 0.5.
    """
    torch.manual_seed(seed)
    model = create_model("d0").eval()
    cfg = model.config
    assert (cfg.image_size, cfg.fpn_channels, cfg.num_classes) == (512, 64, 90)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0, 1.25 / math.sqrt(m.weight[0].numel()))
                if m.bias is not None:
                    m.bias.normal_(0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        x, _ = preprocess_batch([image], cfg.image_size, cfg.mean, cfg.std, channels_last=False)
        cls, box = model(x)
        for head, outputs, mean, std in ((model.class_net, cls, -4.0, 1.0), (model.box_net, box, 0.0, 0.5)):
            values = torch.cat([o.flatten() for o in outputs])
            scale = std / float(values.std())
            head.predict.pw.weight.mul_(scale)
            head.predict.pw.bias.mul_(scale).add_(mean - float(values.mean()) * scale)
        bias = model.class_net.predict.pw.bias.view(-1, cfg.num_classes)  # (anchors, classes)
        bias.add_(torch.randn(cfg.num_classes) * 0.5)
    return model


@pytest.fixture(scope="module")
def full_d0(tmp_path_factory, session_photo_files):
    """(checkpoint, the same model exported with --nms through the command line)."""
    folder = tmp_path_factory.mktemp("full_d0")
    model = informative_d0(Image.open(session_photo_files[0]).convert("RGB"))
    checkpoint = save_checkpoint(folder / "d0.pt", model)
    onnx_file = folder / "d0_nms.onnx"
    assert main(["export", "--model", "d0", "--weights", str(checkpoint), "--out", str(onnx_file), "--nms",
                 "--score-threshold", "0.05", "--max-det", "100"]) == 0
    return checkpoint, onnx_file


def test_nms_file_equals_the_detector_on_a_full_size_d0(full_d0, session_photo_files):
    checkpoint, onnx_file = full_d0
    model = OnnxModel(onnx_file)
    assert model.nms and model.image_size == 512 and model.max_det == 100
    assert model.session.get_inputs()[0].shape[1:] == [3, 512, 512]
    detector = Detector("d0", weights=checkpoint, score_threshold=0.05, max_det=100)  # the default, fused path
    assert detector.config.fpn_channels == 64 and detector.config.num_classes == 90
    paths = [str(p) for p in session_photo_files]  # 320x200 and 150x260 letterboxed, 128x128 upscaled
    got, want = model(paths), detector(paths)
    for g, w in zip(got, want):
        assert len(g) == len(w) == 100 and len(set(w.labels.tolist())) > 1
        assert_same_detections(g.boxes, g.scores, g.labels, w)
    assert not np.allclose(got[0].scores, got[1].scores)  # the detections depend on the image


def test_predict_with_the_onnx_file_writes_the_torch_records(tmp_path, full_d0, session_photo_files):
    checkpoint, onnx_file = full_d0
    paths = [str(p) for p in session_photo_files]
    records = {}
    for kind, weights in (("onnx", onnx_file), ("torch", checkpoint)):
        out = tmp_path / f"{kind}.json"
        # float32 on both sides (auto may pick OpenVINO bf16 for a 512 px file where that measured faster)
        assert main(["predict", *paths, "--weights", str(weights), "--json", str(out), "--score-threshold", "0.2",
                     "--max-det", "50", "--precision", "fp32"]) == 0
        records[kind] = json.loads(out.read_text())
    assert len(records["torch"]) > 30
    assert_same_records(records["onnx"], records["torch"])
