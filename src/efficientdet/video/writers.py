"""Outputs of video prediction: the annotated video and the per-frame JSON Lines file.

Both are written so that what is on disk is valid at every moment the caller can observe: the JSON
Lines file is flushed after every frame (a crash or Ctrl-C leaves it complete up to the last frame), and
the video is finalised by ``close()`` (the encoder flushed, the container's index written), which the
callers reach through ``with`` / ``finally`` on every exit path, errors and ``KeyboardInterrupt`` included.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from ..detections import Detections
from ..errors import ConfigError


def video_codec() -> str:
    """The encoder used for annotated videos: H.264 (libx264) when this FFmpeg build has it, else MPEG-4."""
    import av

    for name in ("libx264", "mpeg4"):
        try:
            av.Codec(name, "w")
            return name
        except Exception:  # not compiled into this FFmpeg
            continue
    raise ConfigError("this PyAV/FFmpeg build has neither the libx264 nor the mpeg4 encoder; "
                      "install the PyAV wheel from PyPI (pip install av)")


class VideoWriter:
    """Encode RGB frames into a video file of a fixed size and frame rate.

    H.264 (libx264, preset ``veryfast``, CRF 23, yuv420p; yuv444p for odd sizes, which 4:2:0 cannot
    hold) where available, else MPEG-4 Part 2. Frames of another size are scaled to ``width x height``.
    Frame ``k`` is shown at ``k / fps`` seconds. Use it as a context manager (or call ``close()``): the
    file is only a valid video once closed.

    Args:
        path: output file; the container comes from the suffix (``.mp4`` recommended).
        width, height: frame size in pixels. fps: frames per second (a Fraction keeps 30000/1001 exact).
        codec: ``None`` = :func:`video_codec`.
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: Fraction | float, codec: str | None = None,
                 preset: str = "veryfast", crf: int = 23) -> None:
        import av

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.width, self.height = int(width), int(height)
        self.fps = Fraction(fps).limit_denominator(1001)
        self.codec = codec or video_codec()
        self.frames_written = 0
        self._closed = False
        self.container = av.open(str(self.path), "w")
        try:
            stream = self.container.add_stream(self.codec, rate=self.fps)
            stream.width, stream.height = self.width, self.height
            odd = self.width % 2 or self.height % 2
            if self.codec == "libx264":
                stream.pix_fmt = "yuv444p" if odd else "yuv420p"
                stream.options = {"preset": preset, "crf": str(crf)}
            else:
                stream.pix_fmt = "yuv420p"
                stream.bit_rate = max(1_000_000, self.width * self.height * 4)
            stream.codec_context.time_base = 1 / self.fps
            self.stream = stream
        except BaseException:
            self.container.close()
            raise

    def write(self, image: Image.Image | np.ndarray) -> None:
        """Append one frame (RGB PIL image or HxWx3 uint8 array)."""
        import av

        array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
        if (frame.width, frame.height) != (self.width, self.height):
            frame = frame.reformat(width=self.width, height=self.height)
        frame.pts = self.frames_written
        frame.time_base = self.stream.codec_context.time_base
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder and write the container's index (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            for packet in self.stream.encode(None):
                self.container.mux(packet)
        finally:
            self.container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JsonLinesWriter:
    """One JSON object per line, flushed after every line (the file is complete up to the last record)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self.records_written = 0

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, separators=(", ", ": ")) + "\n")
        self._file.flush()
        self.records_written += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> JsonLinesWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def frame_record(index: int, time_s: float, detections: Detections,
                 seg_class_names: list[str] | None = None) -> dict[str, Any]:
    """The JSON Lines record of a frame: ``{"frame": i, "time_s": t, "detections": [...]}``.

    Each detection is the record ``Detections.to_coco()`` gives for an image (bbox [x, y, w, h] in frame
    pixels, score, category_id, category_name), plus ``"track_id"`` (int) when the detections carry
    ``track_ids`` (set by a tracker). A model that segments adds ``"pixels"``: pixels per class name in
    the frame's mask, most frequent first (as ``predict --json`` gives for an image).
    """
    records = detections.to_coco()
    for rec in records:
        rec.pop("file_name", None)
    track_ids = getattr(detections, "track_ids", None)
    if track_ids is not None:
        for rec, tid in zip(records, np.asarray(track_ids).tolist()):
            rec["track_id"] = int(tid)
    record = {"frame": int(index), "time_s": round(float(time_s), 6), "detections": records}
    if detections.mask is not None:
        from ..masks import pixel_counts

        record["pixels"] = pixel_counts(detections.mask, list(seg_class_names or []))
    return record


__all__ = ["JsonLinesWriter", "VideoWriter", "frame_record", "video_codec"]
