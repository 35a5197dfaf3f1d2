"""Segmentation and joint training end to end on tiny models, through the command line: run folder, plots,
resume, then eval / predict / export of the trained weights."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from efficientdet.cli import main
from efficientdet.train.run_dir import read_metrics
from efficientdet.weights import load_checkpoint

TINY_SEG = ["--model-override", "fpn_channels=16", "--model-override", "fpn_layers=1",
            "--model-override", "seg_channels=16", "--model-override", "seg_layers=1",
            "--model-override", "backbone_drop_path=0.0"]
COMMON = ["--image-size", "128", "--batch-size", "4", "--lr", "0.01", "--no-amp", "--workers", "0", "--no-progress",
          "--no-tensorboard", "--deterministic"]


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory):
    from efficientdet.data.synth_seg import make_synthetic_segmentation

    root = tmp_path_factory.mktemp("segsynth")
    return make_synthetic_segmentation(root, num_train=8, num_val=4, image_size=((100, 140), (90, 130)), seed=0)


@pytest.fixture(scope="module")
def seg_run(seg_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("segrun") / "run"
    root, images = str(seg_data["root"]), str(seg_data["images"])
    rc = main(["train", "--task", "segment", "--model", "d0_seg", "--train-images", images, "--train-annotations",
               root, "--val-images", images, "--val-annotations", root, "--names", str(seg_data["labels"]),
               "--epochs", "2", "--out", str(out), *COMMON, *TINY_SEG])
    assert rc == 0
    return out


def test_segmentation_run_folder(seg_run, seg_data):
    best = load_checkpoint(seg_run / "weights" / "best.pt")
    assert best.seg_class_names == ["background", "circle", "square", "triangle", "cross"]
    assert best.config["seg_head"] == "decoder" and best.config["detect"] is False and best.config["seg_classes"] == 5
    assert set(best.extra["metrics"]) == {"mIoU", "pixel_accuracy", "mean_accuracy", "fwIoU"}
    rows = read_metrics(seg_run / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1.0, 2.0]
    raw = (seg_run / "metrics.csv").read_text().splitlines()  # counters stay integers when rows are rewritten
    assert [line.split(",")[0] for line in raw[1:]] == ["1", "2"] and raw[1].split(",")[-2] == "0"
    assert all(math.isfinite(r["seg_loss"]) and 0 <= r["mIoU"] <= 1 for r in rows)
    for name in ("loss.png", "miou.png", "val_overlays.png", "train_batch.png"):
        assert (seg_run / name).stat().st_size > 1000, name
    assert not (seg_run / "ap.png").exists() and not (seg_run / "labels.png").exists()  # no boxes
    last = load_checkpoint(seg_run / "weights" / "last.pt")
    assert last.extra["train"]["epoch"] == 2 and last.extra["train"]["step"] == 4


def test_saved_weights_carry_precise_bn_statistics(seg_run, seg_data):
    """last.pt's BatchNorm statistics are those of its own weights on the (un-augmented) training images, not the
    lagging running averages: recomputing them from the saved weights gives the saved values again."""
    import torch

    from efficientdet.factory import create_model
    from efficientdet.train.precise_bn import calibration_loader, recompute_bn_statistics
    from efficientdet.train.seg import read_seg_split

    model = create_model(None, weights=str(seg_run / "weights" / "last.pt")).eval()
    saved = {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))}
    data = read_seg_split(str(seg_data["images"]), str(seg_data["root"]), str(seg_data["labels"]), "train", False,
                          "train", lambda *a: None)
    c = model.config
    loader = calibration_loader(data, 128, 8, c.image_size, c.mean, c.std)
    assert recompute_bn_statistics(model, (x for x, _ in loader)) == len(data) == 8
    again = {k: v for k, v in model.state_dict().items() if k in saved}
    # (after 4 steps at momentum 0.01 the running averages would still be ~96 % their initial 0 / 1)
    bad = {k: float((saved[k] - again[k]).abs().max()) for k in saved
           if not torch.allclose(saved[k], again[k], rtol=1e-3, atol=1e-4)}  # channels-last rounding only
    assert not bad, sorted(bad.items(), key=lambda kv: -kv[1])[:8]


def test_resume_rebuilds_the_segmentation_model(seg_run):
    from efficientdet.train.trainer import train

    result = train(resume=seg_run, runtime={"progress": False})  # already finished: loads the state and stops
    assert result.epochs_completed == 2 and not result.interrupted


def test_eval_predict_export_of_trained_weights(seg_run, seg_data, tmp_path, capsys):
    weights = str(seg_run / "weights" / "best.pt")
    root, images = str(seg_data["root"]), str(seg_data["images"])
    assert main(["eval", "--task", "segment", "--weights", weights, "--images", images, "--annotations", root,
                 "--json", str(tmp_path / "m.json"), "--save-predictions", str(tmp_path / "pred")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) >= {"mIoU", "pixel_accuracy", "mean_accuracy", "fwIoU", "per_class"}
    assert list(metrics["per_class"]) == ["background", "circle", "square", "triangle", "cross"]
    # the saved predictions scored as a folder give the same numbers
    assert main(["eval", "--task", "segment", "--predictions", str(tmp_path / "pred"), "--images", images,
                 "--annotations", root, "--names", str(seg_data["labels"]), "--json", str(tmp_path / "p.json")]) == 0
    assert json.loads((tmp_path / "p.json").read_text()) == metrics

    val = [images + f"/0000{i}.jpg" for i in (8, 9)]
    assert main(["predict", *val, "--weights", weights, "--masks", str(tmp_path / "masks"), "--out",
                 str(tmp_path / "overlays"), "--json", str(tmp_path / "counts.json")]) == 0
    for path in val:
        stem = path.rsplit("/", 1)[1][:-4]
        png = Image.open(tmp_path / "masks" / f"{stem}.png")
        assert png.mode == "P" and png.size == Image.open(path).size
        assert (tmp_path / "overlays" / f"{stem}.png").is_file()
    counts = json.loads((tmp_path / "counts.json").read_text())
    assert [c["file_name"] for c in counts] == ["00008.jpg", "00009.jpg"]
    assert sum(counts[0]["pixels"].values()) == counts[0]["width"] * counts[0]["height"]

    onnx_path = tmp_path / "seg.onnx"
    assert main(["export", "--weights", weights, "--out", str(onnx_path)]) == 0
    assert "OnnxSegmenter" in capsys.readouterr().out
    assert main(["predict", val[0], "--weights", str(onnx_path), "--masks", str(tmp_path / "onnx_masks")]) == 0
    a = np.asarray(Image.open(tmp_path / "onnx_masks" / "00008.png"))
    b = np.asarray(Image.open(tmp_path / "masks" / "00008.png"))
    assert a.shape == b.shape and (a == b).mean() > 0.9  # nearest vs bilinear resize along class borders
    # eval of the exported file (onnxruntime): the same classes and, up to those borders, the same scores
    assert main(["eval", "--task", "segment", "--weights", str(onnx_path), "--images", images, "--annotations", root,
                 "--json", str(tmp_path / "onnx.json")]) == 0
    onnx_metrics = json.loads((tmp_path / "onnx.json").read_text())
    assert list(onnx_metrics["per_class"]) == list(metrics["per_class"])
    assert onnx_metrics["pixels"] == metrics["pixels"]
    assert abs(onnx_metrics["pixel_accuracy"] - metrics["pixel_accuracy"]) < 0.05


def _coco_with_polygons(root, n: int, seed: int) -> tuple[str, str]:
    """Images with 1-2 coloured rectangles; COCO boxes and the same rectangles as polygons."""
    rng = np.random.default_rng(seed)
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    images, anns = [], []
    for i in range(n):
        img = Image.new("RGB", (128, 112), tuple(int(v) for v in rng.integers(0, 80, 3)))
        draw = ImageDraw.Draw(img)
        for k in range(1 + i % 2):
            x, y = int(rng.integers(4, 60)), int(rng.integers(4, 50))
            w, h = int(rng.integers(20, 60)), int(rng.integers(20, 55))
            cat = 1 + (i + k) % 2
            draw.rectangle([x, y, x + w - 1, y + h - 1], fill=(220, 60, 60) if cat == 1 else (60, 220, 60))
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
        img.save(images_dir / f"{i:03d}.png")
        images.append({"id": i + 1, "file_name": f"{i:03d}.png", "width": 128, "height": 112})
    doc = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}]}
    (root / "instances.json").write_text(json.dumps(doc))
    return str(images_dir), str(root / "instances.json")


def test_joint_detection_and_segmentation(tmp_path):
    images, ann = _coco_with_polygons(tmp_path / "coco", 8, 0)
    out = tmp_path / "joint"
    rc = main(["train", "--task", "detect,segment", "--model", "d0", "--train-images", images, "--train-annotations",
               ann, "--val-images", images, "--val-annotations", ann, "--epochs", "1", "--out", str(out), "--no-plots",
               *COMMON, "--model-override", "fpn_channels=16", "--model-override", "fpn_layers=1",
               "--model-override", "head_layers=1"])
    assert rc == 0
    best = load_checkpoint(out / "weights" / "best.pt")
    assert best.config["detect"] is True and best.config["seg_head"] == "decoder"  # the official joint head
    assert best.seg_class_names == ["background", "red", "green"] and best.labels.names == ("red", "green")
    assert set(best.extra["metrics"]) >= {"AP", "AP50", "mIoU", "fwIoU"}
    row = read_metrics(out / "metrics.csv")[0]
    assert math.isfinite(row["cls_loss"]) and math.isfinite(row["seg_loss"])
    from efficientdet import Detector

    (det,) = Detector(weights=str(out / "weights" / "best.pt"), score_threshold=0.0)([images + "/000.png"])
    assert det.mask is not None and det.mask.shape == (112, 128) and det.mask.dtype == np.uint8
    assert det.mask.max() <= 2
    # the command line: boxes and a mask per image (the auto backend stays on PyTorch for the masks)
    assert main(["predict", images + "/000.png", "--weights", str(out / "weights" / "best.pt"), "--masks",
                 str(tmp_path / "m"), "--json", str(tmp_path / "j.json"), "--score-threshold", "0.0"]) == 0
    doc = json.loads((tmp_path / "j.json").read_text())
    assert doc["detections"] and doc["segmentation"][0]["file_name"] == "000.png"
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "m" / "000.png")), det.mask)
    # that file is also eval's input: its boxes are scored against the same images' ground truth
    assert main(["predict", images, "--weights", str(out / "weights" / "best.pt"), "--json",
                 str(tmp_path / "all.json"), "--score-threshold", "0.0", "--masks", str(tmp_path / "m2")]) == 0
    assert main(["eval", "--predictions", str(tmp_path / "all.json"), "--annotations", ann, "--json",
                 str(tmp_path / "ap.json")]) == 0
    scored = json.loads((tmp_path / "ap.json").read_text())
    assert scored["num_detections"] == len(json.loads((tmp_path / "all.json").read_text())["detections"]) > 0


def test_task_errors(seg_data, tmp_path, capsys):
    root, images = str(seg_data["root"]), str(seg_data["images"])
    rc = main(["train", "--task", "detect,segment", "--model", "d0", "--train-images", images, "--train-annotations",
               root, "--epochs", "1", "--out", str(tmp_path / "x"), *COMMON])
    assert rc == 2 and "needs COCO json annotations" in capsys.readouterr().err
    rc = main(["eval", "--task", "segment", "--images", images, "--annotations", root])
    assert rc == 2 and "needs --weights and --images" in capsys.readouterr().err
    rc = main(["train", "--task", "segment", "--model", "d0_seg", "--train-annotations",
               str(seg_data["root"] / "SegmentationClass"), "--epochs", "1", "--out", str(tmp_path / "y"), *COMMON])
    assert rc == 2 and "a mask folder needs the images folder" in capsys.readouterr().err
    # masks named after no image in the folder: a one-line error, not a run (or a score) on nothing
    other = tmp_path / "other_images"
    other.mkdir()
    Image.new("RGB", (40, 30)).save(other / "unrelated.jpg")
    masks = str(seg_data["root"] / "SegmentationClass")
    rc = main(["train", "--task", "segment", "--model", "d0_seg", "--train-images", str(other), "--train-annotations",
               masks, "--epochs", "1", "--out", str(tmp_path / "z"), *COMMON])
    err = capsys.readouterr().err
    assert rc == 2 and "SegmentationClass: no usable image (" in err and f"check that {other} is the folder" in err


def test_voc_root_without_image_folders_and_eval_task_from_the_weights(seg_data, seg_run, tmp_path):
    """A VOC root brings its JPEGImages/: train and eval need no image folder; eval of a segmentation-only
    checkpoint scores masks without --task segment (it used to compute box AP 0 from a model without boxes)."""
    root, images = str(seg_data["root"]), str(seg_data["images"])
    assert main(["train", "--task", "segment", "--model", "d0_seg", "--train-annotations", root, "--val-annotations",
                 root, "--epochs", "1", "--out", str(tmp_path / "run"), *COMMON, *TINY_SEG, "--no-plots"]) == 0
    assert (tmp_path / "run" / "weights" / "best.pt").is_file()
    weights = str(seg_run / "weights" / "best.pt")
    assert main(["eval", "--weights", weights, "--annotations", root, "--json", str(tmp_path / "a.json")]) == 0
    assert main(["eval", "--task", "segment", "--weights", weights, "--images", images, "--annotations", root,
                 "--json", str(tmp_path / "b.json")]) == 0
    a = json.loads((tmp_path / "a.json").read_text())
    assert "mIoU" in a and a == json.loads((tmp_path / "b.json").read_text())


def test_two_processes_match_one_segmentation(seg_data, tmp_path):
    """torchrun (2 CPU processes, gloo) equals one process on the same global batch (as for detection,
    tests/train/test_distributed.py): the segmentation loss is a mean over the global batch's labelled
    pixels, so the averaged gradient is the single-process one (BN frozen, no stochastic depth)."""
    import os
    import socket
    import subprocess
    import sys

    import torch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root, images = str(seg_data["root"]), str(seg_data["images"])
    common = [a for a in COMMON if a != "--deterministic"]

    def args(out):
        return ["train", "--task", "segment", "--model", "d0_seg", "--train-images", images, "--train-annotations",
                root, "--names", str(seg_data["labels"]), "--epochs", "1", "--out", str(out), "--freeze-bn",
                "--no-plots", *common, *TINY_SEG]

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(port), "-m", "efficientdet", *args(tmp_path / "two")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr
    assert main(args(tmp_path / "one")) == 0
    a = load_checkpoint(tmp_path / "two" / "weights" / "last.pt").extra["train"]["model"]
    b = load_checkpoint(tmp_path / "one" / "weights" / "last.pt").extra["train"]["model"]
    moved = differ = 0.0
    for key in b:
        if b[key].is_floating_point():
            # float32 sums in another order (gloo all-reduce): a few 1e-6 apart after 2 steps; see `moved` below
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
            differ = max(differ, (a[key] - b[key]).abs().max().item())
    from efficientdet import create_model

    torch.manual_seed(0)
    init = create_model("d0_seg", image_size=128, seg_classes=5, fpn_channels=16, fpn_layers=1, seg_channels=16,
                        seg_layers=1, backbone_drop_path=0.0).state_dict()
    moved = max((b[k] - init[k]).abs().max().item() for k in b if b[k].is_floating_point())
    assert moved > 1e-3 and differ < moved * 1e-3, (moved, differ)


@pytest.mark.parametrize("dice", [0.0, 1.0])
def test_segmentation_step_loss_is_cross_entropy_plus_dice(seg_data, tmp_path, dice):
    """The step's seg_loss is CE + seg_dice_weight x soft Dice of the same logits (default weight 1)."""
    import torch

    from efficientdet.loss import dice_loss, segmentation_loss
    from efficientdet.train.config import TrainConfig
    from efficientdet.train.step import train_step
    from efficientdet.train.trainer import Trainer

    assert TrainConfig.__dataclass_fields__["seg_dice_weight"].default == 1.0
    root, images = str(seg_data["root"]), str(seg_data["images"])
    cfg = TrainConfig(task="segment", model="efficientdet_d0_seg", train_images=images, train_annotations=root,
                      names=str(seg_data["labels"]), image_size=128, batch_size=4, epochs=1, amp=False, workers=0,
                      progress=False, tensorboard=False, plots=False, out=str(tmp_path / "r"), seg_dice_weight=dice,
                      model_overrides={"fpn_channels": 16, "fpn_layers": 1, "seg_channels": 16, "seg_layers": 1})
    trainer = Trainer(cfg)
    trainer.sampler.set_epoch(0)
    batch, targets = next(iter(trainer.loader))
    masks = torch.stack([t["mask"] for t in targets]).long()
    trainer.set_train_mode()
    torch.manual_seed(0)
    with torch.no_grad():
        logits = trainer.model(batch.contiguous(memory_format=torch.channels_last))
    want = float(segmentation_loss(logits, masks) + dice * dice_loss(logits, masks))
    assert float(dice_loss(logits, masks)) > 0.1  # the term is not negligible
    torch.manual_seed(0)
    got = train_step(trainer.state, trainer.setup, batch, targets)["seg_loss"]
    assert got == pytest.approx(want, rel=1e-4)
