"""Pascal VOC XML reader (one ``.xml`` per image).

VOC boxes are 1-based inclusive pixel indices; they are converted to the 0-based pixel-edge
``xyxy`` convention as torchvision and mmdetection do: ``(xmin - 1, ymin - 1, xmax, ymax)``.
``difficult`` objects are kept with ``iscrowd=True`` (ignored in training and evaluation).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError
from .common import check_dir, check_image, find_image, positive_size, read_bytes
from .records import DetectionData, LoadReport, Sample, check_box, make_sample


def _text(elem: ET.Element | None) -> str | None:
    if elem is None or elem.text is None:
        return None
    return elem.text.strip()


def _number(elem: ET.Element, tag: str, where: str) -> float:
    text = _text(elem.find(tag))
    if text is None or text == "":
        raise DataError(f"{where}: missing <{tag}>; add the coordinate")
    try:
        return float(text)
    except ValueError as e:
        raise DataError(f"{where}: <{tag}> is not a number: {text!r:.40}; fix the file") from e


def _parse(path: Path) -> ET.Element:
    data = read_bytes(path, "annotation file")
    if not data.strip():
        raise DataError(f"{path}: the annotation file is empty; write a VOC <annotation> or remove the file")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        line, col = e.position
        reason = str(e).split(":")[0]
        raise DataError(f"{path}: malformed XML at line {line} column {col + 1} ({reason}); fix it") from e
    except (ValueError, RecursionError) as e:
        raise DataError(f"{path}: malformed XML ({e}); fix the file") from e
    if root.tag != "annotation":
        raise DataError(f"{path}: the root element is <{root.tag}>, expected <annotation>; is it a VOC file?")
    return root


def read_voc(
    images_dir: str | Path,
    annotations_dir: str | Path,
    class_names: Sequence[str] | None = None,
    strict: bool = False,
    check_images: bool = True,
) -> DetectionData:
    """Read a Pascal VOC data set: ``annotations_dir/*.xml``, images in ``images_dir``.

    Args:
        images_dir: directory holding the images named by each file's ``<filename>`` (when it does
            not exist there, an image with the XML file's stem and any image extension is used).
        annotations_dir: directory of ``.xml`` files, read in sorted order; image ids are ``1..``
            in that order.
        class_names: the classes in label order; objects of other names are dropped and counted.
            Default: the sorted set of names found in all files.
        strict: raise the first dropped or modified object/image instead of reporting it.
        check_images: check each image file exists and take its size from the file header.

    Returns:
        :class:`DetectionData` with ``category_ids = 1..C``.

    Raises:
        DataError: missing directories, malformed XML (file, line and column), missing or
            non-numeric fields, or any problem in strict mode.
    """
    ann_dir = check_dir(annotations_dir, "annotations directory")
    images_root = check_dir(images_dir, "images directory") if check_images else Path(images_dir)
    files = sorted(p for p in ann_dir.iterdir() if p.suffix.lower() == ".xml" and p.is_file())
    if not files:
        raise DataError(f"{ann_dir}: no .xml annotation files found; is this the VOC Annotations directory?")
    report = LoadReport(strict=strict)

    parsed = []
    for xml_path in files:
        root = _parse(xml_path)
        file_name = _text(root.find("filename")) or ""
        size = root.find("size")
        declared = None
        if size is not None:
            w, h = (positive_size(_maybe_int(_text(size.find(k)))) for k in ("width", "height"))
            if w is not None and h is not None:
                declared = (w, h)
        objects = []
        for k, obj in enumerate(root.iter("object")):
            where = f"{xml_path} object {k + 1}"
            name = _text(obj.find("name"))
            if not name:
                raise DataError(f"{where}: missing <name>; add the class name")
            bndbox = obj.find("bndbox")
            if bndbox is None:
                raise DataError(f"{where} ({name!r}): missing <bndbox>; add xmin, ymin, xmax, ymax")
            coords = [_number(bndbox, t, f"{where} ({name!r})") for t in ("xmin", "ymin", "xmax", "ymax")]
            difficult = _text(obj.find("difficult")) or "0"
            if difficult not in ("0", "1"):
                raise DataError(f"{where} ({name!r}): <difficult> must be 0 or 1, got {difficult!r:.20}")
            objects.append((where, name, coords, difficult == "1"))
        parsed.append((xml_path, file_name, declared, objects))

    if class_names is None:
        names = sorted({name for *_, objects in parsed for _, name, _, _ in objects})
    else:
        names = [str(n) for n in class_names]
        if len(set(names)) != len(names):
            raise DataError(f"class_names has duplicates: {names}; give each class once")
    label_of = {n: i for i, n in enumerate(names)}

    root_abs = images_root.absolute()
    samples: list[Sample] = []
    for image_id, (xml_path, file_name, declared, objects) in enumerate(parsed, start=1):
        where_img = f"{xml_path}"
        path = images_root / file_name if file_name else None
        if path is None or not _is_file(path):
            found = find_image(images_root, xml_path.stem) if check_images else None
            if found is not None:
                path = found
                file_name = found.name
        if path is None:
            path = images_root / (xml_path.stem + ".jpg")
            file_name = path.name
        if check_images:
            got = check_image(path, where_img, declared, report)
            if got is None:
                for _ in objects:
                    report.add("skipped_image_annotations", f"{where_img}: image skipped; object dropped")
                continue
            width, height = got
        elif declared is None:
            raise DataError(f"{xml_path}: missing <size><width>/<height>; add them or read with check_images")
        else:
            width, height = declared
        boxes, labels, crowds = [], [], []
        for where, name, (x1, y1, x2, y2), difficult in objects:
            if name not in label_of:
                report.add("unknown_category", f"{where}: class {name!r} is not in class_names; dropped")
                continue
            box = check_box((x1 - 1.0, y1 - 1.0, x2, y2), width, height, where, report)
            if box is None:
                continue
            boxes.append(box)
            labels.append(label_of[name])
            crowds.append(difficult)
        samples.append(
            make_sample(image_id, file_name, root_abs / file_name, width, height, boxes, labels, crowds)
        )
    return DetectionData(samples, names, list(range(1, len(names) + 1)), report, str(ann_dir))


def _maybe_int(text: str | None) -> int | float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False
