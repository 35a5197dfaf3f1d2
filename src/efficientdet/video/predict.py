"""Detection on videos, streams, webcams and image sequences: the per-frame loop behind ``predict``.

source -> [reader thread: decode, stride/limit, detector.prepare] -> [calling thread: the network]
-> [writer thread: tracker, JSON Lines record, drawing, encoding] (:mod:`efficientdet.pipeline`).

The loop takes any detector callable ``detector(images, batch_size=n) -> list[Detections]``
(:class:`efficientdet.Detector`, :class:`efficientdet.deploy.OnnxModel`, a tiling wrapper ...); one that
also has ``prepare`` / ``detect_prepared`` gets its preprocessing moved to the reader thread. An optional
``tracker`` with ``update(detections) -> detections`` runs on every frame in order and may attach an
integer ``track_ids`` array, which then appears as ``"track_id"`` in the JSON records and on the video.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..detections import Detections
from ..errors import ConfigError, DataError
from ..pipeline import Prefetcher, batched, detection_stages, run_pipeline
from .sources import VIDEO_SUFFIXES, Frame, FrameSource, expected_frames, open_source, select_frames
from .writers import JsonLinesWriter, VideoWriter, frame_record


class Tracker(Protocol):
    """What the per-frame loop needs from a tracker: called once per frame, in frame order."""

    def update(self, detections: Detections) -> Detections:
        """This frame's detections with an integer ``track_ids`` array ((n,) int64) attached."""
        ...


@dataclass
class VideoSummary:
    """What :func:`predict_video` did.

    Attributes:
        source: the source's name. frames: frames run through the detector (and written).
        decoded: frames decoded from the source (before ``vid_stride``). detections: total detections.
        elapsed_s: wall time of the loop (opening the source and loading the model excluded).
        width, height, fps: the source's frame size and frame rate. video, json: the files written.
        skipped: corrupt packets / unreadable sequence images skipped; problems: their descriptions.
        stopped: why the source ended early (a dropped stream, a truncated file, ``interrupted``), or None.
    """

    source: str
    frames: int
    decoded: int
    detections: int
    elapsed_s: float
    width: int
    height: int
    fps: float
    video: Path | None = None
    json: Path | None = None
    skipped: int = 0
    problems: list[str] = field(default_factory=list)
    stopped: str | None = None

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def ok(self) -> bool:
        """True when the whole source was read without skipping anything."""
        return self.stopped is None and self.skipped == 0

    def __str__(self) -> str:
        text = (f"{self.source}: {self.frames} frame(s) {self.width}x{self.height} at {self.fps:.4g} fps, "
                f"{self.detections} detection(s), {self.frames_per_s:.2f} frames/s")
        if self.video:
            text += f"; annotated video in {self.video}"
        if self.json:
            text += f"; detections in {self.json}"
        return text


def output_video_path(out: str | Path, stem: str) -> Path:
    """``out`` itself when it names a video file (by suffix), else ``out/<stem>.mp4``."""
    out = Path(out)
    return out if out.suffix.lower() in VIDEO_SUFFIXES else out / f"{stem}.mp4"


