"""Anchor fit report and proposals, on boxes whose best IoU can be worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from efficientdet.anchor_fit import (
    anchor_report,
    fit_aspect_ratios,
    input_boxes,
    propose_anchors,
    propose_image_size,
)
from efficientdet.data.records import DetectionData, Sample

# 64 px input, P3..P5 (strides 8/16/32), one square anchor per location of side 4 * stride:
# P3: centres 4 + 8k, side 32; P4: centres 8 + 16k, side 64; P5: centres 16 + 32k, side 128.
TINY = {"anchor_scale": 4.0, "aspect_ratios": ((1.0, 1.0),), "min_level": 3, "max_level": 5, "num_scales": 1}


def test_report_per_level_recall_and_too_small():
    boxes = np.array([
        [4, 4, 36, 36],  # exactly the P3 anchor centred at (20, 20): IoU 1
        [0, 0, 8, 8],  # 64 px²: at best inside a 32x32 anchor, IoU 64 / 1024 = 0.0625 -> too small
        [0, 0, 64, 64],  # P4 anchor at (24, 24) is [-8, -8, 56, 56]: 56² / (2 * 64² - 56²) = 0.620
        [10, 10, 50, 30],  # 40x20; P3 anchor at (28, 20) = [12, 4, 44, 36]: 640 / 1184 = 0.5405
    ], np.float32)
    r = anchor_report(boxes, 64, iou_threshold=0.5, **TINY)
    np.testing.assert_allclose(r.best_iou, [1.0, 64 / 1024, 3136 / 5056, 640 / 1184], rtol=1e-5)
    assert (r.num_boxes, r.matched, r.too_small) == (4, 3, 1)
    assert r.recall == pytest.approx(0.75)
    assert r.levels == {3: (3, 2), 4: (1, 1), 5: (0, 0)}
    assert r.smallest_anchor == 32.0
    text = r.format()
    assert "best possible recall 0.750 (3 of 4 boxes)" in text and "P4" in text
    # at IoU 0.6 the 40x20 box is lost too, and counts as too small (800 px² < 32²)
    strict = anchor_report(boxes, 64, iou_threshold=0.6, **TINY)
    assert (strict.matched, strict.too_small) == (2, 2)


def test_fit_aspect_ratios_recovers_three_shapes():
    rng = np.random.default_rng(0)
    boxes = []
    for ratio in (4.0, 1.0, 0.25):  # w / h
        for _ in range(30):
            area = rng.uniform(100, 2000)
            w = np.sqrt(area * ratio) * rng.uniform(0.97, 1.03)
            h = area / w
            boxes.append([0, 0, w, h])
    ratios = fit_aspect_ratios(np.array(boxes, np.float32))
    # centred equal-area boxes: ratio 4 -> (sqrt 4, 1 / sqrt 4) = (2, 0.5)
    np.testing.assert_allclose(ratios, [(2.0, 0.5), (1.0, 1.0), (0.5, 2.0)], atol=0.03)


def test_proposal_raises_recall_for_long_thin_objects():
    # 6:1 bars (48x8 px) at 128 px: square-ish default anchors overlap them poorly
    rng = np.random.default_rng(1)
    xs, ys = rng.uniform(0, 80, 60), rng.uniform(0, 120, 60)
    boxes = np.stack([xs, ys, xs + 48, ys + 8], axis=1).astype(np.float32)
    prop = propose_anchors(boxes, 128, min_level=3, max_level=5)
    assert prop.current.recall < 0.2
    assert prop.proposed.recall >= prop.current.recall + 0.5
    assert prop.improves
    wide = max(prop.proposed.aspect_ratios, key=lambda r: r[0] / r[1])
    assert wide[0] / wide[1] > 4  # a wide anchor fitted on the bars
    assert prop.overrides()["anchor_scale"] == prop.proposed.anchor_scale


def test_proposal_keeps_current_anchors_when_they_fit():
    boxes = np.array([[4, 4, 36, 36], [12, 12, 44, 44], [20, 4, 52, 36]], np.float32)  # P3 anchors exactly
    prop = propose_anchors(boxes, 64, **TINY)
    assert prop.current.recall == 1.0
    assert (prop.proposed.anchor_scale, prop.proposed.aspect_ratios) == (4.0, ((1.0, 1.0),))
    assert not prop.improves


def test_image_size_proposal_for_tiny_objects():
    # 12 px squares centred on P3 centres (4 + 8k) at 256 px: IoU 144 / 1024 with a 32 px anchor -> too small.
    # At 384 px they are 18 px (324 / 1024 < 0.5); at 512 px 24 px squares inside a 32 px anchor: 0.5625.
    c = 4 + 8 * np.arange(2, 28, 3, dtype=np.float32)
    cx, cy = np.meshgrid(c, c)
    boxes = np.stack([cx.ravel() - 6, cy.ravel() - 6, cx.ravel() + 6, cy.ravel() + 6], axis=1)
    size, report = propose_image_size(boxes, 256, 4.0, ((1.0, 1.0),), num_scales=1)
    assert size == 512
    assert report.too_small == 0 and report.recall == 1.0
    assert propose_image_size(boxes * 4, 256, 4.0, ((1.0, 1.0),), num_scales=1) == (256, None)


def test_input_boxes_letterbox_scale_and_crowd(tmp_path):
    s1 = Sample(1, "a.jpg", tmp_path / "a.jpg", 200, 100, np.array([[0, 0, 50, 20], [10, 10, 30, 30]]),
                np.array([0, 1]), np.array([False, True]))
    s2 = Sample(2, "b.jpg", tmp_path / "b.jpg", 100, 400, np.zeros((0, 4)), np.zeros(0), np.zeros(0, bool))
    data = DetectionData([s1, s2], ["a", "b"], [1, 2])
    np.testing.assert_allclose(input_boxes(data, 100), [[0, 0, 25, 10]])  # long side 200 -> 100: x0.5
    assert input_boxes(data, 100, include_crowd=True).shape == (2, 4)


@pytest.mark.parametrize("image_size", [128, 200])
def test_nearest_centre_shortcut_equals_brute_force(image_size):
    """The fast best-IoU (nearest grid centre per level and shape) equals the IoU against every anchor,
    computed with the matcher's own IoU, also where strides are fractional (200 px)."""
    import torch

    from efficientdet.anchor_fit import best_anchor_iou
    from efficientdet.anchors import generate_anchors
    from efficientdet.matcher import batched_iou

    rng = np.random.default_rng(3)
    xy = rng.uniform(-10, image_size, (300, 2))
    wh = np.exp(rng.uniform(np.log(2), np.log(image_size), (300, 2)))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    ratios = ((1.0, 1.0), (1.6, 0.6), (0.5, 2.0))
    fast, _ = best_anchor_iou(boxes, image_size, 2.5, ratios)
    anchors = generate_anchors(image_size, 3, 7, 2.5, 3, ratios)
    brute = batched_iou(anchors, torch.from_numpy(boxes)[None])[0].max(dim=1).values.numpy()
    np.testing.assert_allclose(fast, brute, atol=1e-5)


