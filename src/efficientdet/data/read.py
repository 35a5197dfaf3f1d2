"""One entry point for every annotation format: :func:`read_dataset`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError, closest
from .coco import read_coco
from .records import DetectionData
from .voc import read_voc
from .yolo import read_yolo

FORMATS = ("auto", "coco", "voc", "yolo")


def detect_format(annotations: str | Path) -> str:
    """``'coco'`` for a ``.json`` file, ``'voc'`` for a directory of ``.xml``, ``'yolo'`` for ``.txt``."""
    p = Path(annotations)
    if p.is_file():
        if p.suffix.lower() == ".json":
            return "coco"
        raise DataError(f"{p}: cannot tell the annotation format from this file; pass a COCO .json file, a "
                        "directory of VOC .xml or YOLO .txt files, or set the format")
    if p.is_dir():
        if any(q.suffix.lower() == ".xml" for q in p.iterdir()):
            return "voc"
        if any(q.suffix.lower() == ".txt" for q in p.rglob("*.txt")):
            return "yolo"
        raise DataError(f"{p}: no .xml (VOC) or .txt (YOLO) annotation files in this directory; set the "
                        "format or pass the right directory")
    raise DataError(f"{p}: annotations not found; check the path")


def resolve_format(format: str, annotations: str | Path) -> str:
    """``format`` checked and lower-cased, ``'auto'`` replaced by :func:`detect_format`'s answer."""
    fmt = str(format).lower()
    if fmt not in FORMATS:
        raise DataError(f"unknown annotation format {format!r}{closest(fmt, FORMATS)}; use one of "
                        f"{', '.join(FORMATS)}")
    return detect_format(annotations) if fmt == "auto" else fmt


def require_images(data: object, annotations: str | Path, images: str | Path | None = None) -> None:
    """Raise a one-line :class:`DataError` when not a single image of ``annotations`` could be used
    (``data``: a detection or segmentation data set with its load report). Scores, anchors or training
    on nothing would only hide it; the usual cause is an images folder the file names are not under."""
    if len(data):  # type: ignore[arg-type]
        return
    why = data.report.summary().splitlines()  # type: ignore[attr-defined]
    reason = f" ({why[0]})" if why else " (it lists none)"
    fix = (f"check that {images} is the folder its file names are relative to" if images is not None
           else "check the annotations and the image paths")
    raise DataError(f"{annotations}: no usable image{reason}; {fix}")


def read_dataset(
    format: str,
    images: str | Path,
    annotations: str | Path,
    strict: bool = False,
    class_names: Sequence[str] | str | Path | None = None,
    check_images: bool = True,
) -> DetectionData:
    """Read a detection data set in any supported format.

    Args:
        format: ``'coco'``, ``'voc'``, ``'yolo'`` or ``'auto'`` (see :func:`detect_format`).
        images: the images directory.
        annotations: the COCO ``.json`` file, or the VOC annotations / YOLO labels directory.
        strict: raise the first problem that would drop or modify data (see ``LoadReport``).
        class_names: VOC/YOLO only: the class names in label order (YOLO: or a names file).
        check_images: COCO/VOC: check the image files and read their sizes (YOLO always does).
    """
    fmt = resolve_format(format, annotations)
    if fmt == "coco":
        if class_names is not None:
            raise DataError("class_names cannot be given for COCO data: the names come from 'categories'")
        return read_coco(images, annotations, strict=strict, check_images=check_images)
    if fmt == "voc":
        if isinstance(class_names, str | Path):
            from .yolo import load_names

            class_names = load_names(class_names)
        return read_voc(images, annotations, class_names=class_names, strict=strict,
                        check_images=check_images)
    return read_yolo(images, annotations, class_names=class_names, strict=strict)
