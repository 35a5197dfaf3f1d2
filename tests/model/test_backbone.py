"""The timm features backbone: output levels and the ``drop_last_stage`` option of the ``_seg`` rows."""

from __future__ import annotations

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from efficientdet import create_model
from efficientdet.model.backbone import create_backbone, drop_last_block_stage
from efficientdet.model.imagenet import load_imagenet_backbone


def _macs(model: torch.nn.Module, size: int) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("min_level", [3, 2])
def test_drop_last_stage_outputs_the_stage_before(min_level):
    """Same weights: the shortened backbone's outputs are the full one's, its P5 is the output of
    stage 6 (B0: 192 channels, stride 32), and stage 7 is gone (its parameters and multiply-adds)."""
    torch.manual_seed(0)
    full = create_backbone("tf_efficientnet_b0", min_level=min_level).eval()
    short = create_backbone("tf_efficientnet_b0", min_level=min_level, drop_last_stage=True).eval()
    missing, unexpected = short.load_state_dict(full.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("blocks.6.") for k in unexpected)
    full_channels = list(full.feature_info.channels())
    assert list(short.feature_info.channels()) == full_channels[:-1] + [192]
    assert short.feature_info.reduction() == full.feature_info.reduction()
    x = torch.randn(2, 3, 96, 128)
    stage6 = {}
    hook = full.blocks[5].register_forward_hook(lambda m, i, o: stage6.update(out=o))
    with torch.no_grad():
        ref, out = full(x), short(x)
    hook.remove()
    assert len(out) == len(ref) == 5 - min_level + 1
    for a, b in zip(out[:-1], ref[:-1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(out[-1], stage6["out"], rtol=0, atol=0)
    assert out[-1].shape == (2, 192, 3, 4)
    # B0's stage 7 at 256 px: 1x1 192->1152 and 1152->320 at 8x8, a depthwise 3x3 and squeeze-excite
    saved = _macs(full, 256) - _macs(short, 256)
    assert 64 * (192 * 1152 + 1152 * 320 + 1152 * 9) < saved < 1.05 * 64 * (192 * 1152 + 1152 * 320 + 1152 * 9) + 1e6


def test_drop_last_stage_refuses_other_layouts():
    net = timm.create_model("tf_efficientnet_b0", features_only=True, out_indices=(2, 3))  # no stride-32 output
    with pytest.raises(ValueError, match="not the last stage"):
        drop_last_block_stage(net)
    with pytest.raises(ValueError, match="EfficientNetFeatures"):
        drop_last_block_stage(torch.nn.Conv2d(3, 3, 1))


def test_seg_decoder_rows_drop_the_last_stage_and_take_full_weights(tmp_path):
    """The decoder ``_seg`` rows run without stage 7 (FLOPs at or below the LR-ASPP peer at 256 px,
    11 classes: 0.4932B); ImageNet weights of the whole network load onto what is left."""
    model = create_model("d0_seg", seg_classes=11)
    assert model.config.drop_last_stage and len(model.backbone.blocks) == 6
    assert _macs(model.eval(), 256) <= 493_200_000
    assert not create_model("d4_seg").config.drop_last_stage  # the paper's row exactly
    net = timm.create_model("tf_efficientnet_b0")
    torch.save(net.state_dict(), tmp_path / "b0.pth")
    load_imagenet_backbone(model.backbone, "tf_efficientnet_b0", tmp_path / "b0.pth")
    key = "blocks.5.3.conv_pwl.weight"
    assert torch.equal(model.backbone.state_dict()[key], net.state_dict()[key])
