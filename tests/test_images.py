"""efficientdet.images: modes, EXIF orientation, broken files, decompression bombs, to_pil inputs."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from efficientdet.errors import DataError
from efficientdet.images import MAX_IMAGE_PIXELS, image_size, load_image, to_pil


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _half_red_half_blue(w: int = 40, h: int = 20) -> Image.Image:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    arr[:, w // 2 :] = (0, 0, 255)
    return Image.fromarray(arr, "RGB")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


# ---------------------------------------------------------------------------------------------- modes


def test_grayscale_png(tmp_path):
    arr = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    img = load_image(_save(Image.fromarray(arr, "L"), tmp_path / "g.png"))
    assert img.mode == "RGB" and img.size == (8, 6)
    out = np.asarray(img)
    assert (out[..., 0] == arr).all() and (out[..., 1] == arr).all() and (out[..., 2] == arr).all()


def test_rgba_drops_alpha_keeps_colour(tmp_path):
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[..., 0], arr[..., 1], arr[..., 2], arr[..., 3] = 10, 200, 30, 255
    arr[0, 0, 3] = 0  # one transparent pixel
    img = load_image(_save(Image.fromarray(arr, "RGBA"), tmp_path / "a.png"))
    assert img.mode == "RGB"
    assert tuple(np.asarray(img)[2, 2]) == (10, 200, 30)


def test_la_mode(tmp_path):
    img = Image.new("LA", (3, 2), (77, 128))
    out = load_image(_save(img, tmp_path / "la.png"))
    assert out.mode == "RGB" and tuple(np.asarray(out)[1, 1]) == (77, 77, 77)


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (5, 5), 1)
    img.putpalette([0, 0, 0, 250, 20, 40] + [0] * (256 * 3 - 6))
    img.info["transparency"] = 0
    path = _save(img, tmp_path / "p.png", transparency=0)
    with Image.open(path) as check:
        assert check.mode == "P" and "transparency" in check.info
    out = load_image(path)
    assert out.mode == "RGB" and tuple(np.asarray(out)[2, 2]) == (250, 20, 40)


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16bit_scaled_not_clipped(tmp_path, mode):
    arr = np.array([[0, 256, 0xABCD, 65535]], dtype=np.uint16)
    raw = arr.astype(">u2" if mode == "I;16B" else "<u2").tobytes()
    img = Image.frombytes(mode, (4, 1), raw)
    assert img.mode == mode
    # in-memory 16-bit image through to_pil and a 16-bit PNG on disk through load_image
    assert np.asarray(to_pil(img))[0, :, 0].tolist() == [0, 1, 0xAB, 255]
    disk = Image.frombytes("I;16", (4, 1), arr.astype("<u2").tobytes())
    out = load_image(_save(disk, tmp_path / "16.png"))
    assert np.asarray(out)[0, :, 0].tolist() == [0, 1, 0xAB, 255]


def test_mode_I_32bit(tmp_path):
    arr = np.array([[0, 512, 65535]], dtype=np.int32)
    out = to_pil(Image.fromarray(arr, "I"))
    assert np.asarray(out)[0, :, 1].tolist() == [0, 2, 255]


def test_float_mode_tiff(tmp_path):
    arr = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    out = load_image(_save(Image.fromarray(arr, "F"), tmp_path / "f.tif"))
    assert np.asarray(out)[0, :, 0].tolist() == [0, 128, 255]


def test_cmyk(tmp_path):
    img = Image.new("CMYK", (4, 3), (0, 255, 255, 0))  # pure red in CMYK
    out = load_image(_save(img, tmp_path / "c.tif"))
    assert out.mode == "RGB" and out.size == (4, 3)
    assert tuple(np.asarray(out)[1, 1]) == (255, 0, 0)
    out_jpg = load_image(_save(img, tmp_path / "c.jpg", quality=95))
    r, g, b = np.asarray(out_jpg)[1, 1].tolist()
    assert r > 200 and g < 60 and b < 60


def test_one_bit(tmp_path):
    img = Image.new("1", (4, 4), 0)
    img.putpixel((1, 2), 1)
    out = np.asarray(load_image(_save(img, tmp_path / "b.png")))
    assert tuple(out[2, 1]) == (255, 255, 255) and tuple(out[0, 0]) == (0, 0, 0)


def test_one_by_one_and_bytes(tmp_path):
    path = _save(Image.new("RGB", (1, 1), (1, 2, 3)), tmp_path / "tiny.png")
    assert load_image(path).size == (1, 1)
    assert tuple(np.asarray(load_image(path.read_bytes()))[0, 0]) == (1, 2, 3)
    assert load_image(str(path)).size == (1, 1)


# ---------------------------------------------------------------------------------------------- EXIF


def test_exif_rotated_jpeg(tmp_path):
    # stored 40x20 (left red, right blue); orientation 6 = rotate 90 deg clockwise for display
    path = _save(_half_red_half_blue(), tmp_path / "rot.jpg", exif=_exif(6), quality=95)
    with Image.open(path) as raw:
        assert raw.size == (40, 20)
    img = load_image(path)
    assert img.size == (20, 40) and image_size(path) == (20, 40)
    arr = np.asarray(img).astype(int)
    assert arr[5, 10, 0] > 200 and arr[5, 10, 2] < 60  # top: the former left half (red)
    assert arr[35, 10, 2] > 200 and arr[35, 10, 0] < 60  # bottom: blue


def test_exif_mirrored_png(tmp_path):
    # orientation 2 = mirrored horizontally: red must end up on the right
    path = _save(_half_red_half_blue(), tmp_path / "m.png", exif=_exif(2))
    img = load_image(path)
    assert img.size == (40, 20) == image_size(path)
    arr = np.asarray(img)
    assert tuple(arr[10, 35]) == (255, 0, 0) and tuple(arr[10, 5]) == (0, 0, 255)


def test_exif_orientation_8_pil_input(tmp_path):
    path = _save(_half_red_half_blue(), tmp_path / "r8.png", exif=_exif(8))
    with Image.open(path) as im:
        out = to_pil(im)
    # orientation 8 = rotate 90 deg counter-clockwise for display: left (red) goes to the bottom
    assert out.size == (20, 40) == image_size(path)
    arr = np.asarray(out)
    assert tuple(arr[35, 10]) == (255, 0, 0) and tuple(arr[5, 10]) == (0, 0, 255)


# ---------------------------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.jpg.*not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(DataError, match="nope.jpg"):
        image_size(tmp_path / "nope.jpg")


def test_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png.*empty"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(DataError, match="empty"):
        load_image(b"")


def test_not_an_image(tmp_path):
    (tmp_path / "notes.jpg").write_text("hello, I am text\n")
    with pytest.raises(DataError, match=r"notes\.jpg.*not an image"):
        load_image(tmp_path / "notes.jpg")


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(DataError, match="directory"):
        load_image(tmp_path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(tmp_path, fmt):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format=fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"cut\.{fmt.lower()}.*(truncated|corrupt|decode)"):
        load_image(path)
    # the header is intact, but the data-set readers must refuse it at load, not mid-training: the size check
    # looks for the end-of-image marker in the last 4 KB
    with pytest.raises(DataError, match=rf"cut\.{fmt.lower()}: truncated {fmt} file"):
        image_size(path)
    padded = tmp_path / f"padded.{fmt.lower()}"  # complete, with bytes after the end marker: fine
    padded.write_bytes(data + b"\0" * 100)
    assert image_size(padded) == (64, 64) and load_image(padded).size == (64, 64)


def test_decompression_bomb_refused_fast(tmp_path):
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 10))
            + _png_chunk(b"IEND", b""))
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"bomb\.png.*too large"):
        load_image(path)
    with pytest.raises(DataError, match="too large"):
        image_size(path)
    assert time.perf_counter() - t0 < 1.0
    assert MAX_IMAGE_PIXELS < 30000 * 30000


def test_just_over_limit_refused(tmp_path):
    # between 1x and 2x the limit PIL itself only warns: our guard must still refuse
    side = 14000  # 196M pixels
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")
    with pytest.raises(DataError, match="too large"):
        load_image(data)


# ---------------------------------------------------------------------------------------------- to_pil


def test_to_pil_numpy():
    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[1, 2] = (9, 8, 7)
    assert tuple(np.asarray(to_pil(rgb))[1, 2]) == (9, 8, 7) and to_pil(rgb).size == (7, 5)
    gray = np.full((5, 7), 100, np.uint8)
    assert tuple(np.asarray(to_pil(gray))[0, 0]) == (100, 100, 100)
    rgba = np.concatenate([rgb, np.full((5, 7, 1), 255, np.uint8)], axis=2)
    assert tuple(np.asarray(to_pil(rgba))[1, 2]) == (9, 8, 7)
    u16 = np.full((2, 2, 3), 0x8000, np.uint16)
    assert tuple(np.asarray(to_pil(u16))[0, 0]) == (128, 128, 128)


@pytest.mark.parametrize(
    "arr, match",
    [
        (np.zeros((4, 4, 5), np.uint8), "shape"),
        (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
        (np.zeros((4, 4, 3), np.int64), "dtype"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        (np.full((2, 2, 3), np.nan, np.float32), "NaN"),
    ],
)
def test_to_pil_numpy_errors(arr, match):
    with pytest.raises(DataError, match=match):
        to_pil(arr)


def test_to_pil_tensors():
    chw = torch.zeros(3, 4, 6, dtype=torch.uint8)
    chw[0, 1, 2] = 200
    out = to_pil(chw)
    assert out.size == (6, 4) and tuple(np.asarray(out)[1, 2]) == (200, 0, 0)
    f = torch.zeros(3, 4, 6)
    f[1, 0, 0] = 1.0
    assert tuple(np.asarray(to_pil(f))[0, 0]) == (0, 255, 0)
    hwc = torch.zeros(4, 6, 3, dtype=torch.uint8)
    hwc[3, 5] = torch.tensor([1, 2, 3], dtype=torch.uint8)
    out = to_pil(hwc)
    assert out.size == (6, 4) and tuple(np.asarray(out)[3, 5]) == (1, 2, 3)
    assert to_pil(torch.zeros(1, 4, 6)).size == (6, 4)


def test_to_pil_tensor_errors():
    with pytest.raises(DataError, match="batch"):
        to_pil(torch.zeros(2, 3, 4, 4))
    with pytest.raises(DataError, match="shape"):
        to_pil(torch.zeros(5, 4, 6))
    with pytest.raises(DataError, match="dtype"):
        to_pil(torch.zeros(3, 4, 4, dtype=torch.int32))
    with pytest.raises(DataError, match="unsupported image type"):
        to_pil(12)


def test_to_pil_path_and_pil_modes(tmp_path):
    path = _save(Image.new("L", (3, 2), 50), tmp_path / "x.png")
    assert to_pil(path).mode == "RGB" and to_pil(str(path)).size == (3, 2)
    assert to_pil(Image.new("RGBA", (2, 2), (5, 6, 7, 0))).getpixel((0, 0)) == (5, 6, 7)
    assert to_pil(Image.new("CMYK", (2, 2), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)


def test_loaded_rotated_image_is_not_rotated_again(tmp_path):
    """load_image applies EXIF orientation once; converting its result again keeps it upright."""
    from efficientdet.images import load_image, to_pil

    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (32, 20), (10, 20, 30)).save(tmp_path / "rot.jpg", exif=exif.tobytes())
    loaded = load_image(tmp_path / "rot.jpg")
    assert loaded.size == (20, 32)
    assert to_pil(loaded).size == (20, 32)
