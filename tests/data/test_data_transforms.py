"""Train/eval transforms, DetectionDataset, collate and the seeded loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from efficientdet.data import (
    DetectionDataset,
    TrainTransform,
    collate,
    read_coco,
)
from efficientdet.errors import ConfigError
from efficientdet.preprocess import IMAGENET_MEAN, IMAGENET_STD, fill_color

MEAN, STD = IMAGENET_MEAN, IMAGENET_STD


def _denorm(t: torch.Tensor) -> np.ndarray:
    """(3, H, W) normalised -> (H, W, 3) uint8-valued float array."""
    m = torch.tensor(MEAN).view(3, 1, 1) * 255
    s = torch.tensor(STD).view(3, 1, 1) * 255
    return (t * s + m).permute(1, 2, 0).round().numpy()


def _target(boxes, labels=None, crowd=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(boxes)
    return {
        "boxes": boxes,
        "labels": np.asarray(labels if labels is not None else np.arange(n), np.int64),
        "iscrowd": np.asarray(crowd if crowd is not None else np.zeros(n), bool),
        "image_id": 7,
    }


def test_hflip_maps_boxes_exactly():
    arr = np.zeros((32, 64, 3), np.uint8)
    arr[5:15, 10:20] = (255, 0, 0)
    img = Image.fromarray(arr)
    flip = TrainTransform(64, MEAN, STD, scale_range=(1.0, 1.0), hflip=1.0)
    out, t = flip(img, _target([[10, 5, 20, 15], [0, 0, 64, 32]], [3, 4]))
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    np.testing.assert_allclose(t["boxes"].numpy(), [[44, 5, 54, 15], [0, 0, 64, 32]])
    assert t["labels"].tolist() == [3, 4] and t["scale"] == 1.0 and t["orig_size"] == (32, 64)
    pix = _denorm(out)
    assert tuple(pix[10, 50]) == (255, 0, 0) and tuple(pix[10, 15]) != (255, 0, 0)
    # rows 32.. are padding with the mean colour
    assert tuple(pix[40, 5]) == fill_color(MEAN) and tuple(pix[63, 63]) == fill_color(MEAN)
    keep = TrainTransform(64, MEAN, STD, scale_range=(1.0, 1.0), hflip=0.0)
    _, t2 = keep(img, _target([[10, 5, 20, 15]]))
    np.testing.assert_allclose(t2["boxes"].numpy(), [[10, 5, 20, 15]])


def test_scale_jitter_resizes_boxes():
    img = Image.new("RGB", (80, 40))
    tr = TrainTransform(64, MEAN, STD, scale_range=(0.5, 0.5), hflip=0.0)  # long side -> 32
    out, t = tr(img, _target([[8, 4, 40, 20]]))
    assert t["scale"] == pytest.approx(0.4)
    np.testing.assert_allclose(t["boxes"].numpy(), [[3.2, 1.6, 16, 8]], atol=1e-5)
    pix = _denorm(out)
    assert tuple(pix[20, 20]) == fill_color(MEAN)  # below the 32x16 image: padding
    assert tuple(pix[5, 5]) == (0, 0, 0)


def test_train_transform_boxes_inside_and_consistent():
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8))
    xy = rng.uniform(0, 60, (12, 2))
    wh = rng.uniform(1, 30, (12, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [90, 60])], axis=1)
    crowd = np.arange(12) % 3 == 0
    tr = TrainTransform(64, MEAN, STD, color_jitter=0.3)
    seen_counts = set()
    for seed in range(25):
        g = torch.Generator().manual_seed(seed)
        out, t = tr(img, _target(boxes, np.arange(12) + 100, crowd), generator=g)
        b = t["boxes"]
        assert out.shape == (3, 64, 64) and torch.isfinite(out).all()
        assert b.shape[1] == 4 and len(b) == len(t["labels"]) == len(t["iscrowd"])
        assert (b >= 0).all() and (b <= 64).all()
        assert ((b[:, 2] - b[:, 0]) >= 1).all() and ((b[:, 3] - b[:, 1]) >= 1).all()
        idx = (t["labels"] - 100).numpy()
        assert (np.diff(idx) > 0).all()  # order kept, each label stays with its own box
        assert t["iscrowd"].tolist() == crowd[idx].tolist()
        seen_counts.add(len(b))
        # same generator seed -> identical output
        out_again, t_again = tr(img, _target(boxes, np.arange(12) + 100, crowd),
                                generator=torch.Generator().manual_seed(seed))
        assert torch.equal(out, out_again) and torch.equal(b, t_again["boxes"])
    assert len(seen_counts) > 1  # the random crop sometimes drops boxes


def test_crop_follows_boxes_and_drops_mostly_cropped():
    # a horizontal ramp (red = column) reveals the crop offset; scale 1, S=100, image 200x10
    arr = np.zeros((10, 200, 3), np.uint8)
    arr[..., 0] = np.arange(200, dtype=np.uint8)[None]
    img = Image.fromarray(arr)
    boxes = np.array([[x, 0, x + 10, 10] for x in range(0, 200, 7)], np.float32)
    tr = TrainTransform(100, MEAN, STD, scale_range=(2.0, 2.0), hflip=0.0, min_visibility=0.35)
    lefts = set()
    for seed in range(12):
        out, t = tr(img, _target(boxes), generator=torch.Generator().manual_seed(seed))
        left = int(_denorm(out)[0, 0, 0])
        lefts.add(left)
        expected = []
        for i, (x1, _, x2, _) in enumerate(boxes):
            vis = min(x2, left + 100) - max(x1, left)
            if vis >= 3.5:  # >= 1 px and >= 35% of 10 px
                expected.append(i)
        assert t["labels"].tolist() == expected
        kept = boxes[expected] - np.array([left, 0, left, 0], np.float32)
        np.testing.assert_allclose(t["boxes"].numpy(), np.clip(kept, 0, 100), atol=1e-4)
    assert len(lefts) > 3


def test_degenerate_boxes_dropped_with_labels():
    img = Image.new("RGB", (200, 200))
    tr = TrainTransform(64, MEAN, STD, scale_range=(0.1, 0.1), hflip=0.0)  # 200 -> 6 px
    out, t = tr(img, _target([[0, 0, 5, 5], [10, 10, 190, 190], [50, 50, 52, 150]], [1, 2, 3], [True, False, True]))
    assert t["labels"].tolist() == [2] and t["iscrowd"].tolist() == [False]
    np.testing.assert_allclose(t["boxes"].numpy(), [[0.3, 0.3, 5.7, 5.7]], atol=1e-5)
    _, t0 = tr(img, _target(np.zeros((0, 4))))
    assert t0["boxes"].shape == (0, 4) and t0["labels"].shape == (0,)


def test_transform_argument_checks():
    with pytest.raises(ConfigError):
        TrainTransform(0)
    with pytest.raises(ConfigError):
        TrainTransform(64, scale_range=(2.0, 1.0))
    with pytest.raises(ConfigError):
        TrainTransform(64, hflip=1.5)


# ---------------------------------------------------------------------------------------------- dataset


def _coco_set(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(3)
    doc = {"images": [], "annotations": [], "categories": [{"id": 5, "name": "thing"}]}
    for i in range(4):
        w, h = 40 + 8 * i, 32
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / f"{i}.png")
        doc["images"].append({"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h})
        doc["annotations"].append({"id": i + 1, "image_id": i + 1, "category_id": 5, "bbox": [2, 3, 20, 20]})
    # an EXIF-rotated JPEG: stored 32x48, displayed 48x32
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (32, 48), (200, 10, 10)).save(images / "rot.jpg", exif=exif.tobytes())
    doc["images"].append({"id": 9, "file_name": "rot.jpg", "width": 48, "height": 32})
    doc["annotations"].append({"id": 9, "image_id": 9, "category_id": 5, "bbox": [40, 0, 8, 32]})
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    return tmp_path / "ann.json"


def test_dataset_eval_and_collate(tmp_path):
    data = read_coco(tmp_path / "images", _coco_set(tmp_path), strict=True)
    ds = DetectionDataset(data, TrainTransform(32, MEAN, STD, scale_range=(1.0, 1.0), hflip=0.0))
    assert len(ds) == 5
    img, t = ds[4]  # the rotated one: 48x32 after EXIF, scale 32/48
    assert img.shape == (3, 32, 32) and t["orig_size"] == (32, 48) and t["scale"] == pytest.approx(2 / 3)
    np.testing.assert_allclose(t["boxes"].numpy(), [[40 * 2 / 3, 0, 32, 32 * 2 / 3]], atol=1e-4)
    assert t["image_id"] == 9 and t["labels"].tolist() == [0]
    images, targets = collate([ds[0], ds[1], ds[4]])
    assert images.shape == (3, 3, 32, 32) and [x["image_id"] for x in targets] == [1, 2, 9]


def make_loader(ds, batch_size, shuffle=True, num_workers=0, seed=0):
    """The training loader's sampling: EpochBatchSampler's (index, seed) batches of epoch 0."""
    from torch.utils.data import DataLoader

    from efficientdet.data import collate
    from efficientdet.train.distributed import EpochBatchSampler

    sampler = EpochBatchSampler(len(ds), batch_size, seed)
    sampler.set_epoch(0)
    return DataLoader(ds, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate)


def test_loader_reproducible_across_workers(tmp_path):
    data = read_coco(tmp_path / "images", _coco_set(tmp_path))
    ds = DetectionDataset(data, TrainTransform(32, MEAN, STD, color_jitter=0.2))

    def run(workers: int, seed: int):
        loader = make_loader(ds, batch_size=2, shuffle=True, num_workers=workers, seed=seed)
        return [(imgs, [t["image_id"] for t in ts], [t["boxes"] for t in ts]) for imgs, ts in loader]

    a, b, c = run(0, 123), run(2, 123), run(0, 7)
    assert len(a) == 2 and a[0][0].shape == (2, 3, 32, 32)  # the incomplete last batch is dropped
    for (ia, ida, ba), (ib, idb, bb) in zip(a, b):
        assert ida == idb and torch.equal(ia, ib) and all(torch.equal(x, y) for x, y in zip(ba, bb))
    assert [x[1] for x in a] != [x[1] for x in c] or not all(torch.equal(x[0], y[0]) for x, y in zip(a, c))
    ids = [i for _, batch_ids, _ in a for i in batch_ids]
    assert len(set(ids)) == 4 and set(ids) <= {1, 2, 3, 4, 9}


def test_loader_seeds_plain_transforms_without_touching_global_rng(tmp_path):
    data = read_coco(tmp_path / "images", _coco_set(tmp_path))

    def plain(image, target):  # uses torch's global RNG, takes no generator
        return torch.rand(3, 2, 2), target

    ds = DetectionDataset(data, plain)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = [imgs for imgs, _ in make_loader(ds, batch_size=5, shuffle=True, seed=1)]
    b = [imgs for imgs, _ in make_loader(ds, batch_size=5, shuffle=True, seed=1)]
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0][0], a[0][1])
    assert torch.equal(torch.get_rng_state(), state)
