"""Parameter groups, the lr schedule at hand-computed steps, and the EMA arithmetic."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from efficientdet import create_model
from efficientdet.train.ema import ModelEma
from efficientdet.train.optim import WarmupCosine, build_optimizer, param_groups


def test_no_weight_decay_on_norms_and_biases() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1, bias=False), nn.LayerNorm(2))
    model[2].weight.requires_grad_(False)  # frozen: in no group
    decay, no_decay = param_groups(model, 4e-5)
    assert decay["weight_decay"] == 4e-5 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight)}
    expected = {id(model[0].bias), id(model[1].weight), id(model[1].bias), id(model[3].weight), id(model[3].bias)}
    assert {id(p) for p in no_decay["params"]} == expected


def test_efficientdet_groups() -> None:
    from efficientdet.factory import create_model

    model = create_model("d0", num_classes=3, image_size=128, fpn_channels=16, fpn_layers=1, head_layers=1)
    decay, no_decay = param_groups(model, 4e-5)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith(".weight") for p in decay["params"])
    # conv kernels, plus the 1-D BiFPN fusion weights (decayed, as the official code)
    assert all(p.ndim == 4 or ".fusion." in names[id(p)] for p in decay["params"])
    assert all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    opt = build_optimizer(model, "sgd", 0.1, 0.9, 4e-5)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9


def test_lr_schedule_values() -> None:
    # 100 steps, 10 warm-up steps, peak 0.08, start at 0.1 x peak
    s = WarmupCosine(0.08, total_steps=100, warmup_steps=10, warmup_factor=0.1)
    assert s(0) == pytest.approx(0.008)
    assert s(5) == pytest.approx(0.08 * (0.1 + 0.9 * 0.5))
    assert s(10) == pytest.approx(0.08)  # end of warm-up
    assert s(55) == pytest.approx(0.04)  # cosine midpoint: (55 - 10) / 90 = 0.5
    assert s(100) == pytest.approx(0.0, abs=1e-12)
    assert s(99) < 1e-4
    assert WarmupCosine(1.0, 10, 0)(0) == 1.0


def test_ema_math() -> None:
    model = nn.Linear(1, 1, bias=False)
    nn.init.constant_(model.weight, 0.0)
    ema = ModelEma(model, decay=0.5, warmup_steps=0)
    model.weight.data.fill_(1.0)
    assert ema.update(model) == 0.5
    assert ema.module.weight.item() == pytest.approx(0.5)  # 0.5 * 0 + 0.5 * 1
    model.weight.data.fill_(2.0)
    ema.update(model)
    assert ema.module.weight.item() == pytest.approx(1.25)  # 0.5 * 0.5 + 0.5 * 2
    assert not ema.module.weight.requires_grad and ema.updates == 2
    # warm-up form: d_t = decay * (1 - exp(-t / tau))
    warm = ModelEma(model, decay=0.9998, warmup_steps=2000)
    assert warm.current_decay(200) == pytest.approx(0.9998 * (1 - math.exp(-0.1)))
    before = warm.module.weight.item()
    model.weight.data.fill_(10.0)
    d = warm.update(model)
    assert warm.module.weight.item() == pytest.approx(d * before + (1 - d) * 10.0)


def test_backbone_lr_scale_groups_follow_the_schedule():
    """With a backbone lr scale the backbone's parameters get their own groups at that fraction of the lr."""
    model = create_model("d0", num_classes=2, image_size=128, fpn_channels=16, fpn_layers=1, head_layers=1)
    plain = param_groups(model, 4e-5)
    assert [g["name"] for g in plain] == ["decay", "no_decay"] and all(g["lr_scale"] == 1.0 for g in plain)
    groups = param_groups(model, 4e-5, backbone_lr_scale=0.1)
    assert [g["name"] for g in groups] == ["decay", "no_decay", "backbone_decay", "backbone_no_decay"]
    backbone = {id(p) for p in model.backbone.parameters()}
    assert {id(p) for g in groups[2:] for p in g["params"]} == backbone
    assert not backbone & {id(p) for g in groups[:2] for p in g["params"]}
    assert sum(len(g["params"]) for g in groups) == sum(len(g["params"]) for g in plain)
    assert [g["weight_decay"] for g in groups] == [4e-5, 0.0, 4e-5, 0.0]
    opt = build_optimizer(model, "adamw", 0.01, 0.9, 4e-5, backbone_lr_scale=0.1)
    WarmupCosine(0.01, total_steps=100, warmup_steps=0).apply(opt, 0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.01, 0.001, 0.001])
