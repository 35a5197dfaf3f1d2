"""Detection loss: hand-computed values, stability, autocast, and effdet 0.4.1 as an oracle."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from efficientdet.loss import DetectionLoss, focal_loss, huber_loss
from efficientdet.matcher import match_anchors

ALPHA, GAMMA, DELTA = 0.25, 1.5, 0.1


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _focal(x: float, target: int) -> float:
    p = _sigmoid(x)
    if target == 1:
        return -ALPHA * (1 - p) ** GAMMA * math.log(p)
    return -(1 - ALPHA) * p**GAMMA * math.log(1 - p)


def _huber(err: float) -> float:
    a = abs(err)
    return 0.5 * a * a if a <= DELTA else DELTA * (a - 0.5 * DELTA)


def test_hand_computed_three_anchors():
    # anchor 0: positive, class 1; anchor 1: negative; anchor 2: ignored.
    logits = torch.tensor([[[0.5, 2.0], [-1.0, 0.3], [3.0, -3.0]]])
    cls_targets = torch.tensor([[1, -1, -2]])
    deltas = torch.tensor([[[0.05, -0.3, 0.0, 0.22], [1.0, 1.0, 1.0, 1.0], [5.0, 5.0, 5.0, 5.0]]])
    targets = torch.tensor([[[0.0, 0.0, 0.0, 0.1], [0.0] * 4, [0.0] * 4]])
    out = DetectionLoss(num_classes=2)(logits, deltas, cls_targets, targets)

    normaliser = 1 + 1  # one positive + 1
    cls = (_focal(0.5, 0) + _focal(2.0, 1) + _focal(-1.0, 0) + _focal(0.3, 0)) / normaliser
    box = (_huber(0.05) + _huber(-0.3) + _huber(0.0) + _huber(0.12)) / (normaliser * 4)
    assert _huber(0.05) == pytest.approx(0.00125) and _huber(-0.3) == pytest.approx(0.025)
    assert out["cls_loss"].item() == pytest.approx(cls, rel=1e-6)
    assert out["box_loss"].item() == pytest.approx(box, rel=1e-6)
    assert out["loss"].item() == pytest.approx(cls + 50.0 * box, rel=1e-6)
    assert out["num_positives"].item() == 1.0
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in out.values())


def test_no_positives_normalises_by_one_and_box_loss_zero():
    logits = torch.tensor([[[0.2, -0.7]]])
    out = DetectionLoss(2)(logits, torch.ones(1, 1, 4), torch.tensor([[-1]]), torch.zeros(1, 1, 4))
    assert out["cls_loss"].item() == pytest.approx(_focal(0.2, 0) + _focal(-0.7, 0), rel=1e-6)
    assert out["box_loss"].item() == 0.0 and out["num_positives"].item() == 0.0


def test_elementwise_helpers():
    x = torch.tensor([-2.0, 0.0, 1.5])
    assert focal_loss(x, torch.tensor([1.0, 0.0, 1.0])).tolist() == pytest.approx(
        [_focal(-2.0, 1), _focal(0.0, 0), _focal(1.5, 1)], rel=1e-6
    )
    err = torch.tensor([0.0, 0.05, -0.1, 0.35])
    assert huber_loss(err, torch.zeros(4)).tolist() == pytest.approx(
        [_huber(e) for e in err.tolist()], rel=1e-6
    )


def test_extreme_logits_are_finite():
    logits = torch.tensor([[[-200.0, 200.0], [200.0, -200.0]]], requires_grad=True)
    cls_targets = torch.tensor([[0, -1]])  # anchor 0: true class 0 at logit -200; anchor 1 negative
    out = DetectionLoss(2)(logits, torch.zeros(1, 2, 4), cls_targets, torch.zeros(1, 2, 4))
    out["loss"].backward()
    assert torch.isfinite(logits.grad).all()
    # Terms: pos@-200 -> alpha*200, neg@200 (twice) -> (1-alpha)*200 each, neg@-200 -> ~0.
    assert out["cls_loss"].item() == pytest.approx((ALPHA * 200 + 2 * (1 - ALPHA) * 200) / 2, rel=1e-5)


def test_bf16_autocast_computes_in_float32():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 50, 3, generator=g).bfloat16()
    deltas = torch.randn(2, 50, 4, generator=g).bfloat16()
    cls_targets = torch.randint(-2, 3, (2, 50), generator=g)
    box_targets = torch.randn(2, 50, 4, generator=g) * 0.1
    loss = DetectionLoss(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(logits, deltas, cls_targets, box_targets)
    ref = loss(logits.float(), deltas.float(), cls_targets, box_targets)
    for key in ref:
        assert out[key].dtype == torch.float32
        assert out[key].item() == pytest.approx(ref[key].item(), rel=1e-6)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="classes"):
        DetectionLoss(3)(
            torch.zeros(1, 2, 2), torch.zeros(1, 2, 4), torch.zeros(1, 2).long(), torch.zeros(1, 2, 4)
        )


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_matches_effdet_loss(label_smoothing):
    from effdet.anchors import AnchorLabeler, Anchors
    from effdet.loss import DetectionLoss as RefLoss

    size, num_classes, batch = 128, 4, 2
    ref_anchors = Anchors(3, 7, 3, [(1.0, 1.0), (1.4, 0.7), (0.7, 1.4)], 4.0, (size, size))
    anchors = ref_anchors.boxes[:, [1, 0, 3, 2]].float()
    n = anchors.shape[0]
    g = torch.Generator().manual_seed(1)
    boxes, labels = [], []
    for k in (3, 5):
        wh = (0.1 + 0.5 * torch.rand(k, 2, generator=g)) * size
        xy = torch.rand(k, 2, generator=g) * (size - wh)
        boxes.append(torch.cat([xy, xy + wh], 1))
        labels.append(torch.randint(0, num_classes, (k,), generator=g))
    logits = torch.randn(batch, n, num_classes, generator=g) * 2 - 2
    deltas = torch.randn(batch, n, 4, generator=g) * 0.3

    targets = match_anchors(anchors, boxes, labels)
    ours = DetectionLoss(num_classes, label_smoothing=label_smoothing)(
        logits, deltas, targets.cls_targets, targets.box_targets
    )

    labeler = AnchorLabeler(ref_anchors, num_classes)
    cls_t, box_t, num_pos = labeler.batch_label_anchors(
        [b[:, [1, 0, 3, 2]] for b in boxes], [lab.float() + 1 for lab in labels]
    )
    cls_out, box_out, start = [], [], 0
    for level in range(3, 8):
        h, w = ref_anchors.feat_sizes[level]
        count = h * w * 9
        sl = slice(start, start + count)
        cls_out.append(logits[:, sl].reshape(batch, h, w, -1).permute(0, 3, 1, 2))
        box_out.append(deltas[:, sl][..., [1, 0, 3, 2]].reshape(batch, h, w, -1).permute(0, 3, 1, 2))
        start += count
    config = SimpleNamespace(
        num_classes=num_classes,
        alpha=ALPHA,
        gamma=GAMMA,
        delta=DELTA,
        box_loss_weight=50.0,
        label_smoothing=label_smoothing,
        legacy_focal=False,
        jit_loss=False,
    )
    total, cls_loss, box_loss = RefLoss(config)(cls_out, box_out, cls_t, box_t, num_pos)
    assert ours["num_positives"].item() == num_pos.sum().item() > 0
    assert ours["cls_loss"].item() == pytest.approx(cls_loss.item(), rel=1e-5)
    assert ours["box_loss"].item() == pytest.approx(box_loss.item(), rel=1e-5)
    assert ours["loss"].item() == pytest.approx(total.item(), rel=1e-5)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_matches_dense_one_hot_formulation(label_smoothing):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 40, 5, generator=g) * 4
    cls_targets = torch.randint(-2, 5, (3, 40), generator=g)
    box_deltas, box_targets = torch.randn(3, 40, 4, generator=g), torch.randn(3, 40, 4, generator=g)
    out = DetectionLoss(5, label_smoothing=label_smoothing)(logits, box_deltas, cls_targets, box_targets)
    one_hot = torch.nn.functional.one_hot(cls_targets.clamp(min=0), 5).float() * (cls_targets >= 0)[..., None]
    dense = focal_loss(logits, one_hot, label_smoothing=label_smoothing) * (cls_targets != -2)[..., None]
    normaliser = (cls_targets >= 0).sum() + 1.0
    assert out["cls_loss"].item() == pytest.approx((dense.sum() / normaliser).item(), rel=1e-5)
    box = (huber_loss(box_deltas, box_targets) * (cls_targets >= 0)[..., None]).sum() / (4 * normaliser)
    assert out["box_loss"].item() == pytest.approx(box.item(), rel=1e-5)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_bf16_autocast_matches_float32(device):
    g = torch.Generator().manual_seed(4)
    logits, deltas = torch.randn(2, 300, 7, generator=g), torch.randn(2, 300, 4, generator=g)
    cls_targets, box_targets = (
        torch.randint(-2, 7, (2, 300), generator=g),
        torch.randn(2, 300, 4, generator=g),
    )
    loss = DetectionLoss(7)
    ref = loss(logits.bfloat16().float(), deltas.bfloat16().float(), cls_targets, box_targets)
    with torch.autocast(device, dtype=torch.bfloat16):
        out = loss(logits.to(device).bfloat16(), deltas.to(device).bfloat16(), cls_targets.to(device),
                   box_targets.to(device))
    for key in ref:
        assert out[key].dtype == torch.float32
        assert out[key].item() == pytest.approx(ref[key].item(), rel=1e-5)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_hand_written_focal_backward_matches_autograd(label_smoothing):
    """The memory-saving backward of the negative focal term equals autograd of the plain formula."""
    g = torch.Generator().manual_seed(7)
    logits = (torch.randn(2, 30, 4, generator=g, dtype=torch.float64) * 4).requires_grad_(True)
    cls_targets = torch.randint(-2, 4, (2, 30), generator=g)
    box = torch.zeros(2, 30, 4, dtype=torch.float64)
    loss = DetectionLoss(4, label_smoothing=label_smoothing)
    (grad,) = torch.autograd.grad(loss(logits, box, cls_targets, box)["cls_loss"], logits)
    ref_logits = logits.detach().clone().requires_grad_(True)
    one_hot = torch.nn.functional.one_hot(cls_targets.clamp(min=0), 4).double() * (cls_targets >= 0)[..., None]
    dense = focal_loss(ref_logits, one_hot, label_smoothing=label_smoothing).double() * (cls_targets != -2)[..., None]
    ref = dense.sum() / ((cls_targets >= 0).sum() + 1.0)
    (ref_grad,) = torch.autograd.grad(ref, ref_logits)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-7)


def test_dice_loss_by_hand():
    """Two pixels, two classes, one ignored pixel; eps = 1.

    logits (0, 0) and (ln 3, 0): softmax p = (0.5, 0.5) and (0.75, 0.25); targets 0 and 1 (the third pixel,
    255, is ignored). Class 0: inter 0.5, sum p 1.25, sum t 1 -> 1 - 2/3.25; class 1: inter 0.25,
    sum p 0.75, sum t 1 -> 1 - 1.5/2.75. Mean of the two.
    """
    import math

    from efficientdet.loss import dice_loss

    logits = torch.tensor([[[[0.0, math.log(3.0), 5.0]], [[0.0, 0.0, -5.0]]]], requires_grad=True)  # (1, 2, 1, 3)
    masks = torch.tensor([[[0, 1, 255]]])
    want = ((1 - 2.0 / 3.25) + (1 - 1.5 / 2.75)) / 2
    got = dice_loss(logits, masks)
    assert abs(float(got) - want) < 1e-6
    got.backward()
    assert float(logits.grad[0, :, 0, 2].abs().max()) == 0.0  # the ignored pixel gets no gradient
    # a class absent from the targets does not count; everything ignored gives 0 with a gradient path
    # (class 0 only: inter 0.5 + 0.75, sum p 1.25, sum t 2)
    assert abs(float(dice_loss(logits, torch.tensor([[[0, 0, 255]]]))) - (1 - (2 * 1.25 + 1) / (1.25 + 2 + 1))) < 1e-6
    none = dice_loss(logits, torch.full((1, 1, 3), 255))
    assert float(none) == 0.0 and none.requires_grad
    # over the batch: the sums run over every image's labelled pixels (image 2 has its classes swapped and
    # both targets 0, image 3 is all ignored). Class 0: inter 0.5 + 0.5 + 0.25, sum p 1.25 + 0.75, sum t 3;
    # class 1: inter 0.25, sum p 0.75 + 1.25, sum t 1
    both = torch.cat([logits.detach(), logits.detach().flip(1), logits.detach()])
    masks3 = torch.tensor([[[0, 1, 255]], [[0, 0, 255]], [[255, 255, 255]]])
    want3 = ((1 - (2 * 1.25 + 1) / (2.0 + 3 + 1)) + (1 - (2 * 0.25 + 1) / (2.0 + 1 + 1))) / 2
    assert abs(float(dice_loss(both, masks3)) - want3) < 1e-6
    # the statistics are sums: split the batch, add them up, same loss (how processes combine theirs)
    from efficientdet.loss import dice_from_statistics, dice_statistics

    parts = [dice_statistics(both[i : i + 1], masks3[i : i + 1]) for i in range(3)]
    summed = [sum(p[j] for p in parts) for j in range(3)]
    assert abs(float(dice_from_statistics(*summed)) - want3) < 1e-6
