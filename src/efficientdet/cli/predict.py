"""``efficientdet predict``: detect objects in image files, folders and globs, and in videos, stream URLs,
webcams and image sequences (:func:`efficientdet.video.predict_video`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ConfigError, EfficientDetError
from ..inference.config import PREDICT
from .common import add_model_options, add_tile_options, expand_sources, make_detector, positive_int, tiled, unit_float

#: the tracker's low-score threshold: with --track, detections down to it extend existing tracks
TRACK_LOW = 0.1


def run(args: argparse.Namespace) -> int:
    """``efficientdet predict``: 0 when every input was processed, 1 when some were skipped."""
    images, videos = split_video_sources(args)
    items, problems = expand_sources(images) if images else ([], [])
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if not items and not videos:
        raise ConfigError("no images to predict on; pass image files, directories or globs (or a video, a stream "
                          "URL, an image-sequence pattern, --source 0 for a webcam)")
    threshold = min(args.score_threshold, TRACK_LOW) if args.track else args.score_threshold
    detector = make_detector(args, score_threshold=threshold, iou_threshold=args.iou,
                             max_det=args.max_det, soft_nms=args.soft_nms or None)
    detector = tiled(detector, args, args.max_det)
    out_dir = Path(args.out) if args.out else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    batch_size = auto_batch_size(args, detector)

    def report(name: str, img: object, det: object) -> None:
        counts = ", ".join(f"{n} {c}" for c, n in det.counts().items()) or "no detections"
        t = det.timings
        print(f"{name}: {img.width}x{img.height} {counts} ({t['preprocess_ms']:.1f} ms preprocess, "
              f"{t['inference_ms']:.1f} ms inference, {t['postprocess_ms']:.1f} ms postprocess)", flush=True)

    from ..folder import predict_files

    image_detector = Tracked(detector, make_tracker(args, 30.0)) if args.track else detector
    result = predict_files(image_detector, items, out_dir, batch_size=batch_size, on_image=report)
    records, total, skipped = result.records, result.detections, len(result.skipped)
    video_code = predict_videos(args, detector, videos) if videos else 0
    if videos and not items:
        return video_code
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(records, indent=1) + "\n")
    done = len(items) - skipped
    summary = f"{done} image(s), {total} detection(s)"
    if out_dir:
        summary += f"; annotated images in {out_dir}"
    if args.json:
        summary += f"; detections in {args.json}"
    print(summary)
    if skipped or problems:
        print(f"error: {skipped + len(problems)} input(s) skipped (see above)", file=sys.stderr)
        return max(1, video_code)
    return video_code


# -- videos, streams, webcams and image sequences (efficientdet.video) ------------------------------------------
def split_video_sources(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """predict's sources -> (image sources, video sources); --json takes one video source, alone."""
    import glob

    from ..video import is_video_source

    sources = []
    for src in [*args.sources, *args.source]:  # a glob of videos ("clips/*.mp4") stands for its files
        globbed = any(ch in src for ch in "*?[") and not Path(src).exists() and is_video_source(src)
        sources += sorted(glob.glob(src, recursive=True)) or [src] if globbed else [src]
    videos = [s for s in sources if is_video_source(s)]
    if videos and args.json and len(sources) > 1:
        raise ConfigError(f"--json {args.json} with a video source writes JSON Lines for that one source; got "
                          f"{len(sources)} sources: run one command per video (or drop --json)")
    return [s for s in sources if not is_video_source(s)], videos


def video_tracker(args: argparse.Namespace, source: object) -> object | None:
    """The tracker for one video source (a fresh one per source), or None: the hook for --track."""
    if not args.track:
        return None
    # the tracker sees every --vid-stride-th frame: its frame rate is the processed one
    return make_tracker(args, float(getattr(source, "fps", None) or 30.0) / args.vid_stride)


def make_tracker(args: argparse.Namespace, frame_rate: float):
    """``--track``: a ByteTrack-style :class:`~efficientdet.track.Tracker`; detections from ``TRACK_LOW`` up
    extend tracks, from ``max(0.5, --score-threshold)`` up may start them."""
    from ..track import Tracker

    return Tracker(track_thresh=max(0.5, args.score_threshold), low_thresh=min(TRACK_LOW, args.score_threshold),
                   frame_rate=frame_rate)


