"""Post-processing on hand-made boxes: NMS, soft-NMS, thresholds, mapping to original pixels."""

from __future__ import annotations

import math

import torch

from efficientdet.inference.postprocess import PostprocessConfig, Postprocessor, soft_nms_gaussian

# three anchors: 0 and 1 overlap with IoU 0.6 (100x100 boxes shifted by 25 px), 2 is far away
ANCHORS = torch.tensor([[0.0, 0.0, 100.0, 100.0], [25.0, 0.0, 125.0, 100.0], [300.0, 300.0, 400.0, 400.0]])


def logits_for(scores: list[list[float]]) -> torch.Tensor:
    p = torch.tensor(scores).clamp(1e-6, 1 - 1e-6)
    return torch.log(p / (1 - p)).unsqueeze(0)  # (1, N, C)


def run(scores, soft=False, threshold=0.05, iou=0.5, scale=1.0, size=(1000, 1000), max_det=100):
    post = Postprocessor(PostprocessConfig(score_threshold=threshold, iou_threshold=iou, soft_nms=soft,
                                           max_det=max_det))
    return post(logits_for(scores), torch.zeros(1, 3, 4), ANCHORS, torch.tensor([scale]), torch.tensor([size]))[0]


def test_iou_of_fixture():
    from torchvision.ops import box_iou

    assert math.isclose(box_iou(ANCHORS[:1], ANCHORS[1:2]).item(), 75 * 100 / (2 * 10000 - 7500), rel_tol=1e-6)


def test_hard_nms_same_class_suppresses():
    out = run([[0.9, 0.0], [0.8, 0.0], [0.7, 0.0]])  # IoU(0, 1) = 0.6 > 0.5
    assert out["labels"].tolist() == [0, 0]
    torch.testing.assert_close(out["scores"], torch.tensor([0.9, 0.7]))
    torch.testing.assert_close(out["boxes"], ANCHORS[[0, 2]])


def test_hard_nms_other_class_kept_and_threshold():
    out = run([[0.9, 0.0], [0.0, 0.8], [0.01, 0.0]])
    assert out["labels"].tolist() == [0, 1]  # different classes never suppress; 0.01 < threshold
    out = run([[0.9, 0.0], [0.8, 0.0], [0.0, 0.0]], iou=0.7)  # IoU 0.6 < 0.7: both kept
    assert len(out["scores"]) == 2


def test_soft_nms_gaussian_decay_by_hand():
    out = run([[0.9, 0.0], [0.8, 0.0], [0.7, 0.0]], soft=True)
    expected_second = 0.8 * math.exp(-(0.6**2) / 0.5)  # 0.389...
    torch.testing.assert_close(out["scores"], torch.tensor([0.9, 0.7, expected_second]))
    assert out["labels"].tolist() == [0, 0, 0]


def test_soft_nms_function_respects_groups_and_max_det():
    boxes = ANCHORS[[0, 1]]
    idx, s = soft_nms_gaussian(boxes, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), 0.5, 0.001, 10)
    assert idx.tolist() == [0, 1] and s.tolist() == [0.8999999761581421, 0.800000011920929]
    idx, _ = soft_nms_gaussian(boxes, torch.tensor([0.9, 0.8]), torch.tensor([0, 0]), 0.5, 0.001, 1)
    assert idx.tolist() == [0]


def test_boxes_mapped_to_original_pixels_and_clipped():
    # network input is the original image scaled by 0.5; original image is 150 x 180 (h, w)
    out = run([[0.9, 0.0], [0.0, 0.0], [0.0, 0.0]], scale=0.5, size=(150, 180))
    torch.testing.assert_close(out["boxes"][0], torch.tensor([0.0, 0.0, 180.0, 150.0]))  # 200x200 clipped


def test_max_det():
    out = run([[0.9, 0.8], [0.0, 0.0], [0.7, 0.6]], max_det=3)
    assert len(out["scores"]) == 3 and out["scores"].tolist() == sorted(out["scores"].tolist(), reverse=True)


def test_prefix_nms_equals_full_nms_on_random_boxes():
    """The short-prefix NMS shortcut gives exactly the detections of NMS over all candidates."""
    g = torch.Generator().manual_seed(0)
    n, c = 3000, 5
    xy = torch.rand(n, 2, generator=g) * 400
    anchors = torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * 60], 1)
    logits = torch.randn(2, n, c, generator=g) * 2 - 3
    deltas = torch.randn(2, n, 4, generator=g) * 0.1
    args = (logits, deltas, anchors, torch.tensor([1.0, 0.5]), torch.tensor([[500, 500], [900, 900]]))
    for max_det in (5, 100, 1000):
        fast = Postprocessor(PostprocessConfig(score_threshold=0.01, max_det=max_det, topk=2000))
        full = Postprocessor(PostprocessConfig(score_threshold=0.01, max_det=max_det, topk=2000))
        full._hard_nms = full._nms  # no prefix shortcut
        for a, b in zip(fast(*args), full(*args)):
            assert len(a["scores"]) == len(b["scores"]) <= max_det
            torch.testing.assert_close(a["boxes"], b["boxes"])
            torch.testing.assert_close(a["scores"], b["scores"])
            assert torch.equal(a["labels"], b["labels"])


def test_boxes_clipped_to_nothing_are_dropped():
    """Anchor 2 (300..400) lies outside a 250 x 200 image: clipped to the zero-width (200, 250, 200, 250) it
    holds no object, and its copies could not be suppressed by NMS (IoU 0). It goes at every threshold."""
    for soft in (False, True):
        for threshold in (0.05, 0.0):
            out = run([[0.9, 0.0], [0.0, 0.0], [0.95, 0.95]], soft=soft, threshold=threshold, size=(250, 200))
            assert math.isclose(out["scores"][0].item(), 0.9, rel_tol=1e-6) and out["labels"][0].item() == 0
            assert ((out["boxes"][:, 2] > out["boxes"][:, 0]) & (out["boxes"][:, 3] > out["boxes"][:, 1])).all()
            assert 0.95 not in [round(v, 2) for v in out["scores"].tolist()]  # both classes of anchor 2 gone
            assert (out["scores"] >= 0).all()
    # inside a larger image the same anchor is kept with both classes
    out = run([[0.9, 0.0], [0.0, 0.0], [0.95, 0.95]], size=(1000, 1000))
    assert [round(v, 2) for v in out["scores"].tolist()][:2] == [0.95, 0.95]


def test_prefix_shortcut_is_exact_with_emptied_boxes():
    """Many boxes outside the image between the prefix and the rest: NMS still finds the later valid ones."""
    g = torch.Generator().manual_seed(1)
    n = 2000
    xy = torch.rand(n, 2, generator=g) * 400
    anchors = torch.cat([xy, xy + 20], 1)
    anchors[:1500] += 1000  # the best-scoring 1500 lie outside the 500 x 500 image
    logits = torch.linspace(5, -5, n).view(1, n, 1)  # sorted: the outside boxes come first
    args = (logits, torch.zeros(1, n, 4), anchors, torch.tensor([1.0]), torch.tensor([[500, 500]]))
    fast = Postprocessor(PostprocessConfig(score_threshold=0.01, max_det=10, topk=2000))
    full = Postprocessor(PostprocessConfig(score_threshold=0.01, max_det=10, topk=2000))
    full._hard_nms = full._nms
    a, b = fast(*args)[0], full(*args)[0]
    assert len(a["scores"]) == len(b["scores"]) == 10 and torch.equal(a["boxes"], b["boxes"])
    assert (a["boxes"] < 500).all()
