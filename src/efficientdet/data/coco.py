"""COCO JSON reader (``instances_*.json`` style): boxes ``[x, y, w, h]`` in pixels."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import DataError
from .common import check_dir, check_image, decode_utf8, is_int, is_number, positive_size, read_bytes, to_float
from .records import DetectionData, LoadReport, Sample, check_box, make_sample


def load_json(path: str | Path) -> Any:
    """Parse a JSON file; DataError (with line and column) when missing, not UTF-8 or not JSON."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: annotation file not found; check the path")
    if p.is_dir():
        raise DataError(f"{p}: is a directory; pass the COCO annotation .json file")
    raw = read_bytes(p, "annotation file")
    if not raw.strip():
        raise DataError(f"{p}: the annotation file is empty; pass a COCO JSON file")
    text = decode_utf8(raw, p)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{p}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}; fix it") from e
    except RecursionError as e:
        raise DataError(f"{p}: JSON nested too deeply to parse; fix the file") from e


def _list_field(doc: dict, key: str, src: str) -> list:
    value = doc[key]
    if not isinstance(value, list):
        raise DataError(f"{src}: '{key}' must be a list, got {type(value).__name__}; fix the file")
    return value


def _record(value: Any, src: str, key: str, index: int) -> dict:
    if not isinstance(value, dict):
        raise DataError(f"{src}: {key}[{index}] must be an object, got {type(value).__name__}; fix the file")
    return value


def coco_rle(seg: Any, height: int, width: int) -> Any:
    """A COCO ``segmentation`` (polygons, uncompressed or compressed RLE) as one pycocotools RLE of an
    ``height`` x ``width`` image."""
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):  # polygons
        return mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    if isinstance(seg.get("counts"), list):  # uncompressed RLE
        return mask_utils.frPyObjects(seg, height, width)
    return seg


def _bbox_of_segmentation(seg: Any) -> list[float] | None:
    """[x, y, w, h] around COCO polygons or an RLE (pycocotools), or None when there is nothing usable."""
    if isinstance(seg, list):  # polygons [[x1, y1, x2, y2, ...], ...]
        xs = [v for poly in seg if isinstance(poly, list) for v in poly[0::2] if is_number(v)]
        ys = [v for poly in seg if isinstance(poly, list) for v in poly[1::2] if is_number(v)]
        if not xs or not ys:
            return None
        x0, y0 = min(map(float, xs)), min(map(float, ys))
        return [x0, y0, max(map(float, xs)) - x0, max(map(float, ys)) - y0]
    if isinstance(seg, dict) and "counts" in seg and isinstance(seg.get("size"), list) and len(seg["size"]) == 2:
        try:
            from pycocotools import mask as mask_utils

            h, w = (int(v) for v in seg["size"])
            box = [float(v) for v in mask_utils.toBbox(coco_rle(seg, h, w))]
        except Exception:  # malformed RLE: nothing usable
            return None
        return box if box[2] > 0 and box[3] > 0 else None
    return None


def _int_field(rec: dict, field: str, where: str, required: bool = True) -> int | None:
    if field not in rec:
        if required:
            raise DataError(f"{where}: missing '{field}'; add an integer {field}")
        return None
    value = rec[field]
    if not is_int(value):
        raise DataError(f"{where}: '{field}' must be an integer, got {value!r:.60}; fix the file")
    return int(value)


