"""CPU inference kernels: conv + activation fusion and copy-free TF "same" convolutions (exact rewrites)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.layers.conv2d_same import Conv2dSame
from torch import nn

from efficientdet import create_model
from efficientdet.inference.fuse import fuse_model
from efficientdet.inference.mkldnn import FusedConv2d, fuse_conv_activations, mkldnn_available

pytestmark = pytest.mark.skipif(not mkldnn_available(), reason="torch built without oneDNN")


@pytest.mark.parametrize(("kernel", "groups"), [(3, 8), (5, 8), (3, 1)])
def test_same_conv_without_padding_copy_equals_timm(kernel, groups):
    torch.manual_seed(0)
    conv = Conv2dSame(8, 8, kernel, stride=2, groups=groups, bias=True).eval()
    fused = FusedConv2d(conv, "none", same=True)
    for h, w in [(8, 8), (7, 7), (8, 7), (7, 10), (1, 2), (16, 5)]:  # every parity of the TF padding
        x = torch.randn(2, 8, h, w)
        with torch.inference_mode():
            expected = conv(x)
            got = fused(x)
            got_cl = fused(x.contiguous(memory_format=torch.channels_last))
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_cl, expected, atol=1e-5, rtol=1e-5)
    assert set(fused._expanded) <= {(0, 1), (1, 0), (1, 1)}


@pytest.mark.parametrize(("act", "fn"), [(nn.SiLU(), F.silu), (nn.Sigmoid(), torch.sigmoid), (nn.ReLU(), F.relu)])
def test_conv_activation_pair_becomes_one_kernel(act, fn):
    torch.manual_seed(0)
    parent = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), act, nn.Conv2d(6, 2, 1))
    x = torch.randn(1, 4, 9, 9)
    with torch.inference_mode():
        expected = parent(x)
        assert fuse_conv_activations(parent) == 1
        assert isinstance(parent[0], FusedConv2d) and isinstance(parent[1], nn.Identity)
        assert parent[0].activation != "none" and type(parent[2]) is nn.Conv2d  # plain convs stay aten's
        torch.testing.assert_close(parent(x), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fn(F.conv2d(x, parent[0].weight, parent[0].bias, padding=1)),
                                   parent[0](x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("name", "size"), [("d0", 128), ("lite0", 128), ("d0", 160)])
def test_rewritten_network_equals_fused_network(name, size):
    torch.manual_seed(0)
    model = create_model(name, image_size=size, fpn_channels=16, fpn_layers=1, head_layers=1).eval()
    fused = fuse_model(model).to(memory_format=torch.channels_last)
    fast = fuse_model(model).to(memory_format=torch.channels_last)
    same = sum(type(m).__name__ == "Conv2dSame" for m in fused.modules())
    n = fuse_conv_activations(fast)
    assert same >= 4 and not any(type(m).__name__ == "Conv2dSame" for m in fast.modules())
    swish = sum(m.activation == "swish" for m in fast.modules() if isinstance(m, FusedConv2d))
    sigmoid = sum(m.activation == "sigmoid" for m in fast.modules() if isinstance(m, FusedConv2d))
    assert n == sum(isinstance(m, FusedConv2d) for m in fast.modules())
    if name != "lite0":  # Lite uses ReLU6 (stays a separate op) and has no squeeze-excite
        assert swish > 20 and sigmoid > 10
    x = torch.randn(2, 3, size, size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref, got = fused(x), fast(x)
    for a, b in zip(ref[0] + ref[1], got[0] + got[1]):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
