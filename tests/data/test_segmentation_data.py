"""Segmentation data: VOC layout, mask folders, COCO rasterisation, bad masks, transforms, synthetic set."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from efficientdet.data.segmentation import (
    VOC_CLASSES,
    SegmentationDataset,
    collate_segmentation,
    read_mask,
    read_segmentation,
)
from efficientdet.data.synth_seg import make_synthetic_segmentation
from efficientdet.data.transforms import TrainTransform
from efficientdet.errors import DataError
from efficientdet.masks import save_palette_mask

SMALL = ((48, 64), (40, 56))


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_synthetic_voc_layout_is_deterministic_and_readable(tmp_path):
    a = make_synthetic_segmentation(tmp_path / "a", num_train=6, num_val=3, image_size=SMALL, seed=3)
    make_synthetic_segmentation(tmp_path / "b", num_train=6, num_val=3, image_size=SMALL, seed=3)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    train = read_segmentation(None, a["root"], split="train")
    val = read_segmentation(None, a["root"], split="val")
    assert (len(train), len(val)) == (6, 3) and train.report.ok
    assert train.class_names == ["background", "circle", "square", "triangle", "cross"]
    assert {s.file_name for s in val.samples} == {"00006.jpg", "00007.jpg", "00008.jpg"}
    png = Image.open(train.samples[0].mask_path)
    assert png.mode == "P"  # VOC palette; the pixel values are the class indices
    mask = train.samples[0].load_mask()
    assert mask.shape == (train.samples[0].height, train.samples[0].width)
    assert set(np.unique(mask)) <= {0, 1, 2, 3, 4, 255} and (mask == 255).any() and (mask > 0).any()
    # the mask folder form (VOC's SegmentationClass/) reads all 9 pairs, names from the root's labels.txt
    both = read_segmentation(a["images"], a["masks"])
    assert len(both) == 9 and both.class_names == train.class_names


def _pair(images: Path, masks: Path, stem: str, size: tuple[int, int], mask: np.ndarray | None) -> None:
    Image.new("RGB", size, (90, 120, 150)).save(images / f"{stem}.jpg")
    if mask is not None:
        Image.fromarray(mask.astype(np.uint8), "L").save(masks / f"{stem}.png")


def test_bad_masks_are_counted_or_raised(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    good = np.zeros((20, 30), np.uint8)
    good[5:10, 5:10] = 2
    good[0, 0] = 255
    _pair(images, masks, "good", (30, 20), good)
    _pair(images, masks, "wrong_size", (30, 20), np.zeros((21, 30)))
    _pair(images, masks, "bad_value", (30, 20), np.full((20, 30), 3))
    _pair(images, masks, "no_mask", (30, 20), None)
    Image.new("RGB", (30, 20)).save(images / "grey_rgb.jpg")  # R = G = B = class: read as the same mask
    Image.fromarray(np.repeat(good[..., None], 3, -1), "RGB").save(masks / "grey_rgb.png")
    Image.new("RGB", (30, 20)).save(images / "colour.jpg")
    Image.new("RGB", (30, 20), (1, 2, 3)).save(masks / "colour.png")
    Image.new("RGB", (30, 20)).save(images / "broken.jpg")
    (masks / "broken.png").write_bytes(b"not a png")
    Image.fromarray(good, "L").save(masks / "orphan.png")
    (tmp_path / "names").mkdir()
    names = tmp_path / "names" / "labels.txt"  # not next to the masks: read only when passed
    names.write_text("background\ncat\ndog\n")

    data = read_segmentation(images, masks, names=names)
    assert [s.file_name for s in data.samples] == ["good.jpg", "grey_rgb.jpg"]
    assert data.class_names == ["background", "cat", "dog"]
    np.testing.assert_array_equal(data.samples[1].load_mask(), good)
    r = data.report
    assert (r.count("mask_size_mismatch"), r.count("mask_bad_values"), r.count("unreadable_mask"),
            r.count("orphan_mask"), r.count("no_mask")) == (1, 1, 2, 1, 1)
    assert "wrong_size.png is 30x21 but the image is 30x20" in r.summary()
    assert "has value 3 but there are 3 classes" in r.summary()
    assert any("is a RGB image; masks must be single-channel" in m for m in r.messages["unreadable_mask"])
    np.testing.assert_array_equal(data.samples[0].load_mask(), good)

    with pytest.raises(DataError, match="orphan.png: no image orphan.*strict mode"):
        read_segmentation(images, masks, names=names, strict=True)
    (masks / "orphan.png").unlink()
    with pytest.raises(DataError, match="bad_value.png has value 3.*strict mode"):
        read_segmentation(images, masks, names=names, strict=True)
    with pytest.raises(DataError, match="cannot read the mask"):
        read_mask(masks / "broken.png")
    # without names the class count comes from the masks: 0..3 -> 4 classes, nothing rejected for values
    inferred = read_segmentation(images, masks)
    assert inferred.class_names == ["background", "class1", "class2", "class3"] and len(inferred) == 3


def test_voc_root_split_and_errors(tmp_path):
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for stem, cls in (("2007_000032", 1), ("2007_000039", 20)):
        Image.new("RGB", (40, 30)).save(root / "JPEGImages" / f"{stem}.jpg")
        m = np.zeros((30, 40), np.uint8)
        m[10:20, 10:30] = cls
        m[9, 10:30] = 255
        save_palette_mask(m, root / "SegmentationClass" / f"{stem}.png")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000032\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000039\n\n")
    val = read_segmentation(None, root, split="val")
    assert val.class_names == list(VOC_CLASSES) and len(val) == 1  # no labels.txt: the 21 VOC names
    assert set(np.unique(val.samples[0].load_mask())) == {0, 20, 255}
    with pytest.raises(DataError, match="test.txt: split list not found"):
        read_segmentation(None, root, split="test")
    with pytest.raises(DataError, match="annotations not found"):
        read_segmentation(tmp_path, tmp_path / "nope")


def test_coco_polygons_rle_and_crowd_rasterised(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (40, 30)).save(images / "a.png")
    rle_mask = np.zeros((30, 40), np.uint8, order="F")
    rle_mask[2:6, 30:38] = 1
    rle = mask_utils.encode(np.asfortranarray(rle_mask))
    rle["counts"] = rle["counts"].decode()
    doc = {
        "images": [{"id": 5, "file_name": "a.png", "width": 40, "height": 30}],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],  # sorted by id: cat=1, dog=2
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 3, "bbox": [4, 4, 16, 16], "area": 256, "iscrowd": 0,
             "segmentation": [[4, 4, 20, 4, 20, 20, 4, 20]]},
            {"id": 2, "image_id": 5, "category_id": 7, "bbox": [30, 2, 8, 4], "area": 32, "iscrowd": 0,
             "segmentation": rle},
            {"id": 3, "image_id": 5, "category_id": 7, "bbox": [0, 24, 40, 6], "area": 240, "iscrowd": 1,
             "segmentation": {"size": [30, 40], "counts": mask_utils.encode(np.asfortranarray(
                 np.pad(np.ones((6, 40), np.uint8), ((24, 0), (0, 0)))))["counts"].decode()}},
            {"id": 4, "image_id": 5, "category_id": 3, "bbox": [1, 1, 2, 2], "iscrowd": 0},
        ],
    }
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(doc))
    data = read_segmentation(images, ann)
    assert data.class_names == ["background", "cat", "dog"] and data.report.count("no_segmentation") == 1
    mask = data.samples[0].load_mask()
    assert (mask[6:18, 6:18] == 1).all()  # polygon interior
    np.testing.assert_array_equal(mask[2:6, 30:38], 2)  # RLE object, exact
    assert (mask[24:] == 255).all()  # crowd region ignored
    assert mask[0, 39] == 0 and mask.shape == (30, 40)
    # the same file also gives the detection view (joint training): boxes, labels, crowd flags
    assert data.detection is not None and data.detection.class_names == ["cat", "dog"]
    target = SegmentationDataset(data, TrainTransform(64)).target(0)
    assert len(target["boxes"]) == 4 and target["labels"].tolist() == [0, 1, 1, 0]
    assert target["iscrowd"].tolist() == [False, False, True, False] and target["mask"].shape == (30, 40)


def test_coco_segmentations_that_cannot_be_rasterised_are_counted_and_named(tmp_path):
    """An RLE encoded at another size, odd / non-numeric polygons and bad RLE counts are skipped, counted and
    named (annotation id, field, fix); the good object is still painted."""
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (40, 30)).save(images / "a.png")
    wrong = mask_utils.encode(np.asfortranarray(np.ones((37, 40), np.uint8)))  # 37 rows, the image has 30
    wrong["counts"] = wrong["counts"].decode()
    bad = [wrong, [[1, 1, 5, 1, 5]], [[1, 1, 5, 1, "x", 5]], {"size": [30, 40], "counts": [3, -1]},
           {"size": [30, 40], "counts": [3, 5]}, {"size": 30, "counts": "abc"}]
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
           "categories": [{"id": 3, "name": "cat"}],
           "annotations": [{"id": 10 + i, "image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 4], "iscrowd": 0,
                            "segmentation": seg} for i, seg in enumerate(bad)]
           + [{"id": 99, "image_id": 1, "category_id": 3, "bbox": [4, 4, 16, 16], "iscrowd": 0,
               "segmentation": [[4, 4, 20, 4, 20, 20, 4, 20]]}]}
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(doc))
    data = read_segmentation(images, ann)
    assert data.report.count("no_segmentation") == len(bad)
    text = data.report.summary()
    assert "annotation id 10: 'segmentation.size' is [37, 40] but the image is [height, width] = [30, 40]" in text
    mask = data.samples[0].load_mask()  # rasterising raises nothing; only the good polygon is painted
    assert (mask[6:18, 6:18] == 1).all() and (mask == 1).sum() == (mask != 0).sum()
    with pytest.raises(DataError, match="annotation id 10"):
        read_segmentation(images, ann, strict=True)


def test_train_transform_moves_mask_with_image(tmp_path):
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, :20] = (255, 0, 0)  # red left third
    mask = np.zeros((40, 60), np.uint8)
    mask[:, :20] = 1
    mask[0, :] = 255
    t = TrainTransform(64, scale_range=(1.0, 1.0), hflip=1.0)  # long side 60 -> 64, always flipped
    image, target = t(Image.fromarray(img), {"boxes": np.zeros((0, 4)), "mask": mask}, generator=torch.Generator())
    m = target["mask"]
    assert m.shape == (64, 64) and m.dtype == torch.uint8
    assert set(torch.unique(m).tolist()) == {0, 1, 255}  # nearest: no new values
    h = int(40 * 64 / 60)  # resized content height; below it is 255 padding
    assert (m[h:] == 255).all()
    assert (m[5:h, -10:] == 1).all() and (m[5:h, :10] == 0).all()  # flipped: class 1 on the right
    red = image[0] > image[1] + 1  # normalised red channel well above green where the image is red
    assert (red[5:h, -10:]).all() and not red[5:h, :10].any()


def test_dataset_collate_and_scale_crop(tmp_path):
    paths = make_synthetic_segmentation(tmp_path, num_train=3, num_val=0, image_size=SMALL, seed=1)
    data = read_segmentation(None, paths["root"], split="train")
    ds = SegmentationDataset(data, TrainTransform(32, scale_range=(1.5, 2.0)))
    images, masks, targets = collate_segmentation([ds[(i, 10 + i)] for i in range(3)])
    assert images.shape == (3, 3, 32, 32) and masks.shape == (3, 32, 32) and masks.dtype == torch.int64
    assert set(torch.unique(masks).tolist()) <= {0, 1, 2, 3, 4, 255}
    again = collate_segmentation([ds[(i, 10 + i)] for i in range(3)])
    assert torch.equal(again[1], masks)  # seeded: the same crops
    def as_is(image, target):  # no resizing: masks keep their own sizes and are collated as a list
        return torch.zeros(3, 8, 8), {**target, "mask": torch.as_tensor(target["mask"])}

    _, eval_masks, _ = collate_segmentation([SegmentationDataset(data, as_is)[i] for i in range(3)])
    assert [tuple(m.shape) for m in eval_masks] == [(s.height, s.width) for s in data.samples]


def test_synth_command_writes_voc_layout(tmp_path, capsys):
    from efficientdet.cli import main

    assert main(["synth", str(tmp_path / "s"), "--task", "segment", "--num-train", "2", "--num-val", "1"]) == 0
    assert "Pascal VOC layout" in capsys.readouterr().out
    root = tmp_path / "s"
    assert (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split() == ["00000", "00001"]
    assert (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split() == ["00002"]
    assert sorted(p.name for p in (root / "SegmentationClass").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert (root / "labels.txt").read_text().splitlines()[0] == "background"