def test_plan_anchors_applies_proposal_and_warns(tmp_path):
    from efficientdet.anchor_fit import plan_anchors
    from efficientdet.variants import get_config

    # 12 px objects in 256 px images at a 256 px input: D0's smallest anchor is 32 px
    c = 4 + 8 * np.arange(2, 28, 3, dtype=np.float32)
    cx, cy = np.meshgrid(c, c)
    boxes = np.stack([cx.ravel() - 6, cy.ravel() - 6, cx.ravel() + 6, cy.ravel() + 6], axis=1)
    n = len(boxes)
    sample = Sample(1, "a.jpg", tmp_path / "a.jpg", 256, 256, boxes, np.zeros(n), np.zeros(n, bool))
    data = DetectionData([sample], ["dot"], [1])
    config = get_config("d0", image_size=256)
    kept = plan_anchors(data, config, mode="default")
    assert kept.overrides == {} and kept.proposal.current.recall == 0.0
    assert "--anchors auto" in kept.warning and "--image-size 512" in kept.warning
    auto = plan_anchors(data, config, mode="auto")
    assert auto.overrides["anchor_scale"] <= 2.0 and auto.proposal.proposed.recall == 1.0
    assert auto.warning is None and "anchors auto: anchor_scale" in auto.messages[1]
    applied = config.replace(**auto.overrides)  # what train does: a valid ModelConfig
    assert applied.anchor_scale == auto.overrides["anchor_scale"]


def test_p2_suggested_for_objects_too_small_for_p3(tmp_path):
    """4 px squares on the P2 grid (centres 2 + 8k) at a 256 px input: even anchor_scale 1 on P3 (8 px
    anchors, centres 4 + 8k) gives IoU < 0.5, so no P3 proposal helps; with a P2 level (4 px anchors at
    anchor_scale 1, centres 2 + 4m) every box has an exact anchor. The 12 px squares of the test above fit
    P3 once re-scaled, so they get no P2 hint."""
    from efficientdet.anchor_fit import plan_anchors, propose_anchors, propose_p2
    from efficientdet.variants import get_config

    c = 2 + 8 * np.arange(2, 30, 3, dtype=np.float32)
    cx, cy = np.meshgrid(c, c)
    boxes = np.stack([cx.ravel() - 2, cy.ravel() - 2, cx.ravel() + 2, cy.ravel() + 2], axis=1)
    prop = propose_anchors(boxes, 256)
    assert prop.proposed.recall == 0.0
    p2 = propose_p2(boxes, prop)
    assert p2 is not None and p2.recall == 1.0 and min(p2.levels) == 2 and p2.levels[2] == (len(boxes), len(boxes))
    n = len(boxes)
    data = DetectionData([Sample(1, "a.jpg", tmp_path / "a.jpg", 256, 256, boxes, np.zeros(n), np.zeros(n, bool))],
                         ["dot"], [1])
    plan = plan_anchors(data, get_config("d0", image_size=256), mode="auto")
    assert any("min_level=2" in m and "100.0%" in m for m in plan.messages)
    assert "--model-override min_level=2" in plan.warning
    # already on P2, or objects the P3 anchors fit: no hint
    assert propose_p2(boxes, propose_anchors(boxes, 256, min_level=2), min_level=2) is None
    c = 4 + 8 * np.arange(2, 28, 3, dtype=np.float32)
    cx, cy = np.meshgrid(c, c)
    fits = np.stack([cx.ravel() - 6, cy.ravel() - 6, cx.ravel() + 6, cy.ravel() + 6], axis=1)
    assert propose_p2(fits, propose_anchors(fits, 256)) is None
