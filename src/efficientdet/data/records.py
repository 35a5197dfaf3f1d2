"""The internal form of a detection data set, whatever file format it was read from.

Conventions used everywhere in :mod:`efficientdet.data`:

* boxes are ``float32`` arrays of shape ``(N, 4)``, ``(x1, y1, x2, y2)`` in original image pixels,
  with the pixel-edge convention: a box covering pixel columns 0..9 is ``x1=0, x2=10``;
* labels are ``int64`` 0-based contiguous class indices; ``category_ids[label]`` is the category id
  of the source file (COCO's, possibly non-contiguous; ``1..C`` for VOC and YOLO);
* ``iscrowd`` (COCO crowd regions, VOC ``difficult`` objects) marks boxes that training ignores
  (neither positives nor negatives) and that evaluation treats as "ignore" regions.

Readers never silently change data: every clipped box, dropped annotation or skipped image is
counted in a :class:`LoadReport`; with ``strict=True`` the first such problem is raised instead.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

#: reason -> (description used in summaries, whether it drops or modifies data (raised in strict mode),
#: whether it counts towards LoadReport.total_dropped)
REASONS: dict[str, tuple[str, bool, bool]] = {
    "clipped": ("boxes clipped to the image", True, False),
    "empty_box": ("boxes dropped for zero or negative size (after clipping)", True, True),
    "nonfinite": ("annotations dropped for NaN/inf coordinates", True, True),
    "unknown_category": ("annotations dropped for an unknown category", True, True),
    "unknown_image": ("annotations dropped for an unknown image id", True, True),
    "missing_image": ("images skipped because the file is missing", True, True),
    "unreadable_image": ("images skipped because the file is unreadable", True, True),
    "skipped_image_annotations": ("annotations dropped with their skipped image", True, True),
    "size_mismatch": ("image sizes corrected to the file's actual size", True, False),
    "orphan_label": ("label files without a matching image (ignored)", True, True),
    "no_annotations": ("annotation files without an 'annotations' list (images unlabelled)", False, False),
    "bbox_from_segmentation": ("COCO annotations without 'bbox' boxed from their segmentation", False, False),
    "no_bbox": ("COCO annotations dropped for having neither 'bbox' nor a usable segmentation", True, True),
    # segmentation masks (efficientdet.data.segmentation)
    "missing_mask": ("images skipped because their mask file is missing", True, True),
    "unreadable_mask": ("images skipped because the mask is unreadable or not a single-channel PNG", True, True),
    "mask_size_mismatch": ("images skipped because the mask size differs from the image", True, True),
    "mask_bad_values": ("images skipped because the mask has values >= the class count (other than 255)", True, True),
    "orphan_mask": ("masks without a matching image (ignored)", True, True),
    "no_mask": ("images without a mask (not used)", False, False),
    "no_segmentation": ("COCO objects without usable polygons/RLE (not painted)", True, True),
}

#: tolerance in pixels below which clipping a box to the image is not reported (float noise)
CLIP_TOLERANCE = 0.01


@dataclass
class LoadReport:
    """What a reader clipped, dropped or skipped, counted per reason, with the first few messages.

    ``counts[reason]`` is the number of occurrences; ``messages[reason]`` holds up to
    ``max_messages`` one-line messages. With ``strict=True``, :meth:`add` raises the first problem
    that drops or modifies data as a :class:`DataError` instead of recording it.
    """

    strict: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    messages: dict[str, list[str]] = field(default_factory=dict)
    max_messages: int = 5

    def add(self, reason: str, message: str) -> None:
        """Record one problem (``reason`` is a key of :data:`REASONS`); raise it in strict mode."""
        if reason not in REASONS:
            raise KeyError(f"unknown report reason {reason!r}")
        if self.strict and REASONS[reason][1]:
            raise DataError(f"{message} (strict mode: fix the data or load without strict)")
        self.counts[reason] = self.counts.get(reason, 0) + 1
        kept = self.messages.setdefault(reason, [])
        if len(kept) < self.max_messages:
            kept.append(message)

    def count(self, reason: str) -> int:
        """How many times ``reason`` was recorded (0 when never)."""
        return self.counts.get(reason, 0)

    @property
    def total_dropped(self) -> int:
        """Annotations, images and label files dropped or skipped, all reasons together."""
        return sum(n for r, n in self.counts.items() if REASONS[r][2])

    @property
    def total(self) -> int:
        """Every recorded problem, including clipped boxes and corrected sizes."""
        return sum(self.counts.values())

    @property
    def ok(self) -> bool:
        """True when nothing at all was reported."""
        return not self.counts

    def merge(self, other: LoadReport) -> None:
        """Add ``other``'s counts and messages to this report."""
        for reason, n in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + n
            kept = self.messages.setdefault(reason, [])
            for m in other.messages.get(reason, []):
                if len(kept) < self.max_messages:
                    kept.append(m)

    def summary(self) -> str:
        """One line per reason, e.g. ``3 boxes clipped to the image (first: ...)``; '' when ok."""
        lines = []
        for reason in REASONS:
            n = self.counts.get(reason, 0)
            if n:
                first = self.messages.get(reason, [""])[0]
                lines.append(f"{n} {REASONS[reason][0]} (first: {first})")
        return "\n".join(lines)


