"""The family table: parameters equal effdet's for all 15 rows, FLOPs within 3% of the paper, scaling, overrides."""

from __future__ import annotations

import effdet  # test-only oracle
import pytest
import torch

from efficientdet import ConfigError, compound_scaling, get_config, list_models
from efficientdet.complexity import measure
from efficientdet.model.efficientdet import EfficientDet, count_parameters
from efficientdet.variants import VARIANTS as ALL_ROWS
from efficientdet.weights import convert_effdet_state_dict

#: the detection rows (the *_seg segmentation rows have no effdet counterpart; tests/model covers them)
VARIANTS = {k: v for k, v in ALL_ROWS.items() if not k.endswith("_seg")}

# Table 2 of the paper (Tan et al., 2020): FLOPs (multiply-adds) of the D rows, in billions
PAPER_GFLOPS = {
    "efficientdet_d0": 2.5, "efficientdet_d1": 6.1, "efficientdet_d2": 11, "efficientdet_d3": 25,
    "efficientdet_d4": 55, "efficientdet_d5": 135, "efficientdet_d6": 226, "efficientdet_d7": 325,
    "efficientdet_d7x": 410,
}  # fmt: skip


def test_every_row_is_checked():
    assert len(VARIANTS) == 15  # D0-D7, D7x, Lite0-Lite4 with Lite3x
    assert set(PAPER_GFLOPS) == {n for n in VARIANTS if "lite" not in n}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_parameters_equal_effdet(name):
    """Same parameter count and the same tensors (names through the converter, shapes) as effdet's model.

    Both models are built on the meta device (shapes only, nothing allocated), so even D7x costs ~1 s.
    """
    cfg = VARIANTS[name]
    with torch.device("meta"):
        reference = effdet.create_model("tf_" + name, pretrained=False, pretrained_backbone=False)
        ours = EfficientDet(cfg)
    expected = sum(p.numel() for p in reference.parameters())
    assert count_parameters(ours) == expected
    if cfg.reference_params is not None:  # the figure the table quotes
        assert cfg.reference_params == expected
    converted = {k: tuple(v.shape) for k, v in convert_effdet_state_dict(reference.state_dict()).items()}
    assert converted == {k: tuple(v.shape) for k, v in ours.state_dict().items()}


@pytest.mark.parametrize("name", list(PAPER_GFLOPS))
def test_flops_within_3_percent_of_paper(name):
    cfg = VARIANTS[name]
    assert cfg.paper_flops == PAPER_GFLOPS[name] * 1e9
    flops = measure(cfg)["flops"]
    assert abs(flops / (PAPER_GFLOPS[name] * 1e9) - 1) < 0.03, flops


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
