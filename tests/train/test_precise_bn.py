"""Precise BN: the evaluated weights' BatchNorm statistics recomputed from training images."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from efficientdet.train.precise_bn import recompute_bn_statistics, trained_batch_norms


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2), nn.Dropout(0.5), nn.BatchNorm2d(2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, -2.0]).view(2, 1, 1, 1))
    return net


def test_statistics_are_the_average_of_the_batch_statistics_by_hand():
    net = _net().eval()
    frozen_mean = net[3].running_mean.clone()
    # two batches of one 1 x 2 image: [1, 3] and [2, 6]
    batches = [torch.tensor([[[[1.0, 3.0]]]]), torch.tensor([[[[2.0, 6.0]]]])]
    assert recompute_bn_statistics(net, batches, names={"1"}) == 2
    bn = net[1]
    # channel 0 = x, channel 1 = -2x; batch means 2 and 4 -> 3; unbiased variances 2 and 8 -> 5
    assert bn.running_mean.tolist() == pytest.approx([3.0, -6.0])
    assert bn.running_var.tolist() == pytest.approx([5.0, 20.0])
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 2  # momentum restored
    assert torch.equal(net[3].running_mean, frozen_mean)  # not named: untouched
    assert not any(m.training for m in net.modules())  # modes restored (dropout never ran in train mode)


def test_modes_are_restored_and_nothing_changes_without_images():
    net = _net().train()
    net[3].eval()  # a frozen BatchNorm
    assert trained_batch_norms(net) == {"1"}
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert recompute_bn_statistics(net, [], names=trained_batch_norms(net)) == 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert [m.training for m in net] == [True, True, True, False]


def test_dropout_stays_off_while_the_statistics_are_taken():
    net = _net().eval()
    x = torch.tensor([[[[1.0, 3.0, 5.0, 7.0]]]])
    recompute_bn_statistics(net, [x, x])
    # the second BatchNorm sees the first one's batch-normalised output, (x - 4) / sqrt(5 + eps) for channel 0
    # (biased variance 5; channel 1: -2x, variance 20): mean 0, unbiased variance 4/3 * v / (v + eps).
    # Dropout in train mode would zero half the values and double the rest, moving both.
    eps = net[1].eps
    assert net[3].running_mean.abs().max() < 1e-6
    assert net[3].running_var.tolist() == pytest.approx([4 / 3 * 5 / (5 + eps), 4 / 3 * 20 / (20 + eps)], rel=1e-6)
