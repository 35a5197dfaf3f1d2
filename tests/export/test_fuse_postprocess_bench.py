"""BatchNorm folding, the post-processing prefilter and the benchmark command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from efficientdet import Detector
from efficientdet.anchors import generate_anchors
from efficientdet.cli import main
from efficientdet.inference.fuse import count_batchnorms, fuse_model
from efficientdet.inference.postprocess import PostprocessConfig, Postprocessor, select_topk


def test_fused_model_equals_unfused(make_tiny_model):
    model = make_tiny_model(1)
    fused = fuse_model(model)
    assert count_batchnorms(fused) == 0 and count_batchnorms(model) > 0
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        ref, got = model(x), fused(x)
        cl = fused.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    for a, b, c in zip(ref[0] + ref[1], got[0] + got[1], cl[0] + cl[1]):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=0)
        torch.testing.assert_close(c, a, atol=1e-4, rtol=0)


@pytest.mark.parametrize("fusion", ["fast", "softmax", "sum"])
def test_frozen_fusion_equals_the_trained_fusion(fusion):
    from efficientdet import create_model
    from efficientdet.inference.fuse import FrozenFusion
    from efficientdet.inference.mkldnn import fuse_conv_activations

    torch.manual_seed(0)
    model = create_model("d0", image_size=128, fpn_channels=16, fpn_layers=2, head_layers=2, fusion=fusion).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "fusion.weight" in name:
                p.uniform_(-0.5, 2.0)  # some negative (clipped by ReLU in "fast"), all distinct
    fused = fuse_model(model)
    assert sum(isinstance(m, FrozenFusion) for m in fused.modules()) == 2 * 8
    assert fuse_conv_activations(fused.class_net) == 2 * 5  # the head's per-level pointwise convs + SiLU
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ref, got = model(x), fused(x)
    for a, b in zip(ref[0] + ref[1], got[0] + got[1]):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=0)


def test_optimized_detector_equals_plain(make_tiny_model, photo_files):
    model = make_tiny_model(2)
    plain = Detector(model, score_threshold=0.05)
    fast = Detector(model, score_threshold=0.05, optimize=True)
    assert fast.runner.network is not fast.model and plain.runner.network is plain.model
    for a, b in zip(fast([str(p) for p in photo_files]), plain([str(p) for p in photo_files])):
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        for box, label in zip(a.boxes, a.labels):  # order of near-tied scores may differ
            assert ((b.labels == label) & (np.abs(b.boxes - box).max(axis=1) <= 1e-2)).any()


def _plain_topk(cls: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, n, c = cls.shape
    v, idx = cls.reshape(b, -1).topk(min(k, n * c), dim=1)
    return v, idx // c, idx % c


def test_select_topk_prefilter_hand_made():
    # 4 anchors x 3 classes; k = 2: the per-anchor bound must not drop the second-best pair of anchor 0
    cls = torch.tensor([[[5.0, 4.0, -9.0], [1.0, -9.0, -9.0], [3.0, -9.0, -9.0], [-9.0, -9.0, 0.5]]])
    values, anchors, classes = select_topk(cls, 2)
    assert values.tolist() == [[5.0, 4.0]] and anchors.tolist() == [[0, 0]] and classes.tolist() == [[0, 1]]
    values, anchors, classes = select_topk(cls, 3, min_logit=0.9)
    assert values.tolist() == [[5.0, 4.0, 3.0]] and anchors.tolist() == [[0, 0, 2]]
    mask = torch.tensor([False, True, True])  # class 0 unused: the next best pairs must come in
    values, anchors, classes = select_topk(cls, 2, min_logit=0.0, class_mask=mask)
    assert values.tolist() == [[4.0, 0.5]] and classes.tolist() == [[1, 2]]


def test_postprocess_prefilter_equals_full_topk(monkeypatch):
    import efficientdet.inference.postprocess as pp

    torch.manual_seed(0)
    anchors = generate_anchors(256)
    n = len(anchors)
    cls = torch.randn(2, n, 20) * 2 - 4
    box = torch.randn(2, n, 4) * 0.2
    scales = torch.tensor([1.0, 0.5], dtype=torch.float64)
    sizes = torch.tensor([[256, 256], [400, 512]])
    mask = torch.ones(20, dtype=torch.bool)
    mask[[3, 7]] = False
    for threshold in (0.0, 0.01, 0.3, 0.9):
        post = Postprocessor(PostprocessConfig(score_threshold=threshold, topk=1000))
        for class_mask in (None, mask):
            fast = post(cls, box, anchors, scales, sizes, class_mask)
            with monkeypatch.context() as m:
                m.setattr(pp, "select_topk", lambda c, k, lo=None, cm=None: _plain_topk(
                    c if cm is None else c.masked_fill(~cm, float("-inf")), k))
                ref = post(cls, box, anchors, scales, sizes, class_mask)
            for a, b in zip(fast, ref):
                assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["scores"], b["scores"])
                assert torch.equal(a["boxes"], b["boxes"])


def test_benchmark_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["benchmark", "--models", "d0", "--image-size", "128", "--runs", "2", "--warmup", "1",
               "--json", str(out), "--budget-ms", "100000"])
    assert rc == 0
    report = json.loads(out.read_text())
    row = report["results"][0]
    for key in ("model", "params", "flops", "latency_ms", "preprocess_ms", "network_ms", "postprocess_ms",
                "throughput_ips", "batch_size", "runs"):
        assert key in row
    assert row["params"] == 3_880_067 and row["flops"] > 0 and row["latency_ms"] > 0
    assert report["within_budget"] == "efficientdet_d0"
    assert "latency" in capsys.readouterr().out
