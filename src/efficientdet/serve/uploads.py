"""Uploaded bytes -> a decoded RGB image, refusing what must not be decoded.

Every refusal is an :class:`UploadError` carrying the HTTP status and a one-line message for the client:
415 when the bytes are not an image Pillow recognises, 400 for an empty, truncated or corrupt file and
for a decompression bomb. The bomb check reads only the header (``Image.open`` is lazy): an image of more
than ``max_pixels`` pixels is refused before a single pixel is decoded, so a 50 KB PNG that claims
40000x40000 pixels costs nothing.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from ..images import load_image


class UploadError(Exception):
    """A rejected upload: ``status`` (HTTP) and a one-line ``message`` for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def decode_upload(data: bytes, max_pixels: int, name: str = "upload") -> Image.Image:
    """Decode an uploaded image file (any format Pillow reads) to 8-bit RGB, EXIF orientation applied.

    Raises:
        UploadError: 400 empty / bomb / corrupt, 415 not an image.
    """
    if not data:
        raise UploadError(400, f"{name}: the request has no image data (0 bytes); send an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own bomb warning: the explicit check below decides
            header = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise UploadError(400, f"{name}: image too large (a decompression bomb); refusing to decode it, limit "
                               f"{max_pixels:,} pixels") from None
    except UnidentifiedImageError:
        raise UploadError(415, f"{name}: not an image Pillow can read (got {_sniff(data)}); send a JPEG, PNG, "
                               "WebP, BMP, GIF or TIFF file") from None
    except Exception as exc:
        raise UploadError(400, f"{name}: cannot read the image header ({_one_line(exc)})") from None
    width, height = header.size
    header.close()
    if width * height > max_pixels:
        raise UploadError(400, f"{name}: image too large ({width}x{height} = {width * height:,} pixels, limit "
                               f"{max_pixels:,}); refusing to decode it, resize it first")
    try:
        return load_image(data)
    except DataError as exc:
        raise UploadError(400, f"{name}: {_one_line(exc).removeprefix('<image bytes>: ')}") from None
    except Exception as exc:  # anything else Pillow raises while decoding
        raise UploadError(400, f"{name}: cannot decode the image ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def _sniff(data: bytes) -> str:
    """A short description of non-image bytes for the error message."""
    head = data[:64]
    if head.lstrip().startswith((b"{", b"[")):
        return "JSON"
    if head.lstrip().lower().startswith((b"<!doctype", b"<html", b"<?xml")):
        return "HTML/XML"
    if head.startswith(b"%PDF"):
        return "PDF"
    try:
        head.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return f"{len(data):,} bytes of unknown binary data"
