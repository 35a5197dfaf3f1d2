"""P2 (min_level=2) feature networks for detection and segmentation, both segmentation heads,
the segmentation rows, and ONNX exports of tiny P2 models run in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torchvision.ops import box_iou

from efficientdet import ConfigError, create_model, get_config
from efficientdet.anchors import generate_anchors
from efficientdet.complexity import measure
from efficientdet.loss import DetectionLoss
from efficientdet.matcher import match_anchors
from efficientdet.model.efficientdet import EfficientDet, flatten_outputs
from efficientdet.model.feature_network import Node, bifpn_nodes
from efficientdet.variants import VARIANTS, list_models

TINY = dict(image_size=128, fpn_channels=16, fpn_layers=1, head_layers=1)


def test_bifpn_table_p2_to_p7_by_hand():
    # inputs P2..P7 are ids 0..5; top-down P6..P2 are ids 6..10, bottom-up P3..P7 ids 11..15
    assert bifpn_nodes(2, 7) == [
        Node(6, (4, 5)), Node(5, (3, 6)), Node(4, (2, 7)), Node(3, (1, 8)), Node(2, (0, 9)),
        Node(3, (1, 9, 10)), Node(4, (2, 8, 11)), Node(5, (3, 7, 12)), Node(6, (4, 6, 13)), Node(7, (5, 14)),
    ]  # fmt: skip


def test_p2_detection_forward_anchors_and_loss():
    torch.manual_seed(0)
    model = create_model("d0", num_classes=3, min_level=2, **TINY)
    assert model.backbone.feature_info.reduction() == [4, 8, 16, 32]
    cls, box = model(torch.randn(2, 3, 128, 128))
    assert [tuple(c.shape[-2:]) for c in cls] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    anchors = generate_anchors(128, 2, 7)
    cls_flat, box_flat = flatten_outputs(cls, box, 3)
    assert cls_flat.shape == (2, len(anchors), 3) and len(anchors) == 9 * (32 * 32 + 16 * 16 + 64 + 16 + 4 + 1)
    # the first anchor: P2 stride 4, centre (2, 2), side anchor_scale * stride = 16 px
    assert anchors[0].tolist() == [-6.0, -6.0, 10.0, 10.0]
    # a 16 x 16 box: P2 anchors match it (IoU 1), the P3..P7 anchors (>= 32 px) never reach IoU 0.5
    gt = [torch.tensor([[38.0, 38.0, 54.0, 54.0]])] * 2  # centre 46 = 2 + 4 * 11
    labels = [torch.tensor([1])] * 2
    match = match_anchors(anchors, gt, labels)
    assert int(match.num_positives.sum()) > 0
    assert int(match.num_positives.sum()) == int((match.cls_targets[:, : 9 * 32 * 32] >= 0).sum())
    assert float(box_iou(gt[0], generate_anchors(128, 3, 7)).max()) < 0.26  # about 16² / 32²
    assert float(box_iou(gt[0], anchors).max()) == pytest.approx(1.0)
    loss = DetectionLoss(3)(cls_flat, box_flat, match.cls_targets, match.box_targets)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and model.fpn.layers[0].nodes[4].conv.pw.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("head", ["p2", "decoder"])
def test_seg_heads_shapes_and_gradients(head):
    torch.manual_seed(0)
    cfg = get_config("d0", detect=False, min_level=2, seg_head=head, seg_classes=5, seg_channels=24, seg_layers=2,
                     **TINY)
    model = EfficientDet(cfg)
    logits = model(torch.randn(2, 3, 128, 128))
    assert logits.shape == (2, 5, 128, 128)
    assert model.class_net is None and model.box_net is None
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 5, (2, 128, 128))).backward()
    assert model.backbone.conv_stem.weight.grad.abs().sum() > 0


def test_decoder_over_p3_p7_and_joint_model():
    torch.manual_seed(0)
    cfg = get_config("d0", num_classes=3, seg_head="decoder", seg_classes=4, **TINY)  # official: P3..P7
    model = EfficientDet(cfg).eval()
    assert len(model.seg_net.ups) == 4  # P7 -> P6 -> P5 -> P4 -> P3, then classes at stride 4
    cls, box, seg = model(torch.randn(1, 3, 128, 128))
    assert len(cls) == 5 and seg.shape == (1, 4, 128, 128)
    assert cfg.tasks == ("detect", "segment")


def test_seg_config_errors():
    with pytest.raises(ConfigError, match="min_level=2"):
        get_config("d0", seg_head="p2")
    with pytest.raises(ConfigError, match="seg_head"):
        get_config("d0", detect=False)
    with pytest.raises(ConfigError, match="one of"):
        get_config("d0", seg_head="unet")
    with pytest.raises(ConfigError, match="at most 255"):
        get_config("d0_seg", seg_classes=256)
    with pytest.raises(ConfigError, match="drop_last_stage='no' must be true or false"):
        get_config("d0_seg", drop_last_stage="no")


def test_seg_rows_registered_and_paper_row():
    names = list_models()
    assert [n for n in names if n.endswith("_seg")] == [f"efficientdet_d{i}_seg" for i in range(8)]
    d4 = VARIANTS["efficientdet_d4_seg"]
    assert (d4.backbone, d4.fpn_channels, d4.fpn_layers, d4.min_level, d4.max_level) == (
        "tf_efficientnet_b4", 128, 3, 2, 7)
    assert (d4.seg_head, d4.seg_channels, d4.seg_layers, d4.detect, d4.image_size) == ("p2", 256, 3, False, 640)
    cost = measure(d4)
    assert abs(cost["params"] / 17e6 - 1) < 0.10 and abs(cost["flops"] / 18e9 - 1) < 0.10
    d0 = get_config("d0_seg")  # 64 * 128 / 224 = 36.6 -> 40; the other rows: the official decoder over P3-P7
    assert (d0.fpn_channels, d0.seg_head, d0.min_level, d0.detect, d0.drop_last_stage) == (
        40, "decoder", 3, False, True)
    assert all(VARIANTS[f"efficientdet_d{i}_seg"].seg_head == "decoder" for i in (0, 1, 2, 3, 5, 6, 7))


def _ort(path, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def test_onnx_export_p2_detection_and_segmentation(tmp_path):
    from efficientdet.export.onnx import export_onnx

    torch.manual_seed(0)
    det = create_model("d0", num_classes=3, min_level=2, **TINY).eval()
    x = torch.randn(1, 3, 128, 128)
    path = export_onnx(det, tmp_path / "p2.onnx")  # BN-folded, as the CLI exports
    with torch.no_grad():
        want = flatten_outputs(*det(x), 3)
    got = _ort(path, x.numpy())
    assert got[0].shape == (1, len(generate_anchors(128, 2, 7)), 3)
    np.testing.assert_allclose(got[0], want[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(got[1], want[1].numpy(), atol=1e-4)

    seg = create_model("d0", detect=False, min_level=2, seg_head="p2", seg_classes=4, seg_channels=16, **TINY).eval()
    with torch.no_grad():
        want_seg = seg(x)
        torch.onnx.export(seg, (x,), str(tmp_path / "seg.onnx"), input_names=["images"], output_names=["logits"],
                          opset_version=17, dynamo=False)
    (got_seg,) = _ort(tmp_path / "seg.onnx", x.numpy())
    assert got_seg.shape == (1, 4, 128, 128)
    np.testing.assert_allclose(got_seg, want_seg.numpy(), atol=1e-4)