def predict_video(
    detector: Callable[..., list[Detections]],
    source: str | int | Path | FrameSource,
    out: str | Path | None = None,
    json: str | Path | None = None,
    *,
    vid_stride: int = 1,
    max_frames: int | None = None,
    tracker: Tracker | None = None,
    draw: bool = True,
    batch_size: int = 1,
    pipelined: bool = True,
    progress: bool = False,
    on_frame: Callable[[Frame, Detections], None] | None = None,
    timeout: float | None = 10.0,
    sequence_fps: float = 30.0,
) -> VideoSummary:
    """Detect objects in every ``vid_stride``-th frame of a video source; write an annotated video and JSON Lines.

    Args:
        detector: ``detector(images, batch_size=n) -> list[Detections]``; see the module docstring.
        source: a video file, stream URL, webcam index, image-sequence pattern or folder
            (:func:`~efficientdet.video.sources.open_source`), or an open :class:`FrameSource` (not closed here).
        out: a folder (the video goes to ``out/<stem>.mp4``) or a video file path; None: no video.
            The video has the source's frame size and ``fps / vid_stride`` frames per second.
        json: JSON Lines file, one ``{"frame": i, "time_s": t, "detections": [...]}`` per frame
            (:func:`~efficientdet.video.writers.frame_record`), flushed after every frame.
        vid_stride: run on frames 0, N, 2N, ... (indices are the source's). max_frames: stop after this many.
        tracker: ``update(detections) -> detections`` per frame, in order (adds ``track_id`` to the records).
        draw: draw the boxes on the output video (False: the frames as decoded).
        batch_size: frames per network call. pipelined: overlap decoding, the network and writing in
            threads (False: the same steps one after the other; same results).
        progress: show a progress bar with frames/s on stderr.
        on_frame: called with each frame and its (tracked) detections, in order, in the writer thread.
        timeout: seconds to wait for a stream or camera to open and for each read.
        sequence_fps: frame rate of image sequences.

    Returns:
        A :class:`VideoSummary`. A stream that drops, a truncated file or Ctrl-C ends the loop early with
        ``summary.stopped`` set; the video is finalised and the JSON Lines complete up to the last frame.

    Raises:
        DataError: the source cannot be opened, or not a single frame could be decoded.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be a positive integer")
    own_source = not isinstance(source, FrameSource)
    src = open_source(source, timeout=timeout, sequence_fps=sequence_fps) if own_source else source
    video_path = output_video_path(out, src.stem) if out is not None else None
    writer = lines = bar = None
    frames_done = detections = 0
    stopped: str | None = None
    t0 = time.perf_counter()
    try:
        selected = select_frames(src, vid_stride, max_frames)  # checks vid_stride / max_frames first
        if video_path is not None:
            writer = VideoWriter(video_path, src.width, src.height, src.fps / vid_stride)
        lines = JsonLinesWriter(json) if json is not None else None
        bar = tqdm(total=expected_frames(src, vid_stride, max_frames), unit="frame", desc=src.stem,
                   disable=not progress, file=sys.stderr, dynamic_ncols=True, leave=True)
        prepare_images, infer = detection_stages(detector)
        seg_names = list(getattr(detector, "seg_class_names", None) or [])  # a model that segments

        def prepare(frames: list[Frame]) -> Any:
            return prepare_images([f.image for f in frames])

        def finish(frames: list[Frame], results: list[Detections]) -> None:
            nonlocal frames_done, detections
            for frame, det in zip(frames, results):
                if tracker is not None:
                    det = tracker.update(det)
                if lines is not None:
                    lines.write(frame_record(frame.index, frame.time_s, det, seg_names))
                if writer is not None:
                    writer.write(_drawn(frame.image, det) if draw else frame.image)
                if on_frame is not None:
                    on_frame(frame, det)
                frames_done += 1
                detections += len(det)
                bar.update(1)

        t0 = time.perf_counter()
        try:
            run_pipeline(batched(selected, batch_size), infer, prepare, finish, threaded=pipelined)
        except KeyboardInterrupt:
            stopped = "interrupted"
    finally:
        elapsed = time.perf_counter() - t0
        _close_all([bar, writer, lines, src if own_source else None])
    if frames_done == 0 and src.decoded == 0 and stopped != "interrupted":
        if video_path is not None:
            video_path.unlink(missing_ok=True)  # an empty video is no use and not playable everywhere
        why = src.stop_reason or (src.problems[0] if src.problems else "the source has no frames")
        raise DataError(f"{src.name}: no frame could be decoded ({why}); check that it plays, or re-encode it")
    return VideoSummary(
        source=src.name, frames=frames_done, decoded=src.decoded, detections=detections, elapsed_s=elapsed,
        width=src.width, height=src.height, fps=float(src.fps), video=video_path,
        json=Path(json) if json is not None else None, skipped=src.skipped, problems=list(src.problems),
        stopped=stopped or src.stop_reason,
    )


def _drawn(image: Any, det: Detections) -> Any:
    """The frame with its mask blended in (models that segment) and its boxes drawn."""
    from ..visualize import draw_detections

    if det.mask is not None:
        from ..masks import overlay_mask

        image = overlay_mask(image, det.mask)
    return draw_detections(image, det)


def _close_all(things: list[Any]) -> None:
    """Close every output even when one fails (the first failure is raised after the others are closed)."""
    error: BaseException | None = None
    for thing in things:
        if thing is None:
            continue
        try:
            thing.close()
        except BaseException as exc:
            error = error or exc
    if error is not None:
        raise error


def detect_frames(
    detector: Callable[..., list[Detections]],
    frames: Iterable[Frame],
    batch_size: int = 1,
    tracker: Tracker | None = None,
    prefetch: bool = True,
) -> Iterator[tuple[Frame, Detections]]:
    """``(frame, detections)`` for each frame, in order, for your own loop.

    With ``prefetch`` the frames are decoded (and preprocessed, for detectors with ``prepare``) in a
    background thread while the network runs here. Example::

        with open_source("clip.mp4") as src:
            for frame, det in detect_frames(detector, select_frames(src, vid_stride=2)):
                print(frame.index, frame.time_s, det.counts())
    """
    prepare_images, infer = detection_stages(detector)

    def prepare(chunk: list[Frame]) -> Any:
        return prepare_images([f.image for f in chunk])

    def run(pairs: Iterable[tuple[list[Frame], Any]]) -> Iterator[tuple[Frame, Detections]]:
        for chunk, prepared in pairs:
            for frame, det in zip(chunk, infer(prepared)):
                yield frame, (tracker.update(det) if tracker is not None else det)

    if not prefetch:
        yield from run((chunk, prepare(chunk)) for chunk in batched(frames, batch_size))
        return
    with Prefetcher(batched(frames, batch_size), prepare) as pairs:
        yield from run(pairs)


__all__ = ["Tracker", "VideoSummary", "detect_frames", "output_video_path", "predict_video"]
