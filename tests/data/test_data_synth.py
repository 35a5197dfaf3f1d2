"""Synthetic shapes data set: determinism, valid boxes, exact tight boxes, COCO read-back."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from efficientdet.data import make_synthetic_dataset, read_coco
from efficientdet.data.synth import CATEGORIES
from efficientdet.errors import ConfigError
from efficientdet.images import load_image

SIZE = ((48, 72), (40, 64))


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_for_a_seed(tmp_path):
    kw = {"num_train": 6, "num_val": 3, "image_size": SIZE, "min_object_size": 6}
    make_synthetic_dataset(tmp_path / "a", seed=5, **kw)
    make_synthetic_dataset(tmp_path / "b", seed=5, **kw)
    make_synthetic_dataset(tmp_path / "c", seed=6, **kw)
    ha, hb, hc = _hashes(tmp_path / "a"), _hashes(tmp_path / "b"), _hashes(tmp_path / "c")
    assert ha == hb and len(ha) == 6 + 3 + 2
    assert ha != hc
    # the validation split does not depend on the number of training images
    make_synthetic_dataset(tmp_path / "d", seed=5, **{**kw, "num_train": 2})
    hd = _hashes(tmp_path / "d")
    assert {k: v for k, v in hd.items() if k.startswith("val/")} == {k: v for k, v in ha.items()
                                                                      if k.startswith("val/")}
    assert "train/images/00005.jpg" not in hd  # stale files of a larger earlier run are removed


def test_boxes_valid_and_read_back_clean(tmp_path):
    paths = make_synthetic_dataset(tmp_path, num_train=12, num_val=2, image_size=SIZE, seed=1,
                                   min_object_size=6, empty_fraction=0.2)
    doc = json.loads(paths["train_annotations"].read_text())
    assert [c["id"] for c in doc["categories"]] == [1, 3, 7, 12]
    sizes = {(im["width"], im["height"]) for im in doc["images"]}
    assert any(w != h for w, h in sizes)
    data = read_coco(paths["train_images"], paths["train_annotations"], strict=True)
    assert data.report.ok and len(data) == 12
    assert data.class_names == [n for n, _ in CATEGORIES] and data.category_ids == [1, 3, 7, 12]
    assert data.num_boxes > 12
    for s in data.samples:
        if len(s.boxes):
            assert (s.boxes[:, 0] >= 0).all() and (s.boxes[:, 2] <= s.width).all()
            assert (s.boxes[:, 1] >= 0).all() and (s.boxes[:, 3] <= s.height).all()
            assert ((s.boxes[:, 2:] - s.boxes[:, :2]) >= 1).all()
    assert {int(label) for s in data.samples for label in s.labels} <= {0, 1, 2, 3}
    assert any(len(s.boxes) == 0 for s in data.samples)
    for ann in doc["annotations"]:
        assert ann["area"] <= ann["bbox"][2] * ann["bbox"][3]


def test_tight_box_on_a_single_object(tmp_path):
    # one object on a plain-ish background: the box edges must touch the shape's colour
    paths = make_synthetic_dataset(tmp_path, num_train=4, num_val=0, image_size=((64, 64), (64, 64)), seed=2,
                                   max_objects=1, min_object_size=16, empty_fraction=0.0, png_every=1)
    data = read_coco(paths["train_images"], paths["train_annotations"])
    for s in data.samples:
        assert len(s.boxes) == 1
        x1, y1, x2, y2 = (int(v) for v in s.boxes[0])
        arr = np.asarray(load_image(s.path)).astype(float)
        centre = arr[(y1 + y2) // 2, (x1 + x2) // 2]  # every shape covers its box centre

        def hits(pixels: np.ndarray, centre: np.ndarray = centre) -> int:
            return int((np.abs(pixels - centre).max(axis=-1) < 40).sum())

        assert x1 > 0 and y1 > 0 and x2 < 64 and y2 < 64  # the seed keeps the object off the border
        # each edge row/column inside the box touches the shape; the one just outside does not
        assert hits(arr[y1, x1:x2]) > 0 and hits(arr[y2 - 1, x1:x2]) > 0
        assert hits(arr[y1:y2, x1]) > 0 and hits(arr[y1:y2, x2 - 1]) > 0
        assert hits(arr[y1 - 1, x1:x2]) <= 1 and hits(arr[y2, x1:x2]) <= 1
        assert hits(arr[y1:y2, x1 - 1]) <= 1 and hits(arr[y1:y2, x2]) <= 1


def test_argument_checks(tmp_path):
    with pytest.raises(ConfigError):
        make_synthetic_dataset(tmp_path, num_train=-1)
    with pytest.raises(ConfigError):
        make_synthetic_dataset(tmp_path, image_size=((10, 5), (40, 50)))
