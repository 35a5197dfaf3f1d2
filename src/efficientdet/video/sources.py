"""Frame sources: video files, network streams, webcams and numbered image sequences.

Every source yields :class:`Frame` objects in decoding order: the 0-based index of the frame in the
source, its time in seconds since the first frame, and the picture as an 8-bit RGB PIL image (what
:class:`~efficientdet.Detector` takes). Videos, URLs and webcams are decoded with PyAV (FFmpeg); image
sequences are read with :func:`efficientdet.images.load_image`.

Problems that prevent opening a source raise :class:`~efficientdet.errors.DataError` (a missing file,
a file that is no video, a codec FFmpeg cannot decode, a URL that cannot be reached, no webcam).
Problems in the middle of a source do not raise: a corrupt packet or an unreadable image in a sequence
is skipped and counted (``source.skipped``, described in ``source.problems``), and a stream that stops
delivering data (a dropped connection, a file that ends before its index says) ends the iteration
with ``source.stop_reason`` set, so that the caller keeps and finalises what it has written.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import ConfigError, DataError
from ..images import IMAGE_EXTENSIONS, image_size, load_image

#: File suffixes read as videos (anything FFmpeg demuxes also works through :func:`open_source`).
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp")
#: URL schemes handed to FFmpeg as network streams.
STREAM_SCHEMES = ("http", "https", "rtsp", "rtsps", "rtmp", "rtmps", "udp", "tcp", "srt")

_PRINTF = re.compile(r"%(0?)(\d*)d")  # the frame-number field of an image-sequence pattern
_NUMBER = re.compile(r"(\d+)(?!.*\d)")  # the last number in a file name


@dataclass
class Frame:
    """One decoded frame.

    Attributes:
        index: 0-based position of the frame in the source (counted before ``vid_stride``).
        time_s: seconds since the start of the source (the frame's presentation timestamp; for image
            sequences ``index / fps``).
        image: the picture, 8-bit RGB.
    """

    index: int
    time_s: float
    image: Image.Image


class FrameSource:
    """Base class of the sources: iterate for frames; ``close()`` (or ``with``) releases the decoder.

    Attributes:
        name: the source as the user gave it (for messages). stem: base name for output files.
        width, height: frame size in pixels, upright (a video's display rotation applied). fps: nominal
            frame rate (a Fraction; 30 when unknown).
        total: number of frames when the container says so, else None (live streams, some formats).
        live: whether the source is a stream or a camera (no fixed length).
        decoded: frames produced so far. skipped: corrupt packets / unreadable images skipped.
        problems: one line per skipped item (at most 20 kept). stop_reason: why the source ended
            early, or None when it ended normally.
    """

    name: str
    stem: str
    width: int
    height: int
    fps: Fraction
    total: int | None = None
    live: bool = False

    def __init__(self) -> None:
        self.decoded = 0
        self.skipped = 0
        self.problems: list[str] = []
        self.stop_reason: str | None = None

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    def frames(self, vid_stride: int = 1) -> Iterator[Frame]:
        """Frames ``0, vid_stride, 2 * vid_stride, ...`` (the others are decoded but not converted)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the decoder (idempotent)."""

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _skip(self, line: str) -> None:
        self.skipped += 1
        if len(self.problems) < 20:
            self.problems.append(line)


# -- classification ---------------------------------------------------------------------------------------
def is_url(text: str) -> bool:
    """Whether ``text`` is a network stream URL (``http(s)://``, ``rtsp://``, ...)."""
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.lower() in STREAM_SCHEMES


def is_sequence_pattern(text: str) -> bool:
    """Whether ``text`` is a numbered image-sequence pattern such as ``frames/%05d.png``."""
    return bool(_PRINTF.search(Path(text).name)) and Path(text).suffix.lower() in IMAGE_EXTENSIONS


_WEBCAM_DEVICE = re.compile(r"/dev/video(\d+)")


def is_video_source(source: str | int | Path) -> bool:
    """Whether ``predict`` should treat ``source`` as a video: a webcam index, a URL, a video file
    (by suffix) or an image-sequence pattern. An existing image file or a folder is not a video."""
    if isinstance(source, int):
        return True
    text = str(source)
    if (text.isdigit() and not Path(text).exists()) or _WEBCAM_DEVICE.fullmatch(text):
        return True
    return is_url(text) or Path(text).suffix.lower() in VIDEO_SUFFIXES or is_sequence_pattern(text)


def open_source(
    source: str | int | Path,
    *,
    timeout: float | None = 10.0,
    sequence_fps: float = 30.0,
    options: dict[str, str] | None = None,
) -> FrameSource:
    """Open a video file, a stream URL, a webcam or an image sequence as a :class:`FrameSource`.

    Args:
        source: a video file (anything FFmpeg reads: mp4, mov, avi, mkv, webm, ...); an ``http(s)://``,
            ``rtsp://``, ... URL; a webcam index (``0`` or ``"0"``: ``/dev/video0`` via v4l2 on Linux,
            AVFoundation on macOS); a numbered image-sequence pattern (``frames/%05d.png``) or a folder
            of numbered image files (ordered by the last number in their names).
        timeout: seconds to wait for a stream to open and for each read (streams and webcams only).
        sequence_fps: the frame rate given to image sequences (they carry none).
        options: FFmpeg options for a URL or webcam, e.g. ``{"rtsp_transport": "tcp"}``.

    Raises:
        DataError: the source does not exist, cannot be opened or decoded, or has no video stream.
    """
    if isinstance(source, int) or (isinstance(source, str) and source.isdigit() and not Path(source).exists()):
        return _open_webcam(int(source), timeout, options)
    text = str(source)
    device = _WEBCAM_DEVICE.fullmatch(text)
    if device:  # /dev/videoN: webcam N
        return _open_webcam(int(device.group(1)), timeout, options)
    if is_url(text):
        return AVSource(text, text, live=True, timeout=timeout, options=options)
    path = Path(text)
    if path.is_dir() or is_sequence_pattern(text):
        return ImageSequenceSource(text, fps=sequence_fps)
    if not path.exists():
        raise DataError(f"{text}: no such file; check the path (videos, URLs, webcam indexes and image-sequence "
                        "patterns such as frames/%05d.png are accepted)")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        raise DataError(f"{text}: is an image, not a video; pass it to predict as an image")
    return AVSource(text, text)


def _open_webcam(index: int, timeout: float | None, options: dict[str, str] | None) -> FrameSource:
    """A webcam by index: ``/dev/videoN`` through v4l2 on Linux, AVFoundation device N on macOS."""
    if sys.platform.startswith("linux"):
        device = f"/dev/video{index}"
        if not os.path.exists(device):
            raise DataError(f"webcam {index}: {device} does not exist (no camera found); connect a camera "
                            "(and check you may read /dev/video*) or pass a video file or URL")
        return AVSource(device, f"webcam {index}", live=True, format="v4l2", timeout=timeout, stem=f"webcam{index}",
                        options=options)
    if sys.platform == "darwin":
        return AVSource(str(index), f"webcam {index}", live=True, format="avfoundation", timeout=timeout,
                        stem=f"webcam{index}", options={"framerate": "30", **(options or {})})
    raise ConfigError(f"webcam {index}: webcams by index are supported on Linux (v4l2) and macOS (AVFoundation); "
                      "pass a video file or stream URL instead")


def _reason(exc: BaseException) -> str:
    """A short reason from an FFmpeg/OS error, without the file name PyAV appends."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:200]


# -- PyAV ---------------------------------------------------------------------------------------------------
class AVSource(FrameSource):
    """A video file, network stream or camera decoded with PyAV (FFmpeg)."""

    def __init__(
        self,
        target: str,
        name: str,
        *,
        live: bool = False,
        format: str | None = None,
        timeout: float | None = None,
        stem: str | None = None,
        options: dict[str, str] | None = None,
    ) -> None:
        import av

        super().__init__()
        self.name, self.live = name, live
        self.stem = stem or _stem(target)
        try:
            self.container = av.open(target, format=format, options=options or {},
                                     timeout=timeout if live else None)
        except av.error.HTTPError as exc:
            raise DataError(f"{name}: cannot open the stream ({_reason(exc)}); check the URL") from exc
        except (av.error.FFmpegError, OSError) as exc:
            if live:
                raise DataError(f"{name}: cannot open the stream ({_reason(exc)}); check the URL or device and "
                                "that it is serving video") from exc
            raise DataError(f"{name}: cannot open the video ({_reason(exc)}); the file is truncated or not a "
                            "video; check that it plays, or re-encode it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4)"
                            ) from exc
        try:
            self._init_stream()
        except BaseException:
            self.container.close()
            raise

    def _init_stream(self) -> None:
        if not self.container.streams.video:
            raise DataError(f"{self.name}: contains no video stream; pass a video")
        stream = self.stream = self.container.streams.video[0]
        if stream.codec_context is None:  # FFmpeg has no decoder for this codec
            raise DataError(f"{self.name}: the video codec is unknown (FFmpeg has no decoder for it); re-encode "
                            "the video (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4)")
        self.width, self.height = int(stream.codec_context.width), int(stream.codec_context.height)
        if self.width <= 0 or self.height <= 0:
            raise DataError(f"{self.name}: the video stream has no frame size; the file is corrupt")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        self.fps = Fraction(rate).limit_denominator(1001) if rate and rate > 0 else Fraction(30)
        self.total = int(stream.frames) if stream.frames and not self.live else None
        self._start = stream.start_time
        self._closed = False
        # the display matrix (phone videos filmed upright): known from the first decoded frame, which is
        # kept for frames(); frames are turned upright and width / height are those of the turned frames
        self._decoder = self._decode()
        first = next(self._decoder, None)
        self._pending = [first] if first is not None else []
        rotation = float(getattr(first, "rotation", 0) or 0)
        self.quarter_turns = int(round(rotation / 90)) % 4 if rotation % 90 == 0 else 0  # counter-clockwise
        if self.quarter_turns % 2:
            self.width, self.height = self.height, self.width

    def frames(self, vid_stride: int = 1) -> Iterator[Frame]:
        stream = self.stream
        base = stream.time_base
        start = None if self._start is None or self.live else self._start
        pending, self._pending = self._pending, []
        time_s = None
        for frame in itertools.chain(pending, self._decoder):
            if frame.pts is not None and base is not None:
                if start is None:  # live sources: time since the first frame received
                    start = frame.pts
                time_s = float((frame.pts - start) * base)
            else:
                time_s = float(self.decoded / self.fps)
            index = self.decoded
            self.decoded += 1
            if index % vid_stride == 0:
                pixels = frame.to_ndarray(format="rgb24")
                if self.quarter_turns:
                    pixels = np.ascontiguousarray(np.rot90(pixels, self.quarter_turns))
                yield Frame(index, time_s, Image.fromarray(pixels, "RGB"))
        if self.stop_reason is None and self.total and self.decoded < self.total:
            self.stop_reason = f"the file ends after {self.decoded} of {self.total} frames (truncated?)"
        elif self.stop_reason is None and not self.total and not self.live and time_s is not None:
            # no frame count in the container (Matroska, WebM): compare with its duration instead
            duration = (self.container.duration or 0) / 1e6
            end = time_s + 1.0 / float(self.fps)
            if duration - end > max(3.0 / float(self.fps), 0.25):
                self.stop_reason = f"the file ends at {end:.2f} s of its {duration:.2f} s (truncated?)"

    def _decode(self) -> Iterator[Any]:
        """Decoded frames; a corrupt packet is skipped and counted, a read error ends the source."""
        import av

        packets = self.container.demux(self.stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except (av.error.FFmpegError, OSError) as exc:  # the file or the connection failed
                what = "the stream dropped" if self.live else "reading the file failed"
                self.stop_reason = f"{what} after {self.decoded} frames ({_reason(exc)})"
                break
            try:
                frames = packet.decode()
            except av.error.FFmpegError as exc:
                self._skip(f"{self.name}: corrupt packet at {_packet_time(packet)} skipped ({_reason(exc)})")
                continue
            yield from frames
        try:  # frames still buffered in the decoder
            frames = self.stream.codec_context.decode(None)
        except av.error.FFmpegError:
            return
        yield from frames

    def close(self) -> None:
        if not getattr(self, "_closed", True):
            self._closed = True
            self.container.close()


def _packet_time(packet: Any) -> str:
    try:
        return f"{float(packet.pts * packet.time_base):.3f} s"
    except TypeError:
        return "an unknown time"


def _stem(target: str) -> str:
    """Base name for outputs: the file's stem, or the last path component of a URL ('stream' if none)."""
    if is_url(target):
        tail = target.split("://", 1)[1].split("?", 1)[0].rstrip("/").rsplit("/", 1)
        name = tail[1] if len(tail) == 2 else ""
        stem = Path(name).stem or "stream"
        return re.sub(r"[^\w.-]", "_", stem)
    return Path(target).stem or "video"


# -- image sequences ----------------------------------------------------------------------------------------
class ImageSequenceSource(FrameSource):
    """Numbered image files, in the order of their numbers (``frames/%05d.png`` or a folder of them).

    ``time_s`` is ``index / fps``. An unreadable image is skipped and counted; frames of another size
    than the first are passed on as they are (the video writer scales them to the first frame's size).
    """

    def __init__(self, pattern: str, fps: float = 30.0) -> None:
        super().__init__()
        if fps <= 0:
            raise ConfigError(f"sequence fps={fps} must be > 0")
        self.name, self.fps = pattern, Fraction(fps).limit_denominator(1001)
        self.files = _sequence_files(pattern)
        folder = Path(pattern) if Path(pattern).is_dir() else Path(pattern).parent
        self.stem = folder.resolve().name or "frames"
        self.total = len(self.files)
        self.width, self.height = self._first_size()

    def _first_size(self) -> tuple[int, int]:
        for path in self.files:
            try:
                return image_size(path)
            except DataError:
                continue
        raise DataError(f"{self.name}: none of the {len(self.files)} image(s) can be read; check the files")

    def frames(self, vid_stride: int = 1) -> Iterator[Frame]:
        for i, path in enumerate(self.files):
            if i % vid_stride:
                continue
            try:
                image = load_image(path)
            except DataError as exc:
                self._skip(f"{exc} (frame {i} skipped)")
                continue
            self.decoded += 1
            yield Frame(i, float(i / self.fps), image)


def _sequence_files(pattern: str) -> list[Path]:
    """The files of an image sequence, ordered by frame number."""
    path = Path(pattern)
    if path.is_dir():
        numbered = [(int(m.group(1)), p) for p in path.iterdir()
                    if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and (m := _NUMBER.search(p.stem))]
        if not numbered:
            raise DataError(f"{pattern}: folder contains no numbered image files (e.g. 00001.png); "
                            "pass a folder of frames or a pattern such as frames/%05d.png")
        return [p for _, p in sorted(numbered, key=lambda t: (t[0], t[1].name))]
    folder = path.parent
    match = _PRINTF.search(path.name)
    assert match is not None
    zero, width = match.group(1), match.group(2)
    digits = rf"\d{{{width}}}" if zero and width else r"\d+"
    regex = re.compile(re.escape(path.name[: match.start()]) + f"({digits})" + re.escape(path.name[match.end():]) + "$")
    if not folder.is_dir():
        raise DataError(f"{pattern}: folder {folder} does not exist; check the path")
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if p.is_file() and (m := regex.match(p.name)))
    if not found:
        raise DataError(f"{pattern}: no file matches the pattern in {folder}; check the name and number width")
    return [p for _, p in found]


# -- selection ------------------------------------------------------------------------------------------------
def select_frames(frames: Iterable[Frame], vid_stride: int = 1, max_frames: int | None = None) -> Iterator[Frame]:
    """Every ``vid_stride``-th frame (by source index, starting with frame 0), at most ``max_frames`` of them.

    Stops pulling from ``frames`` as soon as ``max_frames`` frames are out, so the rest is never decoded;
    a :class:`FrameSource` does not even convert the frames it skips. Arguments are checked at the call.
    """
    if vid_stride < 1:
        raise ConfigError(f"vid_stride={vid_stride} must be a positive integer")
    if max_frames is not None and max_frames < 1:
        raise ConfigError(f"max_frames={max_frames} must be a positive integer")
    if isinstance(frames, FrameSource):
        return _first(frames.frames(vid_stride), max_frames)
    return _first((f for f in frames if f.index % vid_stride == 0), max_frames)


def _first(frames: Iterator[Frame], limit: int | None) -> Iterator[Frame]:
    try:
        for count, frame in enumerate(frames, 1):
            yield frame
            if limit is not None and count >= limit:
                return
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()


def expected_frames(source: FrameSource, vid_stride: int = 1, max_frames: int | None = None) -> int | None:
    """How many frames :func:`select_frames` will give, when the source's length is known."""
    if source.total is None:
        return max_frames
    n = -(-source.total // vid_stride)
    return n if max_frames is None else min(n, max_frames)


__all__ = ["AVSource", "Frame", "FrameSource", "ImageSequenceSource", "STREAM_SCHEMES", "VIDEO_SUFFIXES",
           "expected_frames", "is_sequence_pattern", "is_url", "is_video_source", "open_source", "select_frames"]
