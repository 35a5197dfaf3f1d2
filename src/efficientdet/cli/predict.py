"""``efficientdet predict``: detect objects in image files, folders and globs, and in videos, stream URLs,
webcams and image sequences (:func:`efficientdet.video.predict_video`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError, EfficientDetError
from ..inference.config import PREDICT
from .common import (
    add_model_options,
    add_tile_options,
    expand_sources,
    make_detector,
    positive_int,
    tiled,
    unique_names,
    unit_float,
    write_json,
)

#: the tracker's low-score threshold: with --track, detections down to it extend existing tracks
TRACK_LOW = 0.1


def _save_mask(args: argparse.Namespace, name: str, mask, class_names: list[str]) -> dict:
    """``--masks DIR/<stem>.png`` (palette, original size); the ``--json`` record of pixel counts."""
    from ..masks import pixel_counts, save_palette_mask

    if args.masks:
        save_palette_mask(mask, Path(args.masks) / Path(name).with_suffix(".png"))
    return {"file_name": name, "width": int(mask.shape[1]), "height": int(mask.shape[0]),
            "pixels": pixel_counts(mask, class_names)}


def run_segment(args: argparse.Namespace, items: list, problems: list[str], videos: list[str]) -> int:
    """Segmentation-only models: a mask per image (``--masks``), overlays (``--out``), pixel counts (``--json``);
    videos: the overlay video (``--out``) and pixel counts per frame (``--json`` JSON Lines)."""
    import time

    from ..images import load_image
    from ..inference.tasks import MasksAsDetections, load_segmenter
    from ..masks import overlay_mask

    if videos and (args.track or args.masks):
        raise ConfigError(f"{'--track' if args.track else '--masks'} does not apply to a video with a segmentation "
                          "model: --out writes the video with the masks blended in, --json the pixels per frame")
    segmenter = load_segmenter(args.weights, model=args.model, device=args.device,
                               image_size=args.image_size,
                               batch_size=args.batch_size if isinstance(args.batch_size, int) else 1)
    if not items:
        return predict_videos(args, MasksAsDetections(segmenter), videos)
    names = segmenter.class_names
    out_dir = Path(args.out) if args.out else None
    records, skipped = [], 0
    for path, name in items:
        try:
            image = load_image(path)
        except EfficientDetError as exc:
            skipped += 1
            print(f"error: {exc} (skipped)", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        (mask,) = segmenter([image])
        ms = (time.perf_counter() - t0) * 1e3
        record = _save_mask(args, name, mask, names)
        records.append(record)
        shown = ", ".join(f"{n} {c:,}" for n, c in record["pixels"].items())
        print(f"{name}: {image.width}x{image.height} {shown} ({ms:.1f} ms)")
        if out_dir:
            target = (out_dir / name).with_suffix(".png")
            target.parent.mkdir(parents=True, exist_ok=True)
            overlay_mask(image, mask).save(target)
    if args.json:
        write_json(args.json, records)
    print(f"{len(records)} image(s) segmented" + (f"; masks in {args.masks}" if args.masks else "")
          + (f"; overlays in {out_dir}" if out_dir else "") + (f"; pixel counts in {args.json}" if args.json else ""))
    video_code = predict_videos(args, MasksAsDetections(segmenter), videos) if videos else 0
    if skipped or problems:
        print(f"error: {skipped + len(problems)} input(s) skipped (see above)", file=sys.stderr)
        return max(1, video_code)
    return video_code


def is_onnx(weights: str | None) -> bool:
    from ..inference.onnxrt import is_onnx_file

    return bool(weights) and is_onnx_file(weights)


def run(args: argparse.Namespace) -> int:
    """``efficientdet predict``: 0 when every input was processed, 1 when some were skipped."""
    from ..inference import sharding

    images, videos = split_video_sources(args)
    items, problems, notes = expand_sources(images) if images else ([], [], [])
    rank, world = sharding.join(args.device)  # under torchrun: this process's slice of the images (sharding.py)
    for line in notes if rank == 0 else ():
        print(f"warning: {line}", file=sys.stderr)
    for line in problems if rank == 0 else ():
        print(f"error: {line}", file=sys.stderr)
    if not items and not videos:
        raise ConfigError("no images to predict on; pass image files, directories or globs (or a video, a stream "
                          "URL, an image-sequence pattern, --source 0 for a webcam)")
    from ..inference.tasks import JOINT, SEGMENT, weights_task

    kind = weights_task(args.weights)
    if kind == SEGMENT:
        return run_segment(args, items, problems, videos)
    if args.masks and kind != JOINT:
        raise ConfigError(f"--masks needs a segmentation (or joint) model; {args.weights or 'the model'} only detects")
    seg_records: list[dict] = []
    if kind == JOINT and args.backend == "auto":
        args.backend = "torch"  # the segmentation output of a joint model comes from the PyTorch runner
    if world > 1 and args.track:
        raise ConfigError("--track follows objects through the inputs in order: run it in one process, not torchrun")
    all_items, items = items, sharding.shard(items, rank, world)
    if rank:
        videos = []  # videos run whole, on rank 0
    threshold = min(args.score_threshold, TRACK_LOW) if args.track else args.score_threshold
    detector = sharding.rank_zero_first(rank, world, lambda: make_detector(
        args, threads=sharding.threads_per_process(), score_threshold=threshold, iou_threshold=args.iou,
        max_det=args.max_det, soft_nms=args.soft_nms or None))
    seg_names = detector.seg_class_names  # a joint model's segmentation classes
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
        if det.mask is not None:  # a joint model: its mask too (--masks, --json)
            seg_records.append(_save_mask(args, name, det.mask, seg_names))

    from ..folder import predict_files

    image_detector = Tracked(detector, make_tracker(args, 30.0)) if args.track else detector
    result = predict_files(image_detector, items, out_dir, batch_size=batch_size, on_image=report)
    records, total, skipped = result.records, result.detections, len(result.skipped)
    if world > 1:  # one merged output, in input order, from rank 0
        parts = sharding.gather((records, skipped, total), world)
        records = [r for part in parts for r in part[0]]
        skipped, total = sum(p[1] for p in parts), sum(p[2] for p in parts)
        sharding.leave(world)
        if rank:
            return 1 if skipped or problems else 0
    video_code = predict_videos(args, detector, videos) if videos else 0
    if videos and not all_items:
        return video_code
    if args.json:
        write_json(args.json, {"detections": records, "segmentation": seg_records} if seg_records else records)
    done = len(all_items) - skipped
    summary = f"{done} image(s), {total} detection(s)" + (f" from {world} processes" if world > 1 else "")
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
    for name, out in zip(videos, video_outputs(args.out, videos)):
        try:
            with open_source(name) as source:
                summary = predict_video(detector, source, out=out, json=args.json, vid_stride=args.vid_stride,
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


def video_outputs(out: str | None, videos: list[str]) -> list[str | Path | None]:
    """Where each video source's annotated video goes: ``--out`` as given (a folder: ``<stem>.mp4`` in it),
    except that video files with one stem in different folders go to their path below the folder they
    share (``OUT/a/clip.mp4``, ``OUT/b/clip.mp4``) instead of overwriting each other."""
    from ..video.sources import VIDEO_SUFFIXES

    if out is None:
        return [None] * len(videos)
    if Path(out).suffix.lower() in VIDEO_SUFFIXES:
        if len(videos) > 1:
            raise ConfigError(f"--out {out} names one video file, but there are {len(videos)} video sources; "
                              "pass a folder (each video goes to FOLDER/<name>.mp4)")
        return [out]
    files = [(Path(v), Path(v).stem) for v in videos if Path(v).is_file()]
    renamed = {path: name for path, name in unique_names(files) if name != path.stem}  # e.g. a/clip.mp4
    return [Path(out) / Path(renamed[Path(v)]).parent / f"{Path(v).stem}.mp4" if Path(v) in renamed else out
            for v in videos]


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
                                  "record per frame; segmentation models: the pixel count per class of each image)")
    add_tile_options(p)
    p.add_argument("--track", action="store_true",
                   help="give objects persistent ids across frames (ByteTrack-style tracker): each video, or the "
                        "images taken as the frames of one sequence in the order given; --json records get a "
                        "track_id")
    p.add_argument("--masks", metavar="DIR", help="segmentation / joint models: write DIR/<stem>.png, a palette PNG of "
                                                  "class indices at the original size")
    p.set_defaults(func=run)


