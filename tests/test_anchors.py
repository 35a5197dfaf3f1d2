"""Anchors: counts and boxes computed by hand from the paper's geometry, and effdet as an oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from efficientdet.anchors import feature_sizes, generate_anchors
from efficientdet.variants import VARIANTS


def test_feature_sizes_halve_with_ceiling():
    assert feature_sizes((512, 512), 3, 7) == [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]
    assert feature_sizes((320, 320), 3, 7) == [(40, 40), (20, 20), (10, 10), (5, 5), (3, 3)]
    assert feature_sizes((100, 60), 3, 4) == [(13, 8), (7, 4)]


SPEC_ANCHORS = {"efficientdet_d0": 49104, "efficientdet_d1": 76725, "efficientdet_d2": 110484,
                "efficientdet_d3": 150381, "efficientdet_d4": 196416, "efficientdet_d5": 306900,
                "efficientdet_d6": 306900, "efficientdet_d7": 441936, "efficientdet_d7x": 442260,
                "efficientdet_lite0": 19206, "efficientdet_lite4": 76725}


@pytest.mark.parametrize("name", list(SPEC_ANCHORS))
def test_anchor_counts_match_spec(name):
    cfg = VARIANTS[name]
    n = sum(h * w for h, w in feature_sizes((cfg.image_size,) * 2, cfg.min_level, cfg.max_level)) * 9
    assert n == SPEC_ANCHORS[name]
    assert len(generate_anchors(cfg.image_size, cfg.min_level, cfg.max_level, cfg.anchor_scale)) == n


def test_d0_first_and_last_anchor_by_hand():
    a = generate_anchors(512)
    assert a.shape == (49104, 4)
    # level 3, stride 8, centre (4, 4), octave 0, aspect (1, 1): side 4 * 8 = 32
    assert a[0].tolist() == [-12.0, -12.0, 20.0, 20.0]
    # same location, aspect (1.4, 0.7): half sizes 22.4 x 11.2
    torch.testing.assert_close(a[1], torch.tensor([4 - 22.4, 4 - 11.2, 4 + 22.4, 4 + 11.2]))
    # the 9 anchors of location (0, 1) are centred at x = 12
    assert a[9].tolist() == [-4.0, -12.0, 28.0, 20.0]
    # level 7, stride 128, last location (3, 3) centre (448, 448), octave 2^(2/3), aspect (0.7, 1.4)
    base = 4 * 128 * 2 ** (2 / 3)
    hw, hh = base * 0.7 / 2, base * 1.4 / 2
    torch.testing.assert_close(a[-1], torch.tensor([448 - hw, 448 - hh, 448 + hw, 448 + hh]))
    assert math.isclose(hw, 284.46222, rel_tol=1e-6)


def test_level_boundary_order():
    a = generate_anchors(512)
    first_p4 = 64 * 64 * 9  # after all of P3
    # level 4, stride 16: centre (8, 8), side 64
    assert a[first_p4].tolist() == [-24.0, -24.0, 40.0, 40.0]


@pytest.mark.parametrize(("size", "max_level", "scale"), [(512, 7, 4.0), (320, 7, 3.0), (256, 8, 4.0)])
def test_equal_to_effdet_anchors(size, max_level, scale):
    effdet_anchors = pytest.importorskip("effdet.anchors")
    ref = effdet_anchors.Anchors(3, max_level, 3, [(1.0, 1.0), (1.4, 0.7), (0.7, 1.4)], scale, (size, size))
    ours = generate_anchors(size, 3, max_level, scale)
    yxyx = ref.boxes.numpy()
    np.testing.assert_allclose(ours.numpy(), yxyx[:, [1, 0, 3, 2]], atol=1e-4)
