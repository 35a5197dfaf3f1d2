"""COCO reader: id mapping, validation, report counts, strict mode, to_coco round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from efficientdet.data import DetectionData, LoadReport, read_coco, read_dataset
from efficientdet.errors import DataError


def _image(path: Path, w: int, h: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (40, 80, 120)).save(path)


def _write(tmp_path: Path, doc, name: str = "ann.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return p


def _base(tmp_path: Path) -> dict:
    """Three images (one unlabelled), non-contiguous category ids 7, 1, 3 listed out of order."""
    images = tmp_path / "images"
    _image(images / "a.png", 100, 80)
    _image(images / "b.png", 50, 60)
    _image(images / "sub" / "c.png", 30, 30)
    return {
        "images": [
            {"id": 10, "file_name": "a.png", "width": 100, "height": 80},
            {"id": 20, "file_name": "b.png", "width": 50, "height": 60},
            {"id": 30, "file_name": "sub/c.png", "width": 30, "height": 30},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [10, 20, 30, 40], "area": 1000, "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 1, "bbox": [0.5, 1.5, 2.0, 3.0]},
            {"id": 3, "image_id": 20, "category_id": 3, "bbox": [5, 5, 10, 10], "iscrowd": 1},
        ],
        "categories": [{"id": 7, "name": "seven"}, {"id": 1, "name": "one"}, {"id": 3, "name": "three"}],
    }


def test_reads_and_maps_noncontiguous_ids(tmp_path):
    doc = _base(tmp_path)
    data = read_coco(tmp_path / "images", _write(tmp_path, doc))
    assert isinstance(data, DetectionData)
    assert data.category_ids == [1, 3, 7]
    assert data.class_names == ["one", "three", "seven"]
    assert [s.image_id for s in data.samples] == [10, 20, 30]
    a, b, c = data.samples
    np.testing.assert_allclose(a.boxes, [[10, 20, 40, 60], [0.5, 1.5, 2.5, 4.5]])
    assert a.boxes.dtype == np.float32 and a.labels.dtype == np.int64 and a.iscrowd.dtype == bool
    assert a.labels.tolist() == [2, 0]
    assert a.iscrowd.tolist() == [False, False]
    assert b.labels.tolist() == [1] and b.iscrowd.tolist() == [True]
    assert (a.width, a.height, b.width, b.height) == (100, 80, 50, 60)
    assert c.boxes.shape == (0, 4) and c.labels.shape == (0,) and c.file_name == "sub/c.png"
    assert c.path == (tmp_path / "images" / "sub" / "c.png").absolute()
    assert data.report.ok and data.report.total_dropped == 0 and data.report.summary() == ""


def test_clipping_and_drops_are_counted(tmp_path):
    doc = _base(tmp_path)
    doc["annotations"] += [
        {"id": 4, "image_id": 10, "category_id": 1, "bbox": [90, 70, 20, 20]},  # clipped to 100x80
        {"id": 5, "image_id": 10, "category_id": 1, "bbox": [-5, 10, 10, 10]},  # clipped at x=0
        {"id": 6, "image_id": 10, "category_id": 1, "bbox": [10, 10, 0, 5]},  # zero width: dropped
        {"id": 7, "image_id": 10, "category_id": 1, "bbox": [200, 10, 5, 5]},  # outside: dropped
        {"id": 8, "image_id": 10, "category_id": 99, "bbox": [1, 1, 5, 5]},  # unknown category
        {"id": 9, "image_id": 999, "category_id": 1, "bbox": [1, 1, 5, 5]},  # unknown image
        {"id": 17, "image_id": 20, "category_id": 1, "bbox": [1, 1, -3, 5]},  # negative width
        {"id": 18, "image_id": 20, "category_id": 1, "bbox": [1, 1, 3, 5]},  # NaN below
    ]
    text = json.dumps(doc).replace('"bbox": [1, 1, 3, 5]', '"bbox": [1, NaN, 3, 5]')
    data = read_coco(tmp_path / "images", _write(tmp_path, text))
    r = data.report
    assert r.count("clipped") == 2
    assert r.count("empty_box") == 3  # zero width, outside, negative width
    assert r.count("nonfinite") == 1
    assert r.count("unknown_category") == 1
    assert r.count("unknown_image") == 1
    assert r.total_dropped == 6
    a = data.samples[0]
    np.testing.assert_allclose(a.boxes[2:], [[90, 70, 100, 80], [0, 10, 5, 20]])
    assert len(a.boxes) == 4
    summary = r.summary().splitlines()
    assert any(line.startswith("2 boxes clipped to the image (first:") and "annotation id 4" in line
               for line in summary)
    assert any("annotation id 8" in line and "category_id 99" in line for line in summary)
    assert all("\n" not in m for ms in r.messages.values() for m in ms)


def test_strict_raises_first_problem(tmp_path):
    doc = _base(tmp_path)
    doc["annotations"].append({"id": 4, "image_id": 10, "category_id": 1, "bbox": [90, 70, 20, 20]})
    path = _write(tmp_path, doc)
    with pytest.raises(DataError, match=r"ann\.json annotation id 4.*clipped.*strict"):
        read_coco(tmp_path / "images", path, strict=True)
    doc["annotations"][-1]["category_id"] = 5
    with pytest.raises(DataError, match="category_id 5"):
        read_coco(tmp_path / "images", _write(tmp_path, doc), strict=True)
    # without problems strict mode reads normally
    assert len(read_coco(tmp_path / "images", _write(tmp_path, _base(tmp_path)), strict=True)) == 3


@pytest.mark.parametrize("kind", ["images", "annotations", "categories"])
def test_duplicate_ids(tmp_path, kind):
    doc = _base(tmp_path)
    doc[kind].append(dict(doc[kind][0]))
    with pytest.raises(DataError, match=rf"ann\.json: duplicate {kind[:-1].replace('categorie', 'category')} id"):
        read_coco(tmp_path / "images", _write(tmp_path, doc))


def test_malformed_json_message(tmp_path):
    path = _write(tmp_path, '{\n  "images": [\n    {"id": 1,, }\n  ]\n}')
    with pytest.raises(DataError, match=r"ann\.json: invalid JSON at line 3 column 14: Expecting property name") as e:
        read_coco(tmp_path, path, check_images=False)
    assert "\n" not in str(e.value)


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match=r"missing\.json.*not found"):
        read_coco(tmp_path, tmp_path / "missing.json")
    (tmp_path / "latin1.json").write_bytes('{"images": [], "categories": [{"id": 1, "name": "caf\xe9"}]}'
                                           .encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.json.*UTF-8"):
        read_coco(tmp_path, tmp_path / "latin1.json")
    with pytest.raises(DataError, match="top level must be a JSON object"):
        read_coco(tmp_path, _write(tmp_path, [1, 2]))
    with pytest.raises(DataError, match="missing the 'categories' list"):
        read_coco(tmp_path, _write(tmp_path, {"images": []}))
    with pytest.raises(DataError, match="'images' must be a list"):
        read_coco(tmp_path, _write(tmp_path, {"images": {}, "categories": [{"id": 1}]}))
    with pytest.raises(DataError, match="empty"):
        read_coco(tmp_path, _write(tmp_path, ""))


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "'bbox' must be 4 numbers"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3, "4"]), "'bbox' must be 4 numbers"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, True, 4]), "'bbox' must be 4 numbers"),
        (lambda d: d["annotations"][0].update(image_id="10"), "'image_id' must be an integer"),
        (lambda d: d["annotations"][0].update(id=1.5), "'id' must be an integer"),
        (lambda d: d["annotations"][0].pop("category_id"), "missing 'category_id'"),
        (lambda d: d["annotations"][0].update(iscrowd=2), "'iscrowd' must be 0 or 1"),
        (lambda d: d["images"][0].update(file_name=5), "'file_name' must be a non-empty string"),
        (lambda d: d["images"][0].update(width=-3), "'width' must be a positive integer"),
        (lambda d: d["categories"][0].update(name=None), "'name' must be a string"),
        (lambda d: d["categories"].clear(), "'categories' list is empty"),
        (lambda d: d["annotations"].__setitem__(0, [1]), r"annotations\[0\] must be an object"),
    ],
)
def test_wrong_types(tmp_path, mutate, match):
    doc = _base(tmp_path)
    mutate(doc)
    with pytest.raises(DataError, match=match):
        read_coco(tmp_path / "images", _write(tmp_path, doc))


def test_missing_annotations_key_and_optional_fields(tmp_path):
    doc = _base(tmp_path)
    del doc["annotations"]
    data = read_coco(tmp_path / "images", _write(tmp_path, doc), strict=True)  # informational only
    assert data.num_boxes == 0 and len(data) == 3
    assert data.report.count("no_annotations") == 1 and data.report.total_dropped == 0


def test_missing_and_unreadable_images(tmp_path):
    doc = _base(tmp_path)
    (tmp_path / "images" / "b.png").unlink()
    (tmp_path / "images" / "sub" / "c.png").write_text("not an image")
    data = read_coco(tmp_path / "images", _write(tmp_path, doc))
    assert [s.image_id for s in data.samples] == [10]
    r = data.report
    assert r.count("missing_image") == 1 and "b.png" in r.messages["missing_image"][0]
    assert r.count("unreadable_image") == 1 and "c.png" in r.messages["unreadable_image"][0]
    assert r.count("skipped_image_annotations") == 1  # annotation 3 belonged to b.png
    assert r.total_dropped == 3
    with pytest.raises(DataError, match="b.png.*not found"):
        read_coco(tmp_path / "images", _write(tmp_path, doc), strict=True)
    # without checking the files nothing is skipped
    assert len(read_coco(tmp_path / "images", _write(tmp_path, doc), check_images=False)) == 3


def test_size_mismatch_uses_file(tmp_path):
    doc = _base(tmp_path)
    doc["images"][0].update(width=200, height=160)
    doc["images"][1].pop("width")  # missing size is taken from the file silently
    data = read_coco(tmp_path / "images", _write(tmp_path, doc))
    assert (data.samples[0].width, data.samples[0].height) == (100, 80)
    assert data.samples[1].width == 50
    assert data.report.count("size_mismatch") == 1
    assert "200x160" in data.report.messages["size_mismatch"][0]
    doc["images"][1]["width"] = 50
    doc["images"][0].pop("height")
    with pytest.raises(DataError, match="missing 'height'"):
        read_coco(tmp_path / "images", _write(tmp_path, doc), check_images=False)


def test_to_coco_round_trip(tmp_path):
    data = read_coco(tmp_path / "images", _write(tmp_path, _base(tmp_path)))
    coco = data.to_coco()
    assert [c["id"] for c in coco["categories"]] == [1, 3, 7]
    assert [c["name"] for c in coco["categories"]] == ["one", "three", "seven"]
    ann = coco["annotations"][0]
    assert ann["category_id"] == 7 and ann["bbox"] == [10.0, 20.0, 30.0, 40.0]
    assert ann["area"] == 1000.0  # the source's (segmentation) area is kept for COCO's size ranges
    assert coco["annotations"][1]["area"] == pytest.approx(6.0)  # no area given: the box area
    assert coco["annotations"][2]["iscrowd"] == 1
    back = read_coco(tmp_path / "images", _write(tmp_path, coco, "round.json"), strict=True)
    assert back.category_ids == data.category_ids and back.class_names == data.class_names
    for s1, s2 in zip(data.samples, back.samples):
        assert s1.image_id == s2.image_id and s1.file_name == s2.file_name
        np.testing.assert_allclose(s1.boxes, s2.boxes)
        assert s1.labels.tolist() == s2.labels.tolist() and s1.iscrowd.tolist() == s2.iscrowd.tolist()
    # pycocotools accepts it
    from pycocotools.coco import COCO

    api = COCO()
    api.dataset = coco
    api.createIndex()
    assert sorted(api.getCatIds()) == [1, 3, 7] and len(api.getAnnIds(imgIds=[10])) == 2


def test_read_dataset_dispatch(tmp_path):
    path = _write(tmp_path, _base(tmp_path))
    assert len(read_dataset("auto", tmp_path / "images", path)) == 3
    assert len(read_dataset("coco", tmp_path / "images", path)) == 3
    with pytest.raises(DataError, match="unknown annotation format 'cocoa'.*did you mean 'coco'"):
        read_dataset("cocoa", tmp_path / "images", path)
    with pytest.raises(DataError, match="not found"):
        read_dataset("auto", tmp_path / "images", tmp_path / "nothing")


def test_report_merge_and_reasons():
    r = LoadReport()
    r.add("clipped", "x")
    other = LoadReport()
    other.add("clipped", "y")
    other.add("empty_box", "z")
    r.merge(other)
    assert r.count("clipped") == 2 and r.messages["clipped"] == ["x", "y"] and r.total_dropped == 1
    with pytest.raises(KeyError):
        r.add("nonsense", "m")


def test_annotations_without_bbox_are_boxed_from_their_segmentation(tmp_path):
    """Segmentation-only annotations get the box around their polygons or RLE (pycocotools' toBbox);
    one with neither is dropped and counted, not a fatal error for the whole file."""
    from pycocotools import mask as mask_utils

    doc = _base(tmp_path)
    grid = np.zeros((60, 50), np.uint8, order="F")
    grid[10:25, 4:9] = 1  # rows 10..24, columns 4..8: box [4, 10, 5, 15]
    compressed = mask_utils.encode(grid)
    compressed["counts"] = compressed["counts"].decode("ascii")
    doc["annotations"] += [
        {"id": 4, "image_id": 10, "category_id": 7, "segmentation": [[12, 5, 30, 5, 30, 25], [40, 30, 44, 31, 41, 33]]},
        {"id": 5, "image_id": 20, "category_id": 1, "segmentation": compressed},
        {"id": 6, "image_id": 20, "category_id": 1, "segmentation": {"size": [60, 50], "counts": [510, 15, 35, 15]}},
        {"id": 7, "image_id": 30, "category_id": 3, "segmentation": []},
    ]
    data = read_coco(tmp_path / "images", _write(tmp_path, doc))
    a, b, c = data.samples
    np.testing.assert_allclose(a.boxes[-1], [12, 5, 44, 33])  # around both polygons
    np.testing.assert_allclose(b.boxes[1], [4, 10, 9, 25])  # the compressed RLE
    # uncompressed, column-major runs over 60 rows: 510 zeros = 8 columns + 30 rows, so column 8 rows 30-44,
    # then 35 zeros, then column 9 rows 20-34
    np.testing.assert_allclose(b.boxes[2], [8, 20, 10, 45])
    assert len(c.boxes) == 0
    assert data.report.count("bbox_from_segmentation") == 3 and data.report.count("no_bbox") == 1
    assert "annotation id 7: no 'bbox' and no usable 'segmentation'" in data.report.summary()
    with pytest.raises(DataError, match="'bbox' must be 4 numbers"):  # a bbox that is there but wrong stays an error
        read_coco(tmp_path / "images", _write(tmp_path, dict(doc, annotations=[dict(doc["annotations"][0], bbox=[1])])))
