"""Head initialisation: the official separable heads' TF ``variance_scaling`` (fan_in, truncated normal),
not Normal(0, 0.01). effdet's ``_init_weight`` is the test-only oracle for the pointwise parts and the
prior bias (for a depthwise kernel effdet counts fan_in as 9; TF, and we, count all 9 x C inputs)."""

from __future__ import annotations

import math

import torch

from efficientdet.model.heads import box_head, class_head, reset_class_head
from efficientdet.model.layers import variance_scaling_


def _std(t: torch.Tensor) -> float:
    return float(t.detach().std())


def test_variance_scaling_std_is_one_over_fan_in() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(64, 256, 3)  # fan_in = 64 * 9
    variance_scaling_(conv)
    assert abs(_std(conv.weight) - math.sqrt(1 / 576)) < 0.002
    # truncated at 2 std of the underlying normal: nothing beyond 2 * sqrt(1/576) / 0.8796
    assert float(conv.weight.abs().max()) <= 2 * math.sqrt(1 / 576) / 0.87962566103423978 + 1e-7
    dw = torch.nn.Conv2d(64, 64, 3, groups=64)  # depthwise: TF's kernel (3, 3, 64, 1), fan_in 576
    variance_scaling_(dw)
    assert abs(_std(dw.weight) - math.sqrt(1 / 576)) < 0.004


def test_class_head_matches_effdet_pointwise_init_and_prior() -> None:
    from effdet.config import get_efficientdet_config
    from effdet.efficientdet import HeadNet, _init_weight

    torch.manual_seed(0)
    cfg = get_efficientdet_config("tf_efficientdet_d0")
    ref = HeadNet(cfg, num_outputs=cfg.num_classes)
    for n, m in ref.named_modules():
        _init_weight(m, "class_net." + n)
    ours = class_head(64, 3, 5, 9, 90, "silu", conv_bias=True)
    for got, want in ((ours.convs[0].pw.weight, ref.conv_rep[0].conv_pw.weight),
                      (ours.predict.pw.weight, ref.predict.conv_pw.weight)):
        assert got.shape == want.shape
        assert abs(_std(got) - _std(want)) < 0.1 * _std(want)  # both sqrt(1 / 64)
    assert abs(_std(ours.convs[0].dw.weight) - math.sqrt(1 / 576)) < 0.01
    assert torch.allclose(ours.predict.pw.bias, ref.predict.conv_pw.bias)
    assert abs(float(ours.predict.pw.bias[0]) + math.log(99)) < 1e-6


def test_initial_class_logits_vary_with_the_input() -> None:
    """Normal(0, 0.01) in both parts of the predictor gave logits equal to the prior bias everywhere
    (std 1e-6): no signal for the loss to separate the classes with."""
    torch.manual_seed(0)
    head = class_head(32, 2, 1, 9, 4, "silu", conv_bias=True).train()  # BN normalises with batch statistics
    with torch.no_grad():
        out = head([torch.randn(2, 32, 8, 8)])[0]
    assert float(out.std()) > 0.02  # 0.095 here; Normal(0, 0.01): 1e-6
    assert abs(float(out.mean()) + math.log(99)) < 0.5
    box = box_head(32, 2, 1, 9, "silu", conv_bias=True)
    assert abs(_std(box.predict.pw.weight) - math.sqrt(1 / 32)) < 0.03
    assert float(box.predict.pw.bias.abs().max()) == 0.0


def test_reset_class_head_uses_the_same_rule() -> None:
    torch.manual_seed(0)
    head = class_head(64, 2, 1, 9, 90, "silu", conv_bias=True)
    reset_class_head(head, 9, 3)
    assert head.predict.pw.weight.shape[0] == 27
    assert abs(_std(head.predict.pw.weight) - 1 / 8) < 0.02
