"""Property tests: whatever the input, readers and load_image return valid data or raise DataError."""

from __future__ import annotations

import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from efficientdet.data import DetectionData, read_coco, read_voc, read_yolo
from efficientdet.errors import DataError
from efficientdet.images import load_image

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.sampled_from([10**400, -(10**400), 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(
    st.text(max_size=6), c, max_size=3), max_leaves=8)


def _check_valid(data: DetectionData) -> None:
    assert isinstance(data, DetectionData)
    assert len(data.class_names) == len(data.category_ids)
    for s in data.samples:
        assert s.boxes.dtype == np.float32 and s.boxes.shape == (len(s.labels), 4)
        assert s.labels.dtype == np.int64 and s.iscrowd.dtype == bool and len(s.iscrowd) == len(s.labels)
        if len(s.boxes):
            assert np.isfinite(s.boxes).all()
            assert (s.boxes[:, 0] >= 0).all() and (s.boxes[:, 1] >= 0).all()
            assert (s.boxes[:, 2] <= s.width).all() and (s.boxes[:, 3] <= s.height).all()
            assert (s.boxes[:, 2] > s.boxes[:, 0]).all() and (s.boxes[:, 3] > s.boxes[:, 1]).all()
            assert (s.labels >= 0).all() and (s.labels < len(data.class_names)).all()
    data.report.summary()
    data.to_coco()


def _outcome(fn, *args, **kwargs) -> None:
    try:
        result = fn(*args, **kwargs)
    except DataError as e:
        assert str(e) and "\n" not in str(e)
        return
    _check_valid(result)


@pytest.fixture
def images_dir(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    Image.new("RGB", (40, 30), (1, 2, 3)).save(d / "a.png")
    Image.new("L", (20, 25), 9).save(d / "b.jpg")
    return d


def _coco_base() -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                   {"id": 2, "file_name": "b.jpg", "width": 20, "height": 25}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 10], "iscrowd": 0},
                        {"id": 2, "image_id": 2, "category_id": 5, "bbox": [5, 5, 30, 5]}],
        "categories": [{"id": 3, "name": "a"}, {"id": 5, "name": "b"}],
    }


@SETTINGS
@given(data=st.data())
def test_coco_mutated_records(tmp_path, images_dir, data):
    doc = _coco_base()
    for _ in range(data.draw(st.integers(1, 4))):
        section = data.draw(st.sampled_from(["images", "annotations", "categories", "top"]))
        if section == "top":
            key = data.draw(st.sampled_from(["images", "annotations", "categories"]))
            if data.draw(st.booleans()):
                doc.pop(key, None)
            else:
                doc[key] = data.draw(json_values)
            continue
        records = doc.get(section)
        if not isinstance(records, list) or not records:
            continue
        i = data.draw(st.integers(0, len(records) - 1))
        if not isinstance(records[i], dict):
            continue
        fields = sorted(records[i]) + ["extra"]
        key = data.draw(st.sampled_from(fields))
        action = data.draw(st.sampled_from(["delete", "replace", "number", "duplicate"]))
        if action == "delete":
            records[i].pop(key, None)
        elif action == "replace":
            records[i][key] = data.draw(json_values)
        elif action == "number":
            value = data.draw(st.one_of(st.integers(-100, 100), st.floats(-1e3, 1e3),
                                        st.sampled_from([math.nan, math.inf, 10**400])))
            if key == "bbox":
                bbox = list(records[i].get("bbox") or [0, 0, 1, 1])[:4]
                bbox[data.draw(st.integers(0, len(bbox) - 1))] = value
                records[i]["bbox"] = bbox
            else:
                records[i][key] = value
        else:
            records.append(dict(records[i]))
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc, allow_nan=True))
    strict = data.draw(st.booleans())
    _outcome(read_coco, images_dir, path, strict=strict, check_images=data.draw(st.booleans()))


@SETTINGS
@given(text=st.one_of(st.text(max_size=200), json_values.map(json.dumps)), raw=st.binary(max_size=50))
def test_coco_random_files(tmp_path, images_dir, text, raw):
    path = tmp_path / "ann.json"
    path.write_text(text)
    _outcome(read_coco, images_dir, path)
    path.write_bytes(raw)
    _outcome(read_coco, images_dir, path)


VOC = ("<annotation><filename>a.png</filename><size><width>40</width><height>30</height></size>"
       "<object><name>cat</name><difficult>0</difficult><bndbox><xmin>3</xmin><ymin>4</ymin>"
       "<xmax>20</xmax><ymax>25</ymax></bndbox></object>"
       "<object><name>dog</name><bndbox><xmin>30</xmin><ymin>1</ymin><xmax>45</xmax><ymax>9</ymax></bndbox>"
       "</object></annotation>")


