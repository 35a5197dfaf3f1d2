"""Helpers shared by the annotation readers (type checks, image-file checks)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..images import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, image_size
from .records import LoadReport


def read_bytes(path: Path, what: str) -> bytes:
    """The file's bytes; a one-line DataError naming ``path`` and ``what`` when it is missing or unreadable."""
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise DataError(f"{path}: {what} not found; check the path") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read the {what} ({e.strerror or e})") from e


def decode_utf8(raw: bytes, path: Path) -> str:
    """UTF-8 text (a leading BOM dropped); a one-line DataError with the offending offset otherwise."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (invalid byte at offset {e.start}); save it as UTF-8") from e


def is_int(value: Any) -> bool:
    """True for python/numpy-like integers (``bool`` excluded)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for ints and floats (``bool`` excluded; NaN/inf included, checked later)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def to_float(value: int | float) -> float:
    """``float(value)``; integers too large for a float become ``inf`` (dropped later as non-finite)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def positive_size(value: Any) -> int | None:
    """A positive integral number up to ``MAX_IMAGE_PIXELS`` as ``int`` (``640`` or ``640.0``), else None."""
    if is_int(value) and 0 < value <= MAX_IMAGE_PIXELS:
        return int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and 0 < value <= MAX_IMAGE_PIXELS:
        return int(value)
    return None


def check_dir(path: str | Path, what: str) -> Path:
    """``path`` as a ``Path``; DataError when it is not an existing directory."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: {what} not found; check the path")
    if not p.is_dir():
        raise DataError(f"{p}: {what} must be a directory, got a file; pass the directory")
    return p


def check_image(
    path: Path,
    where: str,
    declared: tuple[int, int] | None,
    report: LoadReport,
) -> tuple[int, int] | None:
    """Check that the image at ``path`` exists and is readable; return its ``(width, height)``.

    ``declared`` is the size written in the annotations (or ``None``); a disagreement is reported
    and the file's size wins. Missing or unreadable files are reported and ``None`` is returned
    (the caller skips the sample).
    """
    try:
        exists = path.is_file()
    except (OSError, ValueError):
        exists = False
    if not exists:
        report.add("missing_image", f"{where}: image file {path} not found; sample skipped, add the file or "
                                    "remove the record")
        return None
    try:
        size = image_size(path)
    except DataError as e:
        report.add("unreadable_image", f"{where}: {e}; sample skipped")
        return None
    if declared is not None and tuple(declared) != size:
        report.add("size_mismatch", f"{where}: size {declared[0]}x{declared[1]} in the annotations but the "
                                    f"file is {size[0]}x{size[1]} (after EXIF orientation); the file's "
                                    "size is used, fix the annotation")
    return size


def list_images(images_dir: Path) -> list[Path]:
    """Image files under ``images_dir`` (recursively), sorted by relative path."""
    found = [p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    return sorted(found, key=lambda p: p.relative_to(images_dir).as_posix())


def find_image(images_dir: Path, stem: str) -> Path | None:
    """The image in ``images_dir`` whose name is ``stem`` + an image extension, if any."""
    for ext in IMAGE_EXTENSIONS:
        for candidate in (images_dir / (stem + ext), images_dir / (stem + ext.upper())):
            if candidate.is_file():
                return candidate
    return None
