"""Feature-network node tables and fusion math, checked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from efficientdet.model.feature_network import Fusion, Node, bifpn_nodes, fpn_nodes, panet_nodes
from efficientdet.model.layers import max_pool_same


def test_bifpn_node_table_p3_p7():
    assert bifpn_nodes(3, 7) == [
        Node(6, (3, 4)), Node(5, (2, 5)), Node(4, (1, 6)), Node(3, (0, 7)),
        Node(4, (1, 7, 8)), Node(5, (2, 6, 9)), Node(6, (3, 5, 10)), Node(7, (4, 11)),
    ]  # fmt: skip


def test_bifpn_node_table_p3_p8_has_ten_nodes():
    nodes = bifpn_nodes(3, 8)
    assert len(nodes) == 10
    assert nodes[0] == Node(7, (4, 5)) and nodes[-1] == Node(8, (5, 14))


def test_fpn_and_panet_tables():
    assert fpn_nodes(3, 5) == [Node(5, (2,)), Node(4, (1, 3)), Node(3, (0, 4))]
    assert panet_nodes(3, 5) == [
        Node(5, (2,)), Node(4, (1, 3)), Node(3, (0, 4)),
        Node(3, (5,)), Node(4, (4, 6)), Node(5, (3, 7)),
    ]  # fmt: skip


def test_fast_fusion_by_hand():
    f = Fusion(2, "fast")
    a, b = torch.full((1, 1, 2, 2), 1.0), torch.full((1, 1, 2, 2), 3.0)
    torch.testing.assert_close(f([a, b]), torch.full((1, 1, 2, 2), 4.0 / (2 + 1e-4)))
    with torch.no_grad():
        f.weight.copy_(torch.tensor([-1.0, 2.0]))  # relu -> (0, 2)
    torch.testing.assert_close(f([a, b]), torch.full((1, 1, 2, 2), 6.0 / (2 + 1e-4)))


def test_softmax_and_sum_fusion_by_hand():
    f = Fusion(2, "softmax")
    with torch.no_grad():
        f.weight.copy_(torch.tensor([0.0, math.log(3.0)]))  # softmax -> (0.25, 0.75)
    a, b = torch.full((1, 1, 1, 1), 1.0), torch.full((1, 1, 1, 1), 3.0)
    torch.testing.assert_close(f([a, b]), torch.full((1, 1, 1, 1), 0.25 + 2.25))
    s = Fusion(3, "sum")
    assert s.weight is None
    assert s([a, b, b]).item() == 7.0


@pytest.mark.parametrize(("n", "out"), [(8, 4), (7, 4), (5, 3), (1, 1)])
def test_max_pool_same_matches_tf_padding(n, out):
    x = torch.arange(n * n, dtype=torch.float32).view(1, 1, n, n)
    y = max_pool_same(x)
    assert y.shape[-1] == out
    if n == 8:  # TF pads only at the bottom/right for even sizes: window of output 0 is rows/cols 0..2
        assert y[0, 0, 0, 0].item() == x[0, 0, 2, 2].item()
        assert y[0, 0, -1, -1].item() == x[0, 0, 7, 7].item()


def test_max_pool_same_equals_explicit_minus_inf_padding():
    # the pool avoids a padding copy (ceil_mode + symmetric padding); compare with TF's explicit padding
    torch.manual_seed(0)
    for h in range(1, 12):
        for w in (1, 2, 5, 8, 9):
            x = torch.randn(2, 3, h, w)
            ph = max(((h + 1) // 2 - 1) * 2 + 3 - h, 0)
            pw = max(((w + 1) // 2 - 1) * 2 + 3 - w, 0)
            padded = torch.nn.functional.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], value=float("-inf"))
            expected = torch.nn.functional.max_pool2d(padded, 3, 2)
            assert expected.shape[-2:] == ((h + 1) // 2, (w + 1) // 2)
            torch.testing.assert_close(max_pool_same(x), expected, atol=0, rtol=0)


def test_backbone_checkpointing_gives_the_same_gradients():
    from efficientdet import create_model

    torch.manual_seed(0)
    model = create_model("d0", num_classes=3, image_size=128, fpn_channels=16, fpn_layers=1, head_layers=1,
                         backbone_drop_path=0.0).train()
    x = torch.randn(2, 3, 128, 128)

    def grads(stages: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        model.recompute_stages = stages
        cls, box = model(x)
        loss = sum(c.float().pow(2).mean() for c in cls) + sum(b.float().pow(2).mean() for b in box)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    state = {k: v.clone() for k, v in model.state_dict().items()}
    ref_loss, ref = grads(0)
    ref_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state)  # undo the BN running-stat update of the first pass
    loss, got = grads(2)
    torch.testing.assert_close(loss, ref_loss)
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # the recomputation in backward does not update the BN running statistics a second time
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, ref_state[key], rtol=1e-5, atol=1e-7, msg=key)
    assert model.recomputable_stages() == 2
    model.recompute_stages = 3  # would checkpoint through the P3 output
    with pytest.raises(ValueError, match="at most 2"):
        model(x)


def test_memory_efficient_bn_silu_equals_bn_then_silu():
    import copy

    from timm.layers.norm_act import BatchNormAct2d

    from efficientdet.model.norm_act import BatchNormSiLU2d, batch_norm_silu, use_memory_efficient_norm_act

    torch.manual_seed(0)
    for dtype, channels_last in [(torch.float64, False), (torch.float32, True)]:
        ref = BatchNormAct2d(5, act_layer=torch.nn.SiLU, momentum=0.1).to(dtype)
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.normal_()
        new = copy.deepcopy(ref)
        assert use_memory_efficient_norm_act(torch.nn.Sequential(new)) == 1 and type(new) is BatchNormSiLU2d
        x = torch.randn(3, 5, 6, 7, dtype=dtype) * 2 + 1
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        grad = torch.randn(3, 5, 6, 7, dtype=dtype)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ref(xa), new(xb)
        (ya * grad).sum().backward()
        (yb * grad).sum().backward()
        tol = {"atol": 1e-12, "rtol": 1e-12} if dtype == torch.float64 else {"atol": 1e-5, "rtol": 1e-5}
        torch.testing.assert_close(yb, ya, **tol)
        torch.testing.assert_close(xb.grad, xa.grad, **tol)
        torch.testing.assert_close(new.weight.grad, ref.weight.grad, **tol)
        torch.testing.assert_close(new.bias.grad, ref.bias.grad, **tol)
        torch.testing.assert_close(new.running_mean, ref.running_mean, **tol)
        torch.testing.assert_close(new.running_var, ref.running_var, **tol)
        assert int(new.num_batches_tracked) == int(ref.num_batches_tracked) == 1
        # the autograd graph keeps the BN input only: one saved full-size tensor instead of three
        assert yb.grad_fn.name().endswith("_BatchNormSiLUFunctionBackward")
        ref.eval(), new.eval()
        torch.testing.assert_close(new(x), ref(x), atol=0, rtol=0)
    # the head's plain BatchNorm2d + SiLU goes through the same function
    bn = torch.nn.BatchNorm2d(4)
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    assert batch_norm_silu(bn, x).grad_fn.name().endswith("_BatchNormSiLUFunctionBackward")
    with torch.no_grad():
        assert batch_norm_silu(bn, x).grad_fn is None


def test_backbone_uses_memory_efficient_norm_act():
    from efficientdet import create_model
    from efficientdet.model.norm_act import BatchNormSiLU2d

    model = create_model("d0", num_classes=3, image_size=128, fpn_channels=16, fpn_layers=1, head_layers=1)
    assert sum(isinstance(m, BatchNormSiLU2d) for m in model.backbone.modules()) >= 30
    lite = create_model("lite0", num_classes=3, image_size=128, fpn_channels=16, fpn_layers=1, head_layers=1)
    assert not any(isinstance(m, BatchNormSiLU2d) for m in lite.backbone.modules())  # ReLU6 stays as is


def test_sync_batchnorm_conversion_keeps_the_backbone_activations():
    # torch's convert_sync_batchnorm turns timm's BN+SiLU layers into bare SyncBatchNorm whose forward
    # skips the activation; the trainer uses timm's converter, which keeps it (the CUDA DDP path).
    # SyncBatchNorm in eval mode needs no process group, so the outputs can be compared on the CPU.
    import copy

    from timm.layers import convert_sync_batchnorm

    from efficientdet import create_model

    torch.manual_seed(0)
    model = create_model("d0", num_classes=3, image_size=128, fpn_channels=16, fpn_layers=1, head_layers=1).eval()
    x = torch.randn(1, 3, 128, 128)
    synced = convert_sync_batchnorm(copy.deepcopy(model)).eval()
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules()) > 40
    assert not any(type(m) is torch.nn.BatchNorm2d for m in synced.modules())
    torch_synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model)).eval()
    with torch.no_grad():
        ref, got, bad = model.backbone(x), synced.backbone(x), torch_synced.backbone(x)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a)
    assert min(float((a - b).abs().max()) for a, b in zip(ref, bad)) > 1e-2  # the bug it avoids
