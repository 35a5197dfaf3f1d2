"""The family table: exact parameter counts (built on the meta device), scaling, overrides."""

from __future__ import annotations

import pytest
import torch

from efficientdet import ConfigError, compound_scaling, get_config, list_models
from efficientdet.complexity import measure
from efficientdet.model.efficientdet import EfficientDet, count_parameters
from efficientdet.variants import VARIANTS

REFERENCE_PARAMS = {
    "efficientdet_d0": 3_880_067, "efficientdet_d1": 6_625_898, "efficientdet_d2": 8_097_039,
    "efficientdet_d3": 12_032_296, "efficientdet_d4": 20_723_675, "efficientdet_d5": 33_653_315,
    "efficientdet_d6": 51_871_782, "efficientdet_d7": 51_871_782, "efficientdet_d7x": 77_147_166,
    "efficientdet_lite0": 3_243_470, "efficientdet_lite4": 15_130_894,
}  # fmt: skip


@pytest.mark.parametrize("name", list(REFERENCE_PARAMS))
def test_exact_parameter_count(name):
    with torch.device("meta"):
        model = EfficientDet(VARIANTS[name])
    assert count_parameters(model) == REFERENCE_PARAMS[name]


@pytest.mark.parametrize("name", ["efficientdet_d0", "efficientdet_d3", "efficientdet_d7x"])
def test_flops_within_3_percent_of_paper(name):
    cfg = VARIANTS[name]
    flops = measure(cfg)["flops"]
    assert abs(flops / cfg.paper_flops - 1) < 0.03


def test_list_and_aliases():
    names = list_models()
    assert names[0] == "efficientdet_d0" and "efficientdet_d7x" in names and "efficientdet_lite4" in names
    for alias in ("d0", "D0", "efficientdet-d0", "tf_efficientdet_d0", "efficientdet_d0"):
        assert get_config(alias).name == "efficientdet_d0"


def test_unknown_name_suggests_closest():
    with pytest.raises(ConfigError, match="did you mean 'd1'"):
        get_config("efficientdet_d11")


def test_overrides_and_validation():
    cfg = get_config("d0", num_classes=3, image_size=256, feature_network="panet", fusion="softmax")
    assert (cfg.num_classes, cfg.image_size, cfg.feature_network, cfg.fusion) == (3, 256, "panet", "softmax")
    with pytest.raises(ConfigError, match="did you mean 'num_classes'"):
        get_config("d0", num_class=3)
    with pytest.raises(ConfigError, match="fusion"):
        get_config("d0", fusion="attention")
    with pytest.raises(ConfigError, match="image_size"):
        get_config("d0", image_size=0)


def test_compound_scaling_formulas():
    row = compound_scaling(0)
    assert (row.fpn_channels, row.fpn_layers, row.head_layers, row.image_size) == (64, 3, 3, 512)
    row = compound_scaling(3)  # W = 64 * 1.35^3 = 157.5 -> 160, D = 6, heads 4, R = 896
    assert (row.fpn_channels, row.fpn_layers, row.head_layers, row.image_size, row.backbone) == (
        160, 6, 4, 896, "tf_efficientnet_b3")
    assert get_config("phi2").fpn_layers == 5
    with pytest.raises(ConfigError):
        compound_scaling(-1)


@pytest.mark.parametrize("network", ["bifpn", "panet", "fpn"])
def test_feature_networks_run(network):
    cfg = get_config("d0", image_size=128, fpn_channels=16, fpn_layers=2, head_layers=1, num_classes=3,
                     feature_network=network)
    model = EfficientDet(cfg).eval()
    cls, box = model(torch.randn(2, 3, 128, 128))
    assert [tuple(c.shape) for c in cls] == [(2, 27, 16, 16), (2, 27, 8, 8), (2, 27, 4, 4), (2, 27, 2, 2),
                                            (2, 27, 1, 1)]
    assert [tuple(b.shape[1:2]) for b in box] == [(36,)] * 5
