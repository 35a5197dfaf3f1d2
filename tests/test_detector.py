"""The Python Detector: every input type gives the same detections, in original-image pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from efficientdet import ConfigError, Detector, create_model

TINY = dict(image_size=128, fpn_channels=16, fpn_layers=1, head_layers=1)


@pytest.fixture(scope="module")
def detector() -> Detector:
    torch.manual_seed(0)
    model = create_model("d0", num_classes=3, class_names=["a", "b", "c"], category_ids=[1, 5, 9], **TINY)
    with torch.no_grad():  # distinct, informative scores (no ties) from a random network
        for name, p in model.class_net.named_parameters():
            p.normal_(0, 0.5) if name.endswith("weight") else p.zero_()
        model.box_net.predict.pw.weight.normal_(0, 0.1)
    return Detector(model, score_threshold=0.2, max_det=20)


def test_all_input_types_agree(detector, photo_files):
    path = photo_files[0]
    pil = Image.open(path).convert("RGB")
    arr = np.asarray(pil)
    chw_uint8 = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    chw_float = chw_uint8.float() / 255.0
    results = detector([str(path), path, pil, arr, chw_uint8, chw_float])
    assert len(results) == 6
    ref = results[0]
    assert len(ref) > 0 and ref.image_size == (320, 200)
    for other in results[1:]:
        np.testing.assert_allclose(other.boxes, ref.boxes, atol=1e-3)
        np.testing.assert_array_equal(other.labels, ref.labels)
    single = detector(pil)
    assert isinstance(single, list) and len(single) == 1


def test_outputs_are_consistent(detector, photo_files):
    dets = detector(photo_files, batch_size=2)
    assert [d.image_size for d in dets] == [(320, 200), (150, 260), (128, 128)]
    for d in dets:
        w, h = d.image_size
        assert d.boxes.dtype == np.float32 and d.boxes.shape == (len(d), 4)
        assert (d.boxes[:, 0] >= 0).all() and (d.boxes[:, 2] <= w + 1e-3).all() and (d.boxes[:, 3] <= h + 1e-3).all()
        assert (np.diff(d.scores) <= 1e-6).all() and (d.scores >= 0.2).all() and len(d) <= 20
        assert all(n == ["a", "b", "c"][i] for n, i in zip(d.names, d.labels))
        assert d.category_ids.tolist() == [[1, 5, 9][i] for i in d.labels]


def test_batch_equals_single(detector, photo_files):
    batched = detector(photo_files, batch_size=3)
    for path, b in zip(photo_files, batched):
        s = detector(path)[0]
        np.testing.assert_allclose(b.boxes, s.boxes, atol=1e-3)
        np.testing.assert_allclose(b.scores, s.scores, atol=1e-5)


def test_grayscale_and_rgba_images_work(detector, tmp_path, photo_files):
    rgb = Image.open(photo_files[0])
    rgb.convert("L").save(tmp_path / "gray.png")
    rgb.convert("RGBA").save(tmp_path / "rgba.png")
    out = detector([tmp_path / "gray.png", tmp_path / "rgba.png"])
    assert [d.image_size for d in out] == [(320, 200), (320, 200)]


def test_exif_rotation_is_honoured(detector, tmp_path, photo_files):
    img = Image.open(photo_files[0]).convert("RGB")  # 320 x 200
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    det = detector(tmp_path / "rot.jpg")[0]
    assert det.image_size == (200, 320)
    if len(det):
        assert det.boxes[:, 2].max() <= 200 + 1e-3


def test_bad_settings_are_config_errors():
    model = create_model("d0", num_classes=2, **TINY)
    with pytest.raises(ConfigError, match="score_threshold"):
        Detector(model, score_threshold=1.5)
    with pytest.raises(ConfigError, match="max_det"):
        Detector(model, max_det=0)
    with pytest.raises(ConfigError, match="batch_size"):
        Detector(model)([np.zeros((10, 10, 3), np.uint8)], batch_size=0)


def test_with_settings_is_a_copy_sharing_the_runner_that_equals_a_fresh_detector(detector, photo_files):
    strict = detector.with_settings(score_threshold=0.4, iou_threshold=0.3, max_det=3)
    assert strict.runner is detector.runner and strict.model is detector.model  # the network is not copied
    assert (strict.settings.score_threshold, strict.settings.iou_threshold, strict.settings.max_det) == (0.4, 0.3, 3)
    assert (detector.settings.score_threshold, detector.settings.max_det) == (0.2, 20)  # the original is unchanged
    assert strict.settings.topk == detector.settings.topk  # what is not given is kept
    loose = detector(photo_files[0])[0]  # the original built its post-processor first: the copy must not reuse it
    want = Detector(detector.model, score_threshold=0.4, iou_threshold=0.3, max_det=3)(photo_files[0])[0]
    got = strict(photo_files[0])[0]
    assert 0 < len(got) <= 3 < len(loose)
    np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-4)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
    np.testing.assert_array_equal(got.labels, want.labels)
    assert len(detector(photo_files[0])[0]) == len(loose)
    with pytest.raises(ConfigError, match="max_det"):
        detector.with_settings(max_det=0)
