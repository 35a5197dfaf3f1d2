"""Segmentation inference: logits -> original-size masks, the loss, evaluation, predicted-mask folders,
ONNX export with the arg-max in the graph and the torch-free runner, checkpoints with class names."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from efficientdet import create_model
from efficientdet.data.segmentation import read_segmentation
from efficientdet.data.synth_seg import make_synthetic_segmentation
from efficientdet.errors import DataError
from efficientdet.eval.segmentation import evaluate_segmentation, score_mask_folder
from efficientdet.images import load_image
from efficientdet.inference.segmenter import Segmenter, logits_to_masks
from efficientdet.loss import segmentation_loss
from efficientdet.masks import pixel_counts
from efficientdet.weights import save_checkpoint

TINY_SEG = dict(image_size=128, fpn_channels=16, fpn_layers=1, seg_channels=16, seg_layers=1)


def test_logits_to_masks_crops_the_canvas_and_resizes():
    logits = torch.zeros(1, 2, 8, 8)
    logits[0, 1, :, 0] = 5.0  # class 1 wins in canvas column 0 ...
    logits[0, 1, 2:, :] = 5.0  # ... and in the padding below the image (must be cropped away)
    # a 6 x 4 image on the canvas at scale 0.5: its region is 3 x 2 canvas pixels
    (mask,) = logits_to_masks(logits, [(6, 4)], [0.5])
    assert mask.shape == (4, 6) and mask.dtype == np.uint8
    assert (mask[:, 0] == 1).all() and (mask[:, 3:] == 0).all()


def test_segmentation_loss_by_hand():
    logits = torch.zeros(1, 2, 2, 2, requires_grad=True)
    masks = torch.tensor([[[0, 1], [255, 255]]])
    assert float(segmentation_loss(logits, masks)) == pytest.approx(math.log(2))  # uniform over 2 classes
    none = segmentation_loss(logits, torch.full((1, 2, 2), 255))
    none.backward()
    assert float(none) == 0.0 and logits.grad is not None


@pytest.fixture(scope="module")
def seg_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("segdata")
    paths = make_synthetic_segmentation(root, num_train=0, num_val=4, image_size=((60, 90), (50, 80)), seed=2)
    data = read_segmentation(None, paths["root"], split="val")
    torch.manual_seed(0)
    model = create_model("d0", detect=False, min_level=2, seg_head="p2", seg_classes=5,
                         seg_class_names=data.class_names, **TINY_SEG).eval()
    with torch.no_grad():  # random, informative logits
        model.seg_net.classifier.weight.normal_(0, 1.0)
        model.seg_net.classifier.bias.copy_(torch.tensor([1.0, 0.0, 0.0, -0.5, 0.5]))
    return data, model, root


def test_evaluate_and_score_saved_masks_agree(seg_setup, tmp_path):
    data, model, _ = seg_setup
    metrics = evaluate_segmentation(model, data, batch_size=3, save_dir=tmp_path / "pred")
    assert set(metrics) >= {"mIoU", "pixel_accuracy", "mean_accuracy", "fwIoU", "per_class"}
    assert metrics["pixels"] == sum(int((s.load_mask() != 255).sum()) for s in data.samples)
    again = score_mask_folder(tmp_path / "pred", data)
    assert again == metrics
    masks = Segmenter(model, batch_size=2)([load_image(s.path) for s in data.samples])
    assert [m.shape for m in masks] == [(s.height, s.width) for s in data.samples]
    assert sum(pixel_counts(masks[0], data.class_names).values()) == masks[0].size
    # an image listed in a subfolder: its mask may sit at the same relative path (predict --masks on a tree)
    import dataclasses

    sample = data.samples[1]
    flat = tmp_path / "pred" / f"{sample.file_name[:-4]}.png"
    nested = tmp_path / "pred" / "part1" / flat.name
    nested.parent.mkdir()
    flat.rename(nested)
    data.samples[1] = dataclasses.replace(sample, file_name=f"part1/{sample.file_name}")
    try:
        assert score_mask_folder(tmp_path / "pred", data) == metrics
    finally:
        data.samples[1] = sample
    with pytest.raises(DataError, match="no prediction for"):
        score_mask_folder(tmp_path / "pred", data)


def test_checkpoint_keeps_seg_class_names_and_new_class_count(seg_setup, tmp_path):
    data, model, _ = seg_setup
    path = save_checkpoint(tmp_path / "seg.pt", model)
    loaded = create_model(None, weights=path)
    assert loaded.seg_class_names == data.class_names and loaded.config.seg_classes == 5
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model(x))
    fine_tune = create_model(None, weights=path, seg_class_names=["background", "thing"])
    assert fine_tune.config.seg_classes == 2 and fine_tune.seg_net.classifier.out_channels == 2
    assert torch.equal(fine_tune.seg_net.convs[0].pw.weight, model.seg_net.convs[0].pw.weight)


def test_onnx_argmax_export_runs_without_torch(seg_setup, tmp_path):
    from efficientdet.inference.seg_export import export_seg_onnx

    data, model, _ = seg_setup
    onnx_path = export_seg_onnx(model, tmp_path / "seg.onnx", dynamic_batch=True)
    files = [str(s.path) for s in data.samples]
    code = (
        "import sys, json, numpy as np\n"
        "sys.modules['torch'] = None  # any torch import fails\n"
        "from efficientdet.deploy import OnnxSegmenter\n"
        f"seg = OnnxSegmenter({str(onnx_path)!r}, threads=1)\n"
        f"masks = seg({files!r}, batch_size=3)\n"
        f"np.save({str(tmp_path / 'm.npy')!r}, np.stack([np.pad(m, ((0, 200 - m.shape[0]), (0, 200 - m.shape[1])))"
        " for m in masks]))\n"
        "print(json.dumps({'names': seg.class_names, 'shapes': [list(m.shape) for m in masks]}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    assert info["names"] == data.class_names
    assert info["shapes"] == [[s.height, s.width] for s in data.samples]
    # on the canvas the graph's arg-max equals PyTorch's (the fused graph rounds differently: near-ties aside)
    from efficientdet.inference.segmenter import seg_logits
    from efficientdet.preprocess import preprocess_batch

    pils = [load_image(f) for f in files]
    batch, _ = preprocess_batch(pils, 128, model.config.mean, model.config.std, channels_last=False)
    import onnxruntime as ort

    onnx_labels = ort.InferenceSession(str(onnx_path)).run(None, {"images": batch.numpy()})[0]
    with torch.no_grad():
        torch_labels = seg_logits(model(batch)).argmax(1).numpy()
    assert onnx_labels.dtype == np.uint8 and (onnx_labels == torch_labels).mean() > 0.999
    # the torch-free masks are the canvas labels cropped and resized (nearest) to each original size
    from efficientdet.masks import canvas_labels_to_original

    got = np.load(tmp_path / "m.npy")
    for i, (pil, s) in enumerate(zip(pils, data.samples)):
        scale = min(128 / pil.height, 128 / pil.width)
        want = canvas_labels_to_original(onnx_labels[i], pil.width, pil.height, scale)
        np.testing.assert_array_equal(got[i, : s.height, : s.width], want)


def test_benchmark_has_segmentation_rows():
    from efficientdet.benchmark import bench_model

    row = bench_model("d0_seg", image_size=128, runs=1, warmup=1, batch_size=2)
    assert row.model == "efficientdet_d0_seg" and row.image_size == 128 and row.params > 3_000_000
    assert row.latency_ms >= row.network_ms > 0 and row.throughput_ips > 0


def test_onnx_argmax_export_of_the_decoder_rows(tmp_path):
    """``d0_seg`` (the official decoder over P3-P7, transposed convolutions) exports with its arg-max and
    gives PyTorch's labels in onnxruntime."""
    from efficientdet.inference.seg_export import export_seg_onnx
    from efficientdet.inference.segmenter import seg_logits

    torch.manual_seed(0)
    model = create_model("d0_seg", seg_classes=4, image_size=128, fpn_channels=16, fpn_layers=1).eval()
    assert model.config.seg_head == "decoder" and model.config.min_level == 3
    with torch.no_grad():  # spread the random classes: every one wins somewhere
        for p in model.seg_net.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    onnx_path = export_seg_onnx(model, tmp_path / "dec.onnx", dynamic_batch=True)
    import onnxruntime as ort

    batch = torch.randn(2, 3, 128, 128)
    got = ort.InferenceSession(str(onnx_path)).run(None, {"images": batch.numpy()})[0]
    with torch.no_grad():
        want = seg_logits(model(batch)).argmax(1).numpy()
    assert got.shape == (2, 128, 128) and got.dtype == np.uint8
    assert len(np.unique(want)) >= 2 and (got == want).mean() > 0.999


def test_detector_on_a_segmentation_only_model_returns_masks(tmp_path):
    """``Detector`` takes a segmentation-only checkpoint too: no boxes, ``.mask`` at the original size equal to
    the Segmenter's; ``backend="auto"`` runs it in PyTorch; an explicit onnxruntime backend says what to use."""
    from efficientdet import ConfigError, Detector

    torch.manual_seed(0)
    model = create_model("d0_seg", seg_classes=4, **TINY_SEG).eval()
    with torch.no_grad():  # spread the random classes: every one wins somewhere
        for p in model.seg_net.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    weights = save_checkpoint(tmp_path / "seg.pt", model)
    image = (np.random.default_rng(0).random((77, 150, 3)) * 255).astype(np.uint8)
    want = Segmenter(model)([image])[0]
    assert len(np.unique(want)) >= 2
    for det in (Detector(model)(image)[0], Detector(weights=weights, backend="auto")(image)[0]):
        assert len(det) == 0 and det.boxes.shape == (0, 4)
        assert det.mask.shape == (77, 150) and det.mask.dtype == np.uint8
        assert (det.mask == want).mean() > 0.999
    with pytest.raises(ConfigError, match="OnnxSegmenter"):
        Detector(weights=weights, backend="onnxruntime")
