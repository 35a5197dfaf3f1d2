"""YOLO txt reader: one ``.txt`` per image, lines ``class cx cy w h`` normalised to [0, 1].

Segmentation-style lines (``class x1 y1 x2 y2 x3 y3 ...``, normalised polygon points) are also
accepted; their box is the polygon's bounding box.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import yaml

from ..errors import DataError
from .common import check_dir, check_image, decode_utf8, list_images, read_bytes
from .records import DetectionData, LoadReport, Sample, check_box, make_sample

#: names files looked for, in order, in the labels directory, its parent and grandparent
NAMES_FILES = ("classes.txt", "obj.names", "data.yaml", "dataset.yaml")
#: largest number of classes inferred from the class indices when no names are given
MAX_CLASSES = 100_000


def load_names(path: str | Path) -> list[str]:
    """Class names from a ``classes.txt`` (one per line) or a ``data.yaml`` with ``names:``.

    ``names`` may be a list or a mapping ``{0: name, 1: name, ...}`` (keys must be 0..C-1).
    """
    p = Path(path)
    text = decode_utf8(read_bytes(p, "class names file"), p)
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
            raise DataError(f"{p}: invalid YAML{at}; fix the file") from e
        names = doc.get("names") if isinstance(doc, dict) else None
        if isinstance(names, dict):  # {0: name, 1: name, ...}; keys may be written as strings ('0': name)
            by_index = {int(k) if isinstance(k, str) and k.strip().isdigit() else k: v for k, v in names.items()}
            if set(by_index) != set(range(len(names))):
                raise DataError(f"{p}: 'names' keys must be the class indices 0..{len(names) - 1}; fix it")
            names = [by_index[i] for i in range(len(names))]
        if not isinstance(names, list) or not names:
            raise DataError(f"{p}: expected a non-empty 'names:' list (or index: name mapping); add it")
        out = [str(n) for n in names]
    else:
        out = [line.strip() for line in text.splitlines()]
        while out and not out[-1]:  # trailing blank lines
            out.pop()
        if not out:
            raise DataError(f"{p}: the class names file is empty; write one class name per line")
        if "" in out:  # line i names class i: a blank line would shift every class after it
            raise DataError(f"{p}: line {out.index('') + 1} is empty, but line i names class i; remove the line or "
                            "write the class name")
    if len(set(out)) != len(out):
        raise DataError(f"{p}: duplicate class names in {out[:20]}; give each class once")
    return out


def find_names_file(labels_dir: Path) -> Path | None:
    """A names file (``classes.txt``, ``obj.names``, ``data.yaml``) in or next to ``labels_dir``."""
    for folder in (labels_dir, labels_dir.parent, labels_dir.parent.parent):
        for name in NAMES_FILES:
            if (folder / name).is_file():
                return folder / name
    return None


def _parse_line(line: str, where: str) -> tuple[int, list[float]]:
    """``class cx cy w h`` (or a polygon) -> ``(class, [cx, cy, w, h])``, normalised units."""
    parts = line.split()
    if len(parts) != 5 and (len(parts) < 7 or len(parts) % 2 == 0):
        raise DataError(f"{where}: expected 'class cx cy w h' (5 values) or a polygon 'class x1 y1 x2 y2 x3 y3 ...' "
                        f"(an odd number of values, at least 7), got {len(parts)} values: {line.strip()!r:.80}; "
                        "fix the line")
    try:
        cls_value = float(parts[0])
    except ValueError as e:
        raise DataError(f"{where}: class {parts[0]!r:.20} is not an integer; fix the line") from e
    if not math.isfinite(cls_value) or not cls_value.is_integer():
        raise DataError(f"{where}: class {parts[0]!r:.20} is not an integer; fix the line")
    try:
        values = [float(v) for v in parts[1:]]
    except ValueError as e:
        raise DataError(f"{where}: non-numeric coordinate in {line.strip()!r:.80}; fix the line") from e
    if len(values) > 4 and all(math.isfinite(v) for v in values):  # polygon -> its bounding box
        xs, ys = values[0::2], values[1::2]
        x1, x2, y1, y2 = min(xs), max(xs), min(ys), max(ys)
        values = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
    elif len(values) > 4:
        values = [math.nan] * 4
    return int(cls_value), values


def _read_label_file(path: Path) -> list[tuple[str, int, list[float]]]:
    text = decode_utf8(read_bytes(path, "label file"), path)
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path} line {n}"
        cls, values = _parse_line(line, where)
        out.append((where, cls, values))
    return out


def read_yolo(
    images_dir: str | Path,
    labels_dir: str | Path,
    class_names: Sequence[str] | str | Path | None = None,
    strict: bool = False,
) -> DetectionData:
    """Read a YOLO data set: images under ``images_dir``, ``labels_dir/<same relative stem>.txt``.

    Args:
        images_dir: directory of images (searched recursively, sorted; ids ``1..`` in that order).
        labels_dir: directory of label files; an image without one has no boxes.
        class_names: the class names, or the path of a ``classes.txt`` / ``data.yaml``; default: a
            names file found in or next to ``labels_dir``, else ``class0, class1, ...`` up to the
            largest class index used.
        strict: raise the first dropped or modified box/image instead of reporting it.

    Boxes ``cx cy w h`` (fractions of the image size) become ``xyxy`` pixels of the image file's
    size (after EXIF orientation). Out-of-range boxes are clipped, empty ones, NaN/inf ones and
    unknown class indices dropped, all counted in the report.

    Raises:
        DataError: missing directories, a malformed line (file and line number), a bad names file,
            or any problem in strict mode.
    """
    images_root = check_dir(images_dir, "images directory")
    labels_root = check_dir(labels_dir, "labels directory")
    report = LoadReport(strict=strict)
    if isinstance(class_names, str | Path):
        names: list[str] | None = load_names(class_names)
    elif class_names is not None:
        names = [str(n) for n in class_names]
        if len(set(names)) != len(names):
            raise DataError(f"class_names has duplicates: {names[:20]}; give each class once")
    else:
        found = find_names_file(labels_root)
        names = load_names(found) if found is not None else None

    images = list_images(images_root)
    if not images:
        raise DataError(f"{images_root}: no image files found; check the images directory")
    used_labels: set[Path] = set()
    entries = []
    for image_path in images:
        rel = image_path.relative_to(images_root)
        label_path = labels_root / rel.with_suffix(".txt")
        if not label_path.is_file():
            label_path = labels_root / (image_path.stem + ".txt")
        lines = []
        if label_path.is_file():
            used_labels.add(label_path.resolve())
            lines = _read_label_file(label_path)
        entries.append((image_path, rel.as_posix(), lines))

    if names is None:
        largest = max((cls for *_, lines in entries for _, cls, _ in lines if cls >= 0), default=-1)
        if largest >= MAX_CLASSES:
            raise DataError(f"{labels_root}: class index {largest} is implausibly large and no class names "
                            "were given; fix the labels or pass class_names")
        names = [f"class{i}" for i in range(largest + 1)]
    num_classes = len(names)

    for txt in sorted(labels_root.rglob("*.txt")):
        if txt.name in NAMES_FILES or txt.resolve() in used_labels:
            continue
        report.add("orphan_label", f"{txt}: label file has no matching image in {images_root}; ignored")

    root_abs = images_root.absolute()
    samples: list[Sample] = []
    for image_id, (image_path, file_name, lines) in enumerate(entries, start=1):
        size = check_image(image_path, str(image_path), None, report)
        if size is None:
            for where, *_ in lines:
                report.add("skipped_image_annotations", f"{where}: its image was skipped; box dropped")
            continue
        width, height = size
        boxes, labels, crowds = [], [], []
        for where, cls, (cx, cy, w, h) in lines:
            if not all(math.isfinite(v) for v in (cx, cy, w, h)):
                report.add("nonfinite", f"{where}: NaN/inf coordinate; dropped, fix the line")
                continue
            if not 0 <= cls < num_classes:
                report.add("unknown_category", f"{where}: class {cls} is outside 0..{num_classes - 1}; "
                                               "dropped, fix it or the class names")
                continue
            xyxy = ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
            box = check_box(xyxy, width, height, where, report)
            if box is None:
                continue
            boxes.append(box)
            labels.append(cls)
            crowds.append(False)
        samples.append(
            make_sample(image_id, file_name, root_abs / file_name, width, height, boxes, labels, crowds)
        )
    return DetectionData(samples, names, list(range(1, num_classes + 1)), report, str(labels_root))
