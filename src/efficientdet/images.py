"""Image loading: any file, mode or array the user may hand us becomes an 8-bit RGB PIL image.

Every reader of pixels in the project goes through :func:`load_image` or :func:`to_pil`, so that
EXIF orientation, odd modes (16-bit, float, CMYK, palette with transparency, alpha) and broken files
are handled the same way in prediction, evaluation and training. Problems are raised as
:class:`~efficientdet.errors.DataError` with a one-line message naming the file.

Sizes are always ``(width, height)`` in pixels *after* EXIF orientation.
"""

from __future__ import annotations

import io
import os
import stat
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError

#: file suffixes read as still images (folders, globs, calibration sets)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}

#: Largest image accepted, in pixels (width * height); PIL's default decompression-bomb limit.
MAX_IMAGE_PIXELS = 178_956_970

#: File extensions treated as images when a directory is scanned.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I;16S", "I;16BS", "I;16LS", "I")


def _name(source: str | Path | bytes) -> str:
    return "<image bytes>" if isinstance(source, bytes | bytearray) else str(source)


def _open(source: str | Path | bytes) -> Image.Image:
    """Open (header only) with the file checks and the decompression-bomb guard; raise DataError."""
    name = _name(source)
    if isinstance(source, bytes | bytearray):
        if len(source) == 0:
            raise DataError(f"{name}: the image data is empty (0 bytes); pass the bytes of an image file")
        stream: Any = io.BytesIO(bytes(source))
    else:
        path = Path(source)
        try:
            st = path.stat()
        except (OSError, ValueError) as e:
            if isinstance(e, FileNotFoundError | NotADirectoryError):
                raise DataError(f"{name}: image file not found; check the path") from e
            raise DataError(f"{name}: cannot read the image file ({_reason(e)}); check the path") from e
        if stat.S_ISDIR(st.st_mode):
            raise DataError(f"{name}: is a directory, not an image file; pass the path of an image")
        size = st.st_size
        if size == 0:
            raise DataError(f"{name}: the image file is empty (0 bytes); replace or remove it")
        stream = path
    try:
        with warnings.catch_warnings():  # bomb warnings are handled below; corrupt-tag chatter is noise
            warnings.simplefilter("ignore")
            image = Image.open(stream)
    except Image.DecompressionBombError as e:
        raise DataError(
            f"{name}: image too large (over {MAX_IMAGE_PIXELS:,} pixels); refusing to decode it, "
            "resize it first"
        ) from e
    except UnidentifiedImageError as e:
        raise DataError(f"{name}: not an image file (format not recognised); pass a JPEG, PNG, ...") from e
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:
        raise DataError(f"{name}: cannot read the image header ({_reason(e)}); replace the file") from e
    except Exception as e:  # PIL plugins raise assorted types on corrupt headers
        raise DataError(f"{name}: cannot read the image header ({_reason(e)}); replace the file") from e
    w, h = image.size
    if w <= 0 or h <= 0:
        image.close()
        raise DataError(f"{name}: the image header has an invalid size {w}x{h}; replace the file")
    if w * h > MAX_IMAGE_PIXELS:
        image.close()
        raise DataError(
            f"{name}: image too large ({w}x{h} = {w * h:,} pixels, limit {MAX_IMAGE_PIXELS:,}); "
            "refusing to decode it, resize it first"
        )
    return image


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:200]


def _orientation(image: Image.Image) -> int:
    """EXIF orientation (1..8) from the header only; 1 when absent or unreadable."""
    try:
        # PNG's getexif() decodes the whole file when no eXIf chunk precedes the pixels; only
        # header EXIF is honoured so that image_size() and load_image() always agree.
        if image.format == "PNG" and "exif" not in image.info:
            return 1
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
        return int(value) if int(value) in _TRANSPOSE else 1
    except Exception:  # a broken EXIF block must not make a good image unreadable
        return 1