@dataclass
class Sample:
    """One image and its ground truth.

    Attributes:
        image_id: the source's image id (COCO's id; 1.. in sorted file order for VOC/YOLO).
        file_name: image path relative to the images directory, as written in the annotations.
        path: absolute path of the image file.
        width, height: original size in pixels, after EXIF orientation.
        boxes: ``(N, 4)`` float32 ``xyxy`` in original pixels.
        labels: ``(N,)`` int64 0-based contiguous class indices.
        iscrowd: ``(N,)`` bool; crowd / difficult boxes, ignored in training, kept for evaluation.
        area: optional ``(N,)`` float32 object areas in pixels² from the source (COCO ``area``, e.g.
            the segmentation area; NaN where absent), used by :meth:`DetectionData.to_coco` so that
            COCO's small/medium/large split matches the official evaluation. ``None``: box areas.
    """

    image_id: int
    file_name: str
    path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    area: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.iscrowd = np.asarray(self.iscrowd, dtype=bool).reshape(-1)
        if self.area is not None:
            self.area = np.asarray(self.area, dtype=np.float32).reshape(-1)
        n = len(self.boxes)
        if not (n == len(self.labels) == len(self.iscrowd)) or (self.area is not None and len(self.area) != n):
            raise ValueError(f"Sample {self.image_id}: boxes/labels/iscrowd/area lengths differ")


