"""Box coder: hand-computed deltas and the encode/decode round trip."""

from __future__ import annotations

import math

import pytest
import torch

from efficientdet import box_coder


def test_encode_by_hand():
    anchor = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    box = torch.tensor([[5.0, 5.0, 25.0, 15.0]])  # centre (15, 10), 20 x 10
    d = box_coder.encode(box, anchor)[0]
    torch.testing.assert_close(d, torch.tensor([1.0, 0.5, math.log(2.0), 0.0]))


def test_decode_by_hand():
    anchor = torch.tensor([[10.0, 20.0, 30.0, 60.0]])  # centre (20, 40), 20 x 40
    d = torch.tensor([[0.5, -0.25, math.log(0.5), math.log(1.5)]])
    # centre (20 + 10, 40 - 10) = (30, 30), size 10 x 60
    torch.testing.assert_close(box_coder.decode(d, anchor)[0], torch.tensor([25.0, 0.0, 35.0, 60.0]))


def test_round_trip_random():
    g = torch.Generator().manual_seed(0)
    anchors = torch.rand(1000, 2, generator=g) * 500
    anchors = torch.cat([anchors, anchors + 10 + torch.rand(1000, 2, generator=g) * 100], 1)
    boxes = torch.rand(1000, 2, generator=g) * 500
    boxes = torch.cat([boxes, boxes + 1 + torch.rand(1000, 2, generator=g) * 300], 1)  # within 62.5x
    torch.testing.assert_close(box_coder.decode(box_coder.encode(boxes, anchors), anchors), boxes, atol=1e-3, rtol=0)


def test_decode_clamps_huge_scales():
    anchor = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    out = box_coder.decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), anchor)
    assert torch.isfinite(out).all()
    assert (out[0, 2] - out[0, 0]).item() == pytest.approx(10 * 1000 / 16, rel=1e-5)