def _rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB (16-bit scaled by >> 8, float assumed in [0, 1] or [0, 255])."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(image).astype(np.int64)
        arr = (np.clip(arr, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "F":
        return Image.fromarray(_float_to_uint8(np.asarray(image, dtype=np.float64)), "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        return image.convert("RGBA").convert("RGB")
    try:
        return image.convert("RGB")  # L, 1, P, RGBA/LA/PA (alpha dropped), CMYK, YCbCr, ...
    except ValueError:
        return image.convert("RGBA").convert("RGB")


def _float_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Float pixels -> uint8: values in [0, 1] are scaled by 255, larger ranges taken as 0-255."""
    arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
    if arr.size and arr.max() <= 1.0:
        arr = arr * 255.0
    return np.clip(np.round(arr), 0, 255).astype(np.uint8)


def _upright_rgb(image: Image.Image) -> Image.Image:
    """Decode ``image``, convert it to RGB and apply its EXIF orientation.

    A rotated result has its orientation metadata removed, so converting it again (``to_pil`` on
    what ``load_image`` returned) never rotates twice. May return ``image`` itself when nothing
    changes.
    """
    orientation = _orientation(image)
    image.load()
    rgb = _rgb(image)
    if orientation != 1:
        rgb = rgb.transpose(_TRANSPOSE[orientation])
        for key in ("exif", "xmp", "XML:com.adobe.xmp"):
            rgb.info.pop(key, None)
    return rgb


def load_image(source: str | Path | bytes) -> Image.Image:
    """Read an image file (or its bytes) as a fully decoded 8-bit RGB PIL image.

    EXIF orientation is applied, so the returned size is the displayed ``(width, height)``.
    Grayscale, 1-bit, palette (with transparency), alpha (dropped), CMYK, 16-bit (scaled by >> 8)
    and 32-bit float images are converted to RGB.

    Raises:
        DataError: missing, empty, truncated or non-image file, or more than ``MAX_IMAGE_PIXELS``
            pixels (checked from the header, before any pixel is decoded).
    """
    name = _name(source)
    image = _open(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rgb = _upright_rgb(image)
            rgb = image.copy() if rgb is image else rgb  # the file is closed below
            rgb.load()
    except DataError:
        raise
    except MemoryError as e:
        raise DataError(f"{name}: not enough memory to decode the image; resize it first") from e
    except Exception as e:  # truncated data, corrupt chunks, unsupported variants, ...
        what = "truncated or corrupt image data" if "truncat" in str(e).lower() else "cannot decode the image"
        raise DataError(f"{name}: {what} ({_reason(e)}); replace the file") from e
    finally:
        image.close()
    if rgb.mode != "RGB":  # pragma: no cover - _rgb always returns RGB
        raise DataError(f"{name}: could not convert mode {image.mode} to RGB")
    return rgb


#: the end-of-image markers a complete file has near its end (trailing padding after them is allowed)
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}
_TAIL_BYTES = 4096


def _check_complete(path: Path, fmt: str | None) -> None:
    """Raise DataError when a JPEG / PNG file stops before its end-of-image marker (a partial copy or
    download): its header reads fine, so without this the failure would come at decoding, mid-run."""
    marker = _END_MARKERS.get(fmt or "")
    if marker is None:
        return
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, 2) - _TAIL_BYTES))
        tail = f.read()
    if marker not in tail:
        raise DataError(f"{path}: truncated {fmt} file (it ends before its end-of-image marker); replace the file")


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` in pixels after EXIF orientation, read from the header (and, for JPEG / PNG, the
    last 4 KB: a truncated file is refused here rather than when it is decoded).

    Raises:
        DataError: missing, empty, truncated or non-image file, or an image larger than ``MAX_IMAGE_PIXELS``.
    """
    image = _open(path)
    try:
        _check_complete(Path(path), image.format)
        w, h = image.size
        if _orientation(image) in (5, 6, 7, 8):
            w, h = h, w
        return int(w), int(h)
    finally:
        image.close()


def _array_to_pil(arr: np.ndarray, what: str) -> Image.Image:
    """HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA) array -> RGB PIL image."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise DataError(
            f"{what}: unsupported shape {tuple(arr.shape)}; expected HxW (grayscale), HxWx3 (RGB) or "
            "HxWx4 (RGBA)"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{what}: empty image of shape {tuple(arr.shape)}; pass at least 1x1 pixels")
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        out = (arr >> 8).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise DataError(f"{what}: the image contains NaN or infinite values; fix the array")
        out = np.clip(np.round(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    else:
        raise DataError(
            f"{what}: unsupported dtype {arr.dtype}; pass uint8 (0-255), uint16 (0-65535) or float in "
            "[0, 1], e.g. arr.astype(np.uint8)"
        )
    out = np.ascontiguousarray(out)
    if out.ndim == 2:
        return Image.fromarray(out, "L").convert("RGB")
    if out.shape[2] == 4:
        return Image.fromarray(out, "RGBA").convert("RGB")
    return Image.fromarray(out, "RGB")


def to_pil(image: Any) -> Image.Image:
    """Turn any supported image into an 8-bit RGB PIL image.

    Accepted inputs:
        * a path (``str`` / ``Path``) or the bytes of an image file: :func:`load_image`;
        * a PIL image of any mode (converted as in :func:`load_image`; EXIF orientation applied);
        * a numpy array ``HxWx3`` RGB, ``HxW`` grayscale or ``HxWx4`` RGBA; dtype uint8, uint16
          (scaled by >> 8), bool, or float in [0, 1];
        * a torch tensor ``(3, H, W)`` / ``(1, H, W)`` / ``(4, H, W)`` / ``(H, W)`` (uint8 0-255 or
          float in [0, 1]) or ``(H, W, 3)`` uint8 (a ``(3, H, 3)`` tensor is taken as CHW).

    Raises:
        DataError: unsupported type, shape or dtype, or an unreadable file.
    """
    if isinstance(image, str | Path | bytes | bytearray | os.PathLike):
        return load_image(image if isinstance(image, str | bytes | bytearray) else Path(image))
    if isinstance(image, Image.Image):
        what = "PIL image"
        try:
            return _upright_rgb(image)
        except Exception as e:
            raise DataError(f"{what}: cannot convert mode {image.mode} to RGB ({_reason(e)})") from e
    if isinstance(image, np.ndarray):
        return _array_to_pil(image, "numpy image")
    torch = sys.modules.get("torch")  # a tensor exists only if torch is imported; never import it here
    if torch is not None and isinstance(image, torch.Tensor):
        what = "tensor image"
        t = image.detach().cpu()
        if t.ndim == 4:
            raise DataError(f"{what}: got a batch of shape {tuple(t.shape)}; pass one image (C, H, W)")
        if t.dtype == torch.bfloat16 or t.dtype == torch.float16:
            t = t.float()
        hwc = t.ndim == 3 and t.dtype == torch.uint8 and t.shape[2] == 3 and t.shape[0] != 3
        if t.ndim == 3 and t.shape[0] in (1, 3, 4) and not hwc:
            t = t.permute(1, 2, 0)  # CHW, the torch convention
        elif t.ndim == 3 and not (t.shape[2] in (1, 3, 4) and t.dtype == torch.uint8):
            raise DataError(
                f"{what}: unsupported shape {tuple(t.shape)} / dtype {t.dtype}; expected (3, H, W) "
                "uint8 or float in [0, 1], or (H, W, 3) uint8"
            )
        if t.dtype not in (torch.uint8, torch.bool, torch.float32, torch.float64):
            raise DataError(
                f"{what}: unsupported dtype {t.dtype}; pass uint8 (0-255) or float in [0, 1]"
            )
        return _array_to_pil(t.numpy(), what)
    raise DataError(
        f"unsupported image type {type(image).__name__}; pass a path, bytes, PIL image, numpy array "
        "or torch tensor"
    )


def is_single_image(x: object) -> bool:
    """Whether ``x`` is one image (a path, PIL image, 2-D/3-D array or tensor) rather than a collection."""
    if isinstance(x, str | Path | Image.Image | os.PathLike):
        return True
    torch = sys.modules.get("torch")
    if isinstance(x, np.ndarray) or (torch is not None and isinstance(x, torch.Tensor)):
        return x.ndim in (2, 3)  # type: ignore[union-attr]
    return False


__all__ = ["IMAGE_EXTENSIONS", "is_single_image", "MAX_IMAGE_PIXELS", "image_size", "load_image", "to_pil"]