@dataclass
class DetectionData:
    """A whole data set in the internal form (see the module docstring for conventions).

    Attributes:
        samples: the images, in the source's order (COCO) or sorted file order (VOC, YOLO).
        class_names: ``class_names[label]``.
        category_ids: ``category_ids[label]`` = the source's category id.
        report: what the reader clipped, dropped or skipped.
        source: the annotation file or directory the data came from.
    """

    samples: list[Sample]
    class_names: list[str]
    category_ids: list[int]
    report: LoadReport = field(default_factory=LoadReport)
    source: str = ""

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        """Number of classes (labels are ``0..num_classes-1``)."""
        return len(self.class_names)

    @property
    def num_boxes(self) -> int:
        """Number of boxes over all samples, crowd boxes included."""
        return sum(len(s.boxes) for s in self.samples)

    def to_coco(self) -> dict[str, Any]:
        """A COCO ground-truth dict (for pycocotools evaluation of any source format).

        Images keep their ``image_id``, ``file_name`` and size; annotations get ids ``1..``, the
        original ``category_id``, ``bbox = [x, y, w, h]`` in pixels, ``area`` (the source's area when
        known, else ``w * h``) and ``iscrowd`` (VOC ``difficult`` objects become crowd, i.e. ignored,
        regions).
        """
        images = []
        annotations = []
        for s in self.samples:
            images.append({"id": int(s.image_id), "file_name": s.file_name, "width": int(s.width),
                           "height": int(s.height)})
            areas = s.area.tolist() if s.area is not None else [math.nan] * len(s.boxes)
            for box, label, crowd, area in zip(s.boxes.tolist(), s.labels.tolist(), s.iscrowd.tolist(), areas):
                x1, y1, x2, y2 = box
                w, h = x2 - x1, y2 - y1
                annotations.append({
                    "id": len(annotations) + 1,
                    "image_id": int(s.image_id),
                    "category_id": int(self.category_ids[label]),
                    "bbox": [x1, y1, w, h],
                    "area": area if math.isfinite(area) and area > 0 else w * h,
                    "iscrowd": int(crowd),
                })
        categories = [{"id": int(c), "name": n} for c, n in zip(self.category_ids, self.class_names)]
        return {
            "info": {"description": f"converted from {self.source}" if self.source else "efficientdet"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }


def align_classes(data: DetectionData, class_names: list[str], category_ids: list[int], by_id: bool = False,
                  against: str = "expected classes") -> tuple[DetectionData, list[str]]:
    """``data`` relabelled to another class list (a model's, or the training split's), matched by name.

    ``by_id`` (COCO json data, whose category ids mean something): when every category id of ``data`` is
    among ``category_ids`` the data is returned as it is (ids match, as COCO evaluation does); otherwise
    the names decide as below. VOC / YOLO readers number the classes themselves, so names decide.

    Labels and category ids become those of ``class_names`` / ``category_ids`` for the classes whose names
    match (exactly, else ignoring case); classes of ``data`` that the list lacks keep their boxes under a
    new, unused category id (so a model that cannot predict them scores 0 on them, as it should). When no
    name matches but the class counts are equal, the classes are matched by index (a data set without
    names). Returns the new data (the same object when nothing changes) and warnings to show (``against``
    names the other list in them, e.g. "classes of the model").
    """
    if list(data.class_names) == list(class_names) and list(data.category_ids) == list(category_ids):
        return data, []
    if by_id and set(data.category_ids) <= set(category_ids):
        return data, []
    exact = {n: i for i, n in enumerate(class_names)}
    folded: dict[str, int] = {}
    for i, n in enumerate(class_names):
        folded.setdefault(str(n).casefold(), i)
    mapping: dict[int, int] = {}
    for label, name in enumerate(data.class_names):
        if name in exact:
            mapping[label] = exact[name]
        elif str(name).casefold() in folded:
            mapping[label] = folded[str(name).casefold()]
    notes: list[str] = []
    if not mapping and len(data.class_names) == len(class_names):
        mapping = {i: i for i in range(len(class_names))}
        notes.append(f"{data.source}: no class name in common with {class_names[:5]}...; classes matched by index")
    names, ids = list(class_names), list(category_ids)
    missing = [(label, n) for label, n in enumerate(data.class_names) if label not in mapping]
    first_new_id = max([0, *ids]) + 1
    for k, (label, name) in enumerate(missing):
        mapping[label] = len(names)
        names.append(name)
        ids.append(first_new_id + k)
    if missing:
        notes.append(f"{data.source}: {len(missing)} class(es) not among the {len(class_names)} {against} "
                     f"({', '.join(str(n) for _, n in missing[:8])}); their boxes count as missed")
    lut = np.asarray([mapping[i] for i in range(len(data.class_names))], dtype=np.int64)
    samples = [dataclasses.replace(s, labels=lut[s.labels] if len(s.labels) else s.labels) for s in data.samples]
    return DetectionData(samples, names, ids, data.report, data.source), notes


def empty_sample(image_id: int, file_name: str, path: Path, width: int, height: int) -> Sample:
    """A sample with no boxes."""
    return Sample(image_id, file_name, path, width, height, np.zeros((0, 4), np.float32),
                  np.zeros((0,), np.int64), np.zeros((0,), bool))


def check_box(
    box: tuple[float, float, float, float],
    width: int,
    height: int,
    where: str,
    report: LoadReport,
) -> tuple[float, float, float, float] | None:
    """Validate an ``xyxy`` pixel box against a ``width`` x ``height`` image.

    NaN/inf coordinates and boxes of zero or negative size (before or after clipping) are dropped
    (``None``); boxes reaching outside the image are clipped. Each case is recorded in ``report``
    with ``where`` (e.g. ``"a.json annotation id 17"``) leading the message.
    """
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box):
        report.add("nonfinite", f"{where}: box {_fmt(box)} has NaN/inf coordinates; dropped, fix it")
        return None
    if x2 <= x1 or y2 <= y1:
        report.add("empty_box", f"{where}: box {_fmt(box)} (x1, y1, x2, y2) has zero or negative "
                                "width/height; dropped, fix the annotation")
        return None
    cx1, cy1 = min(max(x1, 0.0), float(width)), min(max(y1, 0.0), float(height))
    cx2, cy2 = min(max(x2, 0.0), float(width)), min(max(y2, 0.0), float(height))
    if cx2 <= cx1 or cy2 <= cy1:
        report.add("empty_box", f"{where}: box {_fmt(box)} (x1, y1, x2, y2) lies outside the "
                                f"{width}x{height} image; dropped, fix the annotation")
        return None
    if max(abs(cx1 - x1), abs(cy1 - y1), abs(cx2 - x2), abs(cy2 - y2)) > CLIP_TOLERANCE:
        report.add("clipped", f"{where}: box {_fmt(box)} (x1, y1, x2, y2) extends outside the "
                              f"{width}x{height} image; clipped to {_fmt((cx1, cy1, cx2, cy2))}")
    return cx1, cy1, cx2, cy2


def _fmt(box: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def make_sample(
    image_id: int,
    file_name: str,
    path: Path,
    width: int,
    height: int,
    boxes: list[tuple[float, float, float, float]],
    labels: list[int],
    iscrowd: list[bool],
    area: list[float] | None = None,
) -> Sample:
    """Build a :class:`Sample` from python lists (boxes ``xyxy`` pixels, areas pixels², NaN = unknown)."""
    return Sample(
        image_id,
        file_name,
        path,
        width,
        height,
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(labels, dtype=np.int64).reshape(-1),
        np.asarray(iscrowd, dtype=bool).reshape(-1),
        None if area is None else np.asarray(area, dtype=np.float32).reshape(-1),
    )