def read_coco(
    images_dir: str | Path,
    annotation_file: str | Path,
    strict: bool = False,
    check_images: bool = True,
) -> DetectionData:
    """Read a COCO detection annotation file.

    Categories (possibly non-contiguous ids) become labels ``0..C-1`` sorted by category id.
    Images without annotations are kept (no boxes). ``iscrowd`` defaults to 0; ``area`` is not
    needed. ``bbox = [x, y, w, h]`` becomes ``xyxy``; boxes outside the image are clipped, boxes of
    zero/negative size or NaN/inf coordinates, unknown categories or image ids are dropped, and
    (with ``check_images``) images whose file is missing or unreadable are skipped, all counted in
    the report; with ``strict`` the first of these is raised instead. With ``check_images`` each
    image's size is read from its file header (after EXIF orientation) and wins over the JSON's.

    Raises:
        DataError: unreadable / malformed file, wrong types, duplicate ids, or any problem in
            strict mode.
    """
    ann_path = Path(annotation_file)
    src = str(ann_path)
    doc = load_json(ann_path)
    if not isinstance(doc, dict):
        raise DataError(f"{src}: the top level must be a JSON object with 'images' and 'categories', "
                        f"got {type(doc).__name__}")
    for key in ("images", "categories"):
        if key not in doc:
            raise DataError(f"{src}: missing the '{key}' list; is this a COCO detection annotation file?")
    images_root = check_dir(images_dir, "images directory") if check_images else Path(images_dir)
    report = LoadReport(strict=strict)

    # categories -> contiguous labels sorted by id
    cats: dict[int, str] = {}
    for i, cat in enumerate(_list_field(doc, "categories", src)):
        cat = _record(cat, src, "categories", i)
        where = f"{src} categories[{i}]"
        cid = _int_field(cat, "id", where)
        assert cid is not None
        if cid in cats:
            raise DataError(f"{src}: duplicate category id {cid}; give each category a unique id")
        name = cat.get("name", f"category{cid}")
        if not isinstance(name, str):
            raise DataError(f"{where}: 'name' must be a string, got {name!r:.60}; fix the file")
        cats[cid] = name
    if not cats:
        raise DataError(f"{src}: the 'categories' list is empty; list at least one category")
    category_ids = sorted(cats)
    label_of = {cid: label for label, cid in enumerate(category_ids)}
    class_names = [cats[c] for c in category_ids]

    # images
    records: dict[int, tuple[str, int | None, int | None]] = {}
    for i, img in enumerate(_list_field(doc, "images", src)):
        img = _record(img, src, "images", i)
        iid = _int_field(img, "id", f"{src} images[{i}]")
        assert iid is not None
        where = f"{src} image id {iid}"
        if iid in records:
            raise DataError(f"{src}: duplicate image id {iid}; give each image a unique id")
        file_name = img.get("file_name")
        if not isinstance(file_name, str) or not file_name.strip() or "\x00" in file_name:
            raise DataError(f"{where}: 'file_name' must be a non-empty string, got {file_name!r:.60}; fix it")
        sizes = []
        for key in ("width", "height"):
            value = img.get(key)
            size = positive_size(value) if value is not None else None
            if value is not None and size is None:
                raise DataError(f"{where} ({file_name!r}): '{key}' must be a positive integer, "
                                f"got {value!r:.60}; fix the file")
            if size is None and not check_images:
                raise DataError(f"{where} ({file_name!r}): missing '{key}'; add it or read with "
                                "check_images=True to take it from the file")
            sizes.append(size)
        records[iid] = (file_name, sizes[0], sizes[1])

    # annotations (structure first, so type errors are raised before any file is touched)
    if "annotations" in doc:
        anns = _list_field(doc, "annotations", src)
    else:
        anns = []
        report.add("no_annotations", f"{src}: no 'annotations' list; every image is read without boxes")
    parsed = []
    seen_ann_ids: set[int] = set()
    for i, ann in enumerate(anns):
        ann = _record(ann, src, "annotations", i)
        aid = _int_field(ann, "id", f"{src} annotations[{i}]", required=False)
        where = f"{src} annotation id {aid}" if aid is not None else f"{src} annotations[{i}]"
        if aid is not None:
            if aid in seen_ann_ids:
                raise DataError(f"{src}: duplicate annotation id {aid}; give each annotation a unique id")
            seen_ann_ids.add(aid)
        iid = _int_field(ann, "image_id", where)
        cid = _int_field(ann, "category_id", where)
        bbox = ann.get("bbox")
        if bbox is None:  # segmentation-only annotations: the box around the segmentation
            bbox = _bbox_of_segmentation(ann.get("segmentation"))
            if bbox is None:
                report.add("no_bbox", f"{where}: no 'bbox' and no usable 'segmentation'; dropped, add the box")
                continue
            report.add("bbox_from_segmentation", f"{where}: no 'bbox'; the box around its segmentation is used")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(is_number(v) for v in bbox):
            raise DataError(f"{where}: 'bbox' must be 4 numbers [x, y, width, height], got {bbox!r:.80}; "
                            "fix the annotation")
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1) or not isinstance(crowd, int):
            raise DataError(f"{where}: 'iscrowd' must be 0 or 1, got {crowd!r:.40}; fix the annotation")
        area = to_float(ann["area"]) if is_number(ann.get("area")) else math.nan
        area = area if math.isfinite(area) and area > 0 else math.nan
        parsed.append((where, iid, cid, [to_float(v) for v in bbox], bool(crowd), area))

    # image files
    sizes_of: dict[int, tuple[int, int]] = {}
    skipped: set[int] = set()
    for iid, (file_name, w, h) in records.items():
        if check_images:
            declared = (w, h) if w is not None and h is not None else None
            where = f"{src} image id {iid} ({file_name!r})"
            size = check_image(images_root / file_name, where, declared, report)
            if size is None:
                skipped.add(iid)
                continue
            sizes_of[iid] = size
        else:
            assert w is not None and h is not None
            sizes_of[iid] = (w, h)

    boxes: dict[int, list] = {iid: [] for iid in sizes_of}
    labels: dict[int, list] = {iid: [] for iid in sizes_of}
    crowds: dict[int, list] = {iid: [] for iid in sizes_of}
    areas: dict[int, list] = {iid: [] for iid in sizes_of}
    for where, iid, cid, (x, y, w, h), crowd, area in parsed:
        if iid in skipped:
            report.add("skipped_image_annotations", f"{where}: image {iid} was skipped; annotation dropped")
            continue
        if iid not in sizes_of:
            report.add("unknown_image", f"{where}: image_id {iid} is not in 'images'; dropped, fix the "
                                        "image_id or add the image")
            continue
        if cid not in label_of:
            report.add("unknown_category", f"{where}: category_id {cid} is not in 'categories' "
                                           f"{category_ids[:20]}; dropped, fix it or add the category")
            continue
        width, height = sizes_of[iid]
        box = check_box((x, y, x + w, y + h), width, height, where, report)
        if box is None:
            continue
        boxes[iid].append(box)
        labels[iid].append(label_of[cid])
        crowds[iid].append(crowd)
        areas[iid].append(area)

    root = images_root.absolute()
    samples: list[Sample] = []
    for iid, (file_name, _, _) in records.items():
        if iid in skipped:
            continue
        width, height = sizes_of[iid]
        samples.append(make_sample(iid, file_name, root / file_name, width, height, boxes[iid], labels[iid],
                                   crowds[iid], areas[iid]))
    return DetectionData(samples, class_names, category_ids, report, src)