class Tracked:
    """``--track`` on images: the detector's results passed through one tracker, in input order (the images
    are the frames of one sequence); only detections of confirmed tracks are kept, with ``track_ids``."""

    def __init__(self, detector: object, tracker: object) -> None:
        self.detector, self.tracker = detector, tracker

    @property
    def device(self) -> object:
        return getattr(self.detector, "device", "cpu")

    def __call__(self, images: object, batch_size: int = 1) -> list:
        return [self.tracker.update(det) for det in self.detector(images, batch_size=batch_size)]


def predict_videos(args: argparse.Namespace, detector: object, videos: list[str]) -> int:
    """Run ``predict_video`` on each video source: 0 = all read whole, 1 = a source stopped early or skipped
    frames (reported), 2 = a source could not be opened, 130 = interrupted (outputs finalised)."""
    from ..video import open_source, predict_video

    code = 0
    for name in videos:
        try:
            with open_source(name) as source:
                summary = predict_video(detector, source, out=args.out, json=args.json, vid_stride=args.vid_stride,
                                        max_frames=args.max_frames, tracker=video_tracker(args, source),
                                        batch_size=auto_batch_size(args, detector), progress=sys.stderr.isatty())
        except EfficientDetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = max(code, exc.exit_code)
            continue
        print(summary)
        for line in summary.problems:
            print(f"warning: {line}", file=sys.stderr)
        if summary.skipped:
            print(f"error: {summary.source}: {summary.skipped} corrupt packet(s) or unreadable frame(s) skipped",
                  file=sys.stderr)
            code = max(code, 1)
        if summary.stopped == "interrupted":
            print(f"interrupted after {summary.frames} frame(s); the outputs are finalised", file=sys.stderr)
            return 130
        if summary.stopped:
            print(f"error: {summary.source}: stopped early: {summary.stopped}; the outputs hold the "
                  f"{summary.frames} frame(s) before it", file=sys.stderr)
            code = max(code, 1)
    return code


def batch_size_arg(text: str) -> int | str:
    """``auto`` or a positive integer."""
    return "auto" if text == "auto" else positive_int(text)


def auto_batch_size(args: argparse.Namespace, detector: object) -> int:
    """``--batch-size auto``: a throughput batch for the device (see the option's help)."""
    if args.batch_size != "auto":
        return int(args.batch_size)
    return 8 if str(getattr(detector, "device", "cpu")).startswith("cuda") else 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="detect objects in images and videos",
                       description="Detect objects in images, videos, streams, webcams and image sequences.")
    p.add_argument("sources", nargs="*", metavar="SOURCE",
                   help="image files, directories or globs; video files (mp4, mov, avi, mkv, webm), stream URLs "
                        "(rtsp://, http(s)://) or image-sequence patterns (frames/%%05d.png)")
    p.add_argument("--source", action="append", default=[], metavar="SOURCE",
                   help="another source, e.g. a webcam index (--source 0); repeatable")
    p.add_argument("--vid-stride", type=positive_int, default=1, help="videos: run on every N-th frame (default 1)")
    p.add_argument("--max-frames", type=positive_int, default=None, help="videos: stop after N frames")
    add_model_options(p)
    p.add_argument("--score-threshold", type=unit_float, default=PREDICT.score_threshold,
                   help=f"minimum score (default {PREDICT.score_threshold})")
    p.add_argument("--iou", type=unit_float, default=None, help=f"NMS IoU threshold (default {PREDICT.iou_threshold})")
    p.add_argument("--soft-nms", action="store_true", help="Gaussian soft-NMS instead of hard NMS")
    p.add_argument("--max-det", type=positive_int, default=PREDICT.max_det,
                   help=f"detections per image (default {PREDICT.max_det})")
    p.add_argument("--batch-size", type=batch_size_arg, default="auto",
                   help="images per forward pass; auto (default): 1 on the CPU (a larger batch is no cheaper per "
                        "image there; decoding and writing already overlap the network), 8 on a GPU")
    p.add_argument("--out", help="folder for annotated images (and OUT/<stem>.mp4 for a video)")
    p.add_argument("--json", help="write detections as COCO-style results JSON (for a video: JSON Lines, one "
                                  "record per frame)")
    add_tile_options(p)
    p.add_argument("--track", action="store_true",
                   help="give objects persistent ids across frames (ByteTrack-style tracker): each video, or the "
                        "images taken as the frames of one sequence in the order given; --json records get a "
                        "track_id")
    p.set_defaults(func=run)