@SETTINGS
@given(data=st.data())
def test_voc_mutated_xml(tmp_path, images_dir, data):
    text = VOC
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["delete", "insert", "value"]))
        pos = data.draw(st.integers(0, len(text)))
        if kind == "delete":
            text = text[:pos] + text[pos + data.draw(st.integers(1, 10)):]
        elif kind == "insert":
            text = text[:pos] + data.draw(st.text(max_size=5)) + text[pos:]
        else:
            tag = data.draw(st.sampled_from(["xmin", "ymin", "xmax", "ymax", "name", "difficult", "width",
                                             "filename"]))
            value = data.draw(st.one_of(st.text(alphabet="0123456789.-naif ", max_size=6), st.text(max_size=4)))
            start = text.find(f"<{tag}>")
            end = text.find(f"</{tag}>")
            if 0 <= start < end:
                value = value.replace("<", "").replace("&", "")
                text = text[: start + len(tag) + 2] + value + text[end:]
    ann = tmp_path / "ann"
    ann.mkdir(exist_ok=True)
    (ann / "a.xml").write_text(text)
    names = data.draw(st.one_of(st.none(), st.just(["cat"]), st.just(["dog", "cat"])))
    _outcome(read_voc, images_dir, ann, class_names=names, strict=data.draw(st.booleans()))


token = st.one_of(
    st.integers(-3, 5).map(str),
    st.floats(-2, 3, allow_nan=False).map(lambda v: f"{v:.3f}"),
    st.sampled_from(["nan", "inf", "-inf", "1e309", "x", "", "0.5", "1.0", "#"]),
)
line = st.one_of(st.lists(token, min_size=0, max_size=9).map(" ".join), st.text(max_size=20))


@SETTINGS
@given(lines=st.lists(line, max_size=6), names=st.one_of(st.none(), st.just(["p", "q", "r"])), strict=st.booleans())
def test_yolo_random_lines(tmp_path, images_dir, lines, names, strict):
    labels = tmp_path / "labels"
    labels.mkdir(exist_ok=True)
    (labels / "a.txt").write_text("\n".join(line.replace("\r", " ") for line in lines) + "\n")
    _outcome(read_yolo, images_dir, labels, class_names=names, strict=strict)


def _encoded(fmt: str, mode: str) -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


SEEDS = [_encoded("PNG", "RGB"), _encoded("PNG", "P"), _encoded("JPEG", "RGB"), _encoded("GIF", "P"),
         _encoded("BMP", "RGB"), _encoded("TIFF", "RGB"), _encoded("WEBP", "RGB")]


@SETTINGS
@given(data=st.data())
def test_load_image_random_bytes(tmp_path, data):
    if data.draw(st.booleans()):
        raw = data.draw(st.binary(min_size=0, max_size=300))
    else:
        raw = bytearray(data.draw(st.sampled_from(SEEDS)))
        for _ in range(data.draw(st.integers(1, 6))):
            pos = data.draw(st.integers(0, len(raw) - 1))
            raw[pos] = data.draw(st.integers(0, 255))
        if data.draw(st.booleans()):
            raw = raw[: data.draw(st.integers(0, len(raw)))]
        raw = bytes(raw)
    # skip mutations that declare a huge (but allowed) size: decoding them is slow, not wrong
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(raw)) as probe:
                assume(probe.size[0] * probe.size[1] <= 4_000_000)
    except AssertionError:
        raise
    except Exception:
        pass
    path = tmp_path / "x.img"
    path.write_bytes(raw)
    for source in (raw, path):
        try:
            img = load_image(source)
        except DataError as e:
            assert str(e) and "\n" not in str(e)
            continue
        assert img.mode == "RGB" and img.size[0] >= 1 and img.size[1] >= 1
        assert np.asarray(img).shape == (img.size[1], img.size[0], 3)


def test_property_helpers_cover_success(tmp_path, images_dir):
    # sanity: the unmutated inputs are valid, so the property tests exercise both outcomes
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(_coco_base()))
    assert len(read_coco(images_dir, path)) == 2
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "a.xml").write_text(VOC)
    assert read_voc(images_dir, ann).num_boxes == 2
    for raw in SEEDS:
        assert load_image(raw).size == (16, 12)
    assert isinstance(Path(images_dir), Path)
