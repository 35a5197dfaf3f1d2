"""VOC and YOLO readers on small hand-written files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from efficientdet.data import read_coco, read_dataset, read_voc, read_yolo
from efficientdet.data.yolo import load_names
from efficientdet.errors import DataError


def _image(path: Path, w: int, h: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (10, 20, 30)).save(path)


def _obj(name: str, box: tuple, difficult: int | None = None) -> str:
    diff = f"<difficult>{difficult}</difficult>" if difficult is not None else ""
    x1, y1, x2, y2 = box
    return (f"<object><name>{name}</name><pose>Unspecified</pose>{diff}<bndbox><xmin>{x1}</xmin>"
            f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")


def _xml(filename: str | None, w: int, h: int, objects: list[str]) -> str:
    fn = f"<filename>{filename}</filename>" if filename is not None else ""
    return (f"<annotation><folder>VOC</folder>{fn}<size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>\n" + "\n".join(objects) + "\n</annotation>\n")


@pytest.fixture
def voc(tmp_path):
    images, anns = tmp_path / "JPEGImages", tmp_path / "Annotations"
    anns.mkdir()
    _image(images / "a.jpg", 100, 80)
    _image(images / "b.png", 40, 30)
    (anns / "a.xml").write_text(_xml("a.jpg", 100, 80, [
        _obj("dog", (1, 1, 10, 20)),
        _obj("cat", (50, 40, 100, 80), difficult=1),
        _obj("dog", (90, 10, 150, 30), difficult=0),  # beyond the right edge: clipped
    ]))
    (anns / "b.xml").write_text(_xml(None, 40, 30, [_obj(" cat ", (5.5, 6, 20, 25))]))  # no <filename>
    return images, anns


def test_voc_boxes_one_based_conversion(voc):
    images, anns = voc
    data = read_voc(images, anns)
    assert data.class_names == ["cat", "dog"] and data.category_ids == [1, 2]
    a, b = data.samples
    assert (a.image_id, a.file_name, b.image_id, b.file_name) == (1, "a.jpg", 2, "b.png")
    np.testing.assert_allclose(a.boxes, [[0, 0, 10, 20], [49, 39, 100, 80], [89, 9, 100, 30]])
    assert a.labels.tolist() == [1, 0, 1] and a.iscrowd.tolist() == [False, True, False]
    np.testing.assert_allclose(b.boxes, [[4.5, 5, 20, 25]])
    assert (b.width, b.height) == (40, 30)
    assert data.report.count("clipped") == 1 and "a.xml object 3" in data.report.messages["clipped"][0]
    coco = data.to_coco()
    assert coco["annotations"][1]["iscrowd"] == 1 and coco["categories"] == [
        {"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]


def test_voc_given_class_names_and_strict(voc):
    images, anns = voc
    data = read_voc(images, anns, class_names=["dog"])
    assert data.class_names == ["dog"] and data.report.count("unknown_category") == 2
    assert [len(s.boxes) for s in data.samples] == [2, 0]
    with pytest.raises(DataError, match=r"a\.xml object 2.*'cat'.*strict"):
        read_voc(images, anns, class_names=["dog"], strict=True)
    assert read_dataset("auto", images, anns).class_names == ["cat", "dog"]


def test_voc_malformed_xml(voc):
    images, anns = voc
    (anns / "c.xml").write_text("<annotation>\n<filename>c.jpg</filename>\n<size><width>4</width>\n</annotation>")
    with pytest.raises(DataError, match=r"c\.xml: malformed XML at line 4 column \d+") as e:
        read_voc(images, anns)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "obj, match",
    [
        ("<object><name>dog</name></object>", "object 1 .*missing <bndbox>"),
        ("<object><bndbox><xmin>1</xmin></bndbox></object>", "object 1: missing <name>"),
        (_obj("dog", ("one", 1, 5, 5)), "<xmin> is not a number"),
        ("<object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>3</xmax></bndbox></object>",
         "missing <ymax>"),
        (_obj("dog", (1, 1, 5, 5), difficult=2), "<difficult> must be 0 or 1"),
    ],
)
def test_voc_field_errors(tmp_path, obj, match):
    _image(tmp_path / "img" / "x.jpg", 10, 10)
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "x.xml").write_text(_xml("x.jpg", 10, 10, [obj]))
    with pytest.raises(DataError, match=match):
        read_voc(tmp_path / "img", tmp_path / "ann")


def test_voc_missing_image_reported(voc):
    images, anns = voc
    (images / "a.jpg").unlink()
    data = read_voc(images, anns)
    assert [s.file_name for s in data.samples] == ["b.png"]
    assert data.report.count("missing_image") == 1 and data.report.count("skipped_image_annotations") == 3


# ---------------------------------------------------------------------------------------------- YOLO


@pytest.fixture
def yolo(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    labels.mkdir()
    _image(images / "a.png", 100, 50)
    _image(images / "b.jpg", 40, 40)
    _image(images / "c.png", 20, 20)  # no label file: no boxes
    (labels / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n\n1 0.1 0.1 0.4 0.4\n")
    (labels / "b.txt").write_text("# comment\n2 0.5 0.5 0.5 0.5\n5 0.5 0.5 0.1 0.1\n1 0.5 0.5 0 0.1\n")
    (tmp_path / "classes.txt").write_text("person\ncar\nbike\n")
    return images, labels


def test_yolo_normalised_to_pixels(yolo):
    images, labels = yolo
    data = read_yolo(images, labels)
    assert data.class_names == ["person", "car", "bike"] and data.category_ids == [1, 2, 3]
    a, b, c = data.samples
    assert [s.image_id for s in data.samples] == [1, 2, 3]
    np.testing.assert_allclose(a.boxes, [[40, 15, 60, 35], [0, 0, 30, 15]], atol=1e-4)
    assert a.labels.tolist() == [0, 1]
    np.testing.assert_allclose(b.boxes, [[10, 10, 30, 30]], atol=1e-4)
    assert b.labels.tolist() == [2]
    assert c.boxes.shape == (0, 4) and (c.width, c.height) == (20, 20)
    r = data.report
    assert r.count("clipped") == 1 and r.count("unknown_category") == 1 and r.count("empty_box") == 1
    assert "b.txt line 3" in r.messages["unknown_category"][0]


def test_yolo_names_sources(yolo, tmp_path):
    images, labels = yolo
    (tmp_path / "classes.txt").unlink()
    data = read_yolo(images, labels)
    assert data.class_names == ["class0", "class1", "class2", "class3", "class4", "class5"]
    assert data.report.count("unknown_category") == 0
    (tmp_path / "data.yaml").write_text("path: .\nnames:\n  0: person\n  1: car\n  2: bike\n  3: bus\n")
    assert read_yolo(images, labels).class_names == ["person", "car", "bike", "bus"]
    assert read_yolo(images, labels, class_names=["p", "c", "b"]).class_names == ["p", "c", "b"]
    (tmp_path / "names.yaml").write_text("names: [x, y, z]\n")
    assert load_names(tmp_path / "names.yaml") == ["x", "y", "z"]
    (tmp_path / "bad.yaml").write_text("names: [x, y\n")
    with pytest.raises(DataError, match=r"bad\.yaml: invalid YAML at line"):
        load_names(tmp_path / "bad.yaml")
    # ultralytics' mapping with 11+ classes, in file order and shuffled, and with quoted keys
    mapping = "".join(f"  {i}: c{i}\n" for i in (3, 0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11))
    (tmp_path / "many.yaml").write_text("names:\n" + mapping)
    assert load_names(tmp_path / "many.yaml") == [f"c{i}" for i in range(12)]
    (tmp_path / "quoted.yaml").write_text("names: {'1': b, '0': a}\n")
    assert load_names(tmp_path / "quoted.yaml") == ["a", "b"]
    (tmp_path / "gap.yaml").write_text("names: {0: a, 2: b}\n")
    with pytest.raises(DataError, match="keys must be the class indices"):
        load_names(tmp_path / "gap.yaml")
    # a text file: line i names class i, so a blank line inside would shift the classes after it
    (tmp_path / "ok.txt").write_text("background\ncat\n\n\n")
    assert load_names(tmp_path / "ok.txt") == ["background", "cat"]
    (tmp_path / "hole.txt").write_text("background\n\ncat\n")
    with pytest.raises(DataError, match=r"hole\.txt: line 2 is empty, but line i names class i"):
        load_names(tmp_path / "hole.txt")


@pytest.mark.parametrize(
    "line, match",
    [
        ("0 0.5 0.5 0.2", r"a\.txt line 2: expected 'class cx cy w h' \(5 values\) or a polygon .*, got 4"),
        ("0 0.1 0.1 0.3 0.1 0.3 0.3 0.2", r"or a polygon 'class x1 y1 x2 y2 x3 y3 \.\.\.' \(an odd number of values, "
                                          r"at least 7\), got 8 values"),
        ("0 0.5 abc 0.2 0.2", r"a\.txt line 2: non-numeric"),
        ("x 0.5 0.5 0.2 0.2", r"a\.txt line 2: class 'x' is not an integer"),
        ("1.5 0.5 0.5 0.2 0.2", "is not an integer"),
        ("0 0.5 0.5 0.2 0.2 0.3", "got 6 values"),
    ],
)
def test_yolo_malformed_lines(yolo, line, match):
    images, labels = yolo
    (labels / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n" + line + "\n")
    with pytest.raises(DataError, match=match):
        read_yolo(images, labels)


def test_yolo_value_problems_counted(yolo):
    images, labels = yolo
    (labels / "a.txt").write_text("0 nan 0.5 0.2 0.2\n0 1.5 0.5 0.2 0.2\n-1 0.5 0.5 0.2 0.2\n"
                                  "1 0.1 0.1 0.3 0.1 0.3 0.3\n")  # polygon: bbox of the points
    data = read_yolo(images, labels)
    r = data.report
    # b.txt contributes one unknown class and one empty box
    assert r.count("nonfinite") == 1 and r.count("empty_box") == 2 and r.count("unknown_category") == 2
    np.testing.assert_allclose(data.samples[0].boxes, [[10, 5, 30, 15]], atol=1e-4)
    with pytest.raises(DataError, match=r"a\.txt line 1.*NaN"):
        read_yolo(images, labels, strict=True)


def test_yolo_orphan_label_and_auto(yolo):
    images, labels = yolo
    (labels / "zzz.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    data = read_dataset("auto", images, labels)
    assert data.report.count("orphan_label") == 1 and len(data) == 3
    with pytest.raises(DataError, match="labels directory not found"):
        read_yolo(images, labels / "nope")


def test_yolo_to_coco_round_trip(yolo, tmp_path):
    import json

    images, labels = yolo
    data = read_yolo(images, labels)
    (tmp_path / "y.json").write_text(json.dumps(data.to_coco()))
    back = read_coco(images, tmp_path / "y.json", strict=True)
    assert back.class_names == data.class_names
    for s1, s2 in zip(data.samples, back.samples):
        np.testing.assert_allclose(s1.boxes, s2.boxes, atol=1e-4)
        assert s1.labels.tolist() == s2.labels.tolist()


def test_align_classes_by_name_case_index_and_id():
    """Data relabelled to a model's (or the training split's) classes: by name, then ignoring case; classes the
    list lacks keep their boxes under a new id; by index when no name matches; COCO ids kept when known."""
    from efficientdet.data.records import DetectionData, Sample, align_classes

    def data(names, ids, labels):
        s = Sample(1, "a.jpg", Path("a.jpg"), 10, 10, np.tile([[0, 0, 5, 5]], (len(labels), 1)), labels,
                   np.zeros(len(labels), bool))
        return DetectionData([s], names, ids, source="val")

    d = data(["Red", "blue", "cyan"], [1, 2, 3], [0, 1, 2, 2])  # a VOC split: sorted names, ids 1..3
    got, notes = align_classes(d, ["Blue", "Red", "green"], [17, 3, 90], against="classes of the model")
    assert got.samples[0].labels.tolist() == [1, 0, 3, 3]  # Red -> 1, blue -> Blue (case), cyan -> new class 3
    assert got.class_names == ["Blue", "Red", "green", "cyan"] and got.category_ids == [17, 3, 90, 91]
    assert len(notes) == 1 and "val: 1 class(es) not among the 3 classes of the model (cyan)" in notes[0]
    same = data(["x", "y"], [1, 2], [1])
    assert align_classes(same, ["x", "y"], [1, 2]) == (same, [])
    by_index, notes = align_classes(data(["class0", "class1"], [1, 2], [1]), ["cat", "dog"], [5, 6])
    assert by_index.samples[0].labels.tolist() == [1] and by_index.category_ids == [5, 6]
    assert "matched by index" in notes[0]
    coco = data(["motorbike"], [4], [0])  # COCO json: a known id wins over a differing name
    assert align_classes(coco, ["person", "bicycle", "car", "motorcycle"], [1, 2, 3, 4], by_id=True) == (coco, [])


def test_training_numbers_a_voc_val_split_like_the_train_split(tmp_path):
    """VOC numbers the classes of each split from its own names; val must follow train (a val split without
    one class used to shift every id after it, and validation scored each class against another)."""
    from efficientdet.train.build import build_data
    from efficientdet.train.config import TrainConfig

    for split, names in (("train", ["dog", "cat", "bird"]), ("val", ["dog", "bird"])):
        for i, name in enumerate(names):
            _image(tmp_path / split / "images" / f"{i}.jpg", 60, 40)
            ann = tmp_path / split / "ann" / f"{i}.xml"
            ann.parent.mkdir(parents=True, exist_ok=True)
            ann.write_text(_xml(f"{i}.jpg", 60, 40, [_obj(name, (5, 5, 30, 30))]))
    cfg = TrainConfig(train_images=str(tmp_path / "train" / "images"),
                      train_annotations=str(tmp_path / "train" / "ann"),
                      val_images=str(tmp_path / "val" / "images"), val_annotations=str(tmp_path / "val" / "ann"),
                      batch_size=1)
    train, val = build_data(cfg)
    assert train.class_names == ["bird", "cat", "dog"]
    assert read_voc(tmp_path / "val" / "images", tmp_path / "val" / "ann").class_names == ["bird", "dog"]
    assert val.class_names == train.class_names and val.category_ids == train.category_ids
    named = {s.file_name: train.class_names[int(s.labels[0])] for s in val.samples}
    assert named == {"0.jpg": "dog", "1.jpg": "bird"}


def test_training_warns_about_classes_without_boxes(tmp_path, capsys):
    from efficientdet.train.build import build_data
    from efficientdet.train.config import TrainConfig

    _image(tmp_path / "images" / "0.jpg", 60, 40)
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "0.xml").write_text(_xml("0.jpg", 60, 40, [_obj("cat", (5, 5, 30, 30))]))
    (tmp_path / "names.txt").write_text("cat\ndog\neel\n")
    build_data(TrainConfig(train_images=str(tmp_path / "images"), train_annotations=str(tmp_path / "ann"),
                           names=str(tmp_path / "names.txt"), batch_size=1))
    assert "2 of 3 classes have no training box (dog, eel)" in capsys.readouterr().err
