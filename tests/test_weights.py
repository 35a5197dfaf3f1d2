"""Checkpoints: safe loading, clear errors, the effdet converter, downloads offline, fine-tuning."""

from __future__ import annotations

import os

import pytest
import torch

from efficientdet import WeightsError, create_model
from efficientdet.weights import (
    convert_effdet_state_dict,
    download_published,
    load_checkpoint,
    published_file,
    save_checkpoint,
    verify_hash,
)

TINY = dict(image_size=128, fpn_channels=16, fpn_layers=1, head_layers=1)


class Exploit:
    """Unpickling this would run a shell command."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/efficientdet_pwned",))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "efficientdet", "model": Exploit()}, path)
    with pytest.raises(WeightsError, match="refused to load"):
        load_checkpoint(path)
    assert not os.path.exists("/tmp/efficientdet_pwned")


def test_truncated_and_garbage_files(tmp_path):
    model = create_model("d0", num_classes=3, **TINY)
    good = save_checkpoint(tmp_path / "good.pt", model)
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(WeightsError, match=r"text\.pt"):
        load_checkpoint(tmp_path / "text.pt")
    with pytest.raises(WeightsError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_round_trip_keeps_classes_and_config(tmp_path):
    model = create_model("d0", num_classes=2, class_names=["cat", "dog"], category_ids=[3, 7], **TINY)
    for suffix in (".pt", ".safetensors"):
        path = save_checkpoint(tmp_path / f"m{suffix}", model)
        loaded = create_model("d0", weights=path)
        assert loaded.labels.names == ("cat", "dog") and loaded.labels.category_ids == (3, 7)
        assert loaded.config == model.config
        for k, v in model.state_dict().items():
            assert torch.equal(v, loaded.state_dict()[k]), k


def test_checkpoint_of_another_model_is_rejected(tmp_path):
    path = save_checkpoint(tmp_path / "d0.pt", create_model("d0", num_classes=2, **TINY))
    with pytest.raises(WeightsError, match="checkpoint is a efficientdet_d0"):
        create_model("d1", weights=path)
    assert create_model(None, weights=path).config.fpn_channels == 16  # the file defines the architecture


def test_effdet_state_dict_of_another_variant_is_rejected(tmp_path):
    effdet = pytest.importorskip("effdet")
    cfg = effdet.get_efficientdet_config("tf_efficientdet_lite0")
    sd = effdet.EfficientDet(cfg, pretrained_backbone=False).state_dict()
    torch.save(sd, tmp_path / "lite0.pth")
    with pytest.raises(WeightsError, match="do not fit --model efficientdet_d0"):
        create_model("d0", weights=tmp_path / "lite0.pth")


def test_fine_tune_new_class_count_keeps_other_weights(tmp_path):
    src = create_model("d0", num_classes=5, **TINY)
    path = save_checkpoint(tmp_path / "src.pt", src)
    tuned = create_model("d0", weights=path, num_classes=2)
    assert tuned.config.num_classes == 2
    assert tuned.class_net.predict.pw.weight.shape[0] == 9 * 2
    torch.testing.assert_close(tuned.box_net.predict.pw.weight, src.box_net.predict.pw.weight)
    torch.testing.assert_close(tuned.backbone.conv_stem.weight, src.backbone.conv_stem.weight)


def test_converter_permutes_box_channels_and_renames():
    sd = {
        "class_net.conv_rep.0.conv_dw.weight": torch.zeros(1),
        "class_net.bn_rep.0.1.bn.weight": torch.zeros(1),
        "fpn.resample.3.conv.conv.weight": torch.zeros(1),
        "fpn.cell.0.fnode.0.combine.edge_weights": torch.ones(2),
        "fpn.cell.0.fnode.1.combine.resample.2.conv.bn.bias": torch.zeros(1),
        "fpn.cell.2.fnode.7.after_combine.conv.conv_pw.bias": torch.zeros(1),
        "box_net.predict.conv_pw.bias": torch.arange(8.0),  # 2 anchors x (ty, tx, th, tw)
    }
    out = convert_effdet_state_dict(sd, bn_level_first=False)
    assert set(out) == {
        "class_net.convs.0.dw.weight", "class_net.norms.0.1.weight", "fpn.extra.0.proj.conv.weight",
        "fpn.layers.0.nodes.0.fusion.weight", "fpn.layers.0.nodes.1.inputs.2.bn.bias",
        "fpn.layers.2.nodes.7.conv.pw.bias", "box_net.predict.pw.bias",
    }  # fmt: skip
    assert out["box_net.predict.pw.bias"].tolist() == [1, 0, 3, 2, 5, 4, 7, 6]


def test_published_names_and_offline_download(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFICIENTDET_CACHE", str(tmp_path))
    monkeypatch.setenv("EFFICIENTDET_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert published_file("tf_efficientdet_d0") == "tf_efficientdet_d0_34-f153e0cf.pth"
    assert published_file("d7x") == "tf_efficientdet_d7x-f390b87c.pth"
    with pytest.raises(WeightsError, match=r"no network; fetch https://github\.com/.*tf_efficientdet_d0_34-f153e0cf\.pth"):
        create_model("d0", weights="tf_efficientdet_d0")


def test_hash_mismatch_in_cache_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFICIENTDET_CACHE", str(tmp_path))
    (tmp_path / "tf_efficientdet_d0_34-f153e0cf.pth").write_bytes(b"not the weights")
    with pytest.raises(WeightsError, match="does not match the published f153e0cf"):
        download_published("tf_efficientdet_d0_34-f153e0cf.pth")


def test_verify_hash_accepts_matching_prefix(tmp_path):
    import hashlib

    data = b"some weights"
    prefix = hashlib.sha256(data).hexdigest()[:8]
    path = tmp_path / f"w-{prefix}.pth"
    path.write_bytes(data)
    verify_hash(path, path.name)  # no error


def test_pretrained_backbone_offline_message_and_local_file(tmp_path):
    import timm

    with pytest.raises(WeightsError, match="no network"):
        create_model("lite0", pretrained_backbone=True, **TINY)
    classifier = timm.create_model("tf_efficientnet_lite0")  # a classification checkpoint, as timm saves it
    torch.save(classifier.state_dict(), tmp_path / "lite0_imagenet.pth")
    model = create_model("lite0", pretrained_backbone=tmp_path / "lite0_imagenet.pth", **TINY)
    torch.testing.assert_close(model.backbone.conv_stem.weight, classifier.conv_stem.weight)
    torch.save({"conv_stem.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="not weights of this backbone"):
        create_model("lite0", pretrained_backbone=tmp_path / "other.pth", **TINY)
