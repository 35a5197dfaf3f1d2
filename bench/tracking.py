"""Tracking quality on generated sequences: a small detector trained on them + the ByteTrack-style tracker.

1. generates training sequences and held-out sequences (:mod:`efficientdet.data.sequences`: shapes that
   move, cross and hide behind a pillar), deterministic;
   plus tuning sequences (another seed, same generator) on which the tracker's thresholds are chosen;
2. trains a small EfficientDet on the training frames with the public API
   (``efficientdet.train.train(TrainConfig(...))``, tinynet_e backbone, 256 px, CPU, the ``auto`` recipe)
   unless ``--weights``; by default one class ("object": the tracker and the metrics are class-agnostic,
   as MOTChallenge's pedestrians are), ``--classes shapes`` keeps the four shape classes;
3. runs detector + :class:`efficientdet.track.Tracker` over every held-out sequence and scores the tracks
   against the known tracks (motmetrics: MOTA, IDF1; trackeval: HOTA, DetA, AssA); also the tracker alone
   on noisy ground-truth boxes, and the detector's COCO AP on the held-out frames.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/tracking.py --out runs/bench_tracking \
        --json bench/tracking_result.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from efficientdet.data.sequences import make_synthetic_sequences, read_mot_ground_truth
from efficientdet.track import Tracker
from efficientdet.track.metrics import evaluate_tracks, track_frames

#: the small architecture trained here (ModelConfig overrides on top of efficientdet_d0), as the demo's
MODEL = {"backbone": "tinynet_e", "fpn_channels": 32, "fpn_layers": 2, "head_layers": 2, "backbone_drop_path": 0.0}


def cpu_name() -> str:
    """The CPU's model name, as BENCHMARKS.md names every figure's machine (the library's probe)."""
    from efficientdet.inference.precision import cpu_info

    return cpu_info().name


def one_class(annotations: Path) -> None:
    """Rewrite a COCO file so that every box is of one category, "object" (class-agnostic detection)."""
    doc = json.loads(annotations.read_text())
    for a in doc["annotations"]:
        a["category_id"] = 1
    doc["categories"] = [{"id": 1, "name": "object", "supercategory": "shape"}]
    annotations.write_text(json.dumps(doc, separators=(",", ":")) + "\n")


def train_detector(data: Path, out: Path, epochs: int, image_size: int, workers: int) -> Path:
    """Train the small architecture on ``data`` with the project's default (``auto``) recipe; returns the
    final (EMA) weights."""
    from efficientdet.train import TrainConfig, train

    cfg = TrainConfig(
        train_images=str(data), train_annotations=str(data / "annotations.json"), model="efficientdet_d0",
        image_size=image_size, model_overrides=dict(MODEL), epochs=epochs, batch_size=8, recipe="auto", amp=False,
        workers=workers, recompute_stages=0, out=str(out), tensorboard=False, plots=False, progress=False,
    )
    result = train(cfg)
    return Path(result.best or result.last)


def noisy_ground_truth(gt: dict, rng: np.random.Generator, jitter: float = 0.05, drop: float = 0.1,
                       false_positives: float = 0.05, size: tuple[int, int] = (320, 240)):
    """Ground-truth boxes as a detector's: jittered by ``jitter`` x size, ``drop`` of them missed, scores
    in [0.3, 1) (a third below 0.5), plus a few random false positives; yields Detections per frame."""
    from efficientdet.detections import Detections

    for f in sorted(gt):
        g = gt[f]
        keep = (g["visibility"] >= 0.25) & (rng.random(len(g["ids"])) >= drop)
        boxes = g["boxes"][keep]
        wh = boxes[:, 2:] - boxes[:, :2]
        boxes = boxes + rng.normal(0, jitter, boxes.shape) * np.concatenate([wh, wh], 1)
        scores = rng.uniform(0.3, 1.0, len(boxes))
        n_fp = int(rng.random() < false_positives * 10) if false_positives else 0
        xy = rng.uniform(0, [size[0] - 40, size[1] - 40], (n_fp, 2))
        boxes = np.concatenate([boxes, np.concatenate([xy, xy + 30], 1)])
        scores = np.concatenate([scores, rng.uniform(0.1, 0.6, n_fp)])
        labels = np.zeros(len(scores), np.int64)
        order = np.argsort(-scores)
        yield f, Detections.from_arrays(boxes[order], scores[order], labels[order], ["object"], [1], size)


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    t0 = time.perf_counter()
    train_seqs = make_synthetic_sequences(out / "train", num_sequences=args.train_sequences,
                                          num_frames=args.train_frames, seed=0)
    tune_seqs = make_synthetic_sequences(out / "tune", num_sequences=args.tune_sequences,
                                         num_frames=args.tune_frames, seed=2)
    test_seqs = make_synthetic_sequences(out / "test", num_sequences=args.test_sequences,
                                         num_frames=args.test_frames, seed=1)
    if args.classes == "one":
        for split in ("train", "tune", "test"):
            one_class(out / split / "annotations.json")
    print(f"sequences: {len(train_seqs)} x {args.train_frames} training frames, {len(tune_seqs)} x "
          f"{args.tune_frames} tuning frames, {len(test_seqs)} x {args.test_frames} held-out frames "
          f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)

    import torch

    result: dict = {"cpu": cpu_name(), "torch_threads": torch.get_num_threads(), "classes": args.classes,
                    "image_size": args.image_size, "epochs": args.epochs,
                    "train_sequences": len(train_seqs), "train_frames": args.train_frames,
                    "tune_sequences": len(tune_seqs), "tune_frames": args.tune_frames,
                    "test_sequences": len(test_seqs), "test_frames": args.test_frames}

    weights = Path(args.weights) if args.weights else None
    if weights is None:
        t1 = time.perf_counter()
        weights = train_detector(out / "train", out / "run", args.epochs, args.image_size, args.workers)
        result["train_seconds"] = round(time.perf_counter() - t1, 1)
    result["weights"] = str(weights)

    # the tracker alone, on noisy ground truth
    rng = np.random.default_rng(0)
    gts = {s.name: read_mot_ground_truth(s.gt) for s in test_seqs}
    per = []
    for s in test_seqs:
        tracker = Tracker(frame_rate=s.fps)
        tracked = {f: tracker.update(d) for f, d in noisy_ground_truth(gts[s.name], rng)}
        per.append((gts[s.name], track_frames(tracked)))
    result["oracle_detections"] = _combined(per)

    from efficientdet import Detector
    from efficientdet.data import read_dataset
    from efficientdet.eval.run import evaluate_model

    detector = Detector("efficientdet_d0", weights=weights, score_threshold=0.05)
    coco = read_dataset("coco", out / "test", out / "test" / "annotations.json")
    metrics, _ = evaluate_model(Detector("efficientdet_d0", weights=weights, score_threshold=0.001), coco)
    result["detector_AP50"], result["detector_AP"] = round(metrics["AP50"], 4), round(metrics["AP"], 4)

    def detect(seqs):
        """Detections per sequence and frame (the network runs once; trackers with any setting reuse them)."""
        out, seconds, n = {}, 0.0, 0
        for s in seqs:
            t = time.perf_counter()
            out[s.name] = [detector(str(p))[0] for p in sorted(s.frames.iterdir())]
            seconds += time.perf_counter() - t
            n += s.num_frames
        return out, seconds / n

    def track(seqs, dets, track_thresh):
        per, seconds, n = [], 0.0, 0
        for s in seqs:
            tracker = Tracker(track_thresh=track_thresh, low_thresh=min(args.low_thresh, track_thresh),
                              frame_rate=s.fps)
            t = time.perf_counter()
            tracked = {f: tracker.update(d) for f, d in enumerate(dets[s.name], 1)}
            seconds += time.perf_counter() - t
            n += s.num_frames
            per.append((read_mot_ground_truth(s.gt), track_frames(tracked)))
        return _combined(per), seconds / n

    thresh = args.track_thresh
    if thresh is None:  # chosen on the tuning sequences (not trained on), never on the held-out ones
        tune_dets, _ = detect(tune_seqs)
        search = {t: track(tune_seqs, tune_dets, t)[0] for t in (0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)}
        scores = {t: (m["mota"] + m["idf1"]) / 2 for t, m in search.items()}
        thresh = max(scores, key=scores.get)
        result["track_thresh_search_on_tune"] = {t: {k: m[k] for k in ("mota", "idf1", "hota")}
                                                 for t, m in search.items()}
    result["track_thresh"] = thresh
    test_dets, det_seconds = detect(test_seqs)
    result["detector_tracker"], track_seconds = track(test_seqs, test_dets, thresh)
    result["ms_per_frame_detector"] = round(1e3 * det_seconds, 2)
    result["ms_per_frame_tracker"] = round(1e3 * track_seconds, 3)
    return result


def _combined(per: list[tuple[dict, dict]]) -> dict:
    """Metrics over all sequences as one: frames renumbered so that ids of different sequences never meet."""
    gt_all, hyp_all, offset = {}, {}, 0
    for k, (gt, hyp) in enumerate(per):
        for f, g in gt.items():
            gt_all[offset + f] = {**g, "ids": g["ids"] + 100_000 * k}
        for f, h in hyp.items():
            hyp_all[offset + f] = {**h, "ids": h["ids"] + 100_000 * k}
        offset += max([*gt, *hyp, 0]) + 1
    m = evaluate_tracks(gt_all, hyp_all)
    return {k: round(v, 4) for k, v in m.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_tracking")
    p.add_argument("--weights", help="skip training and use this checkpoint")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--classes", choices=("one", "shapes"), default="one",
                   help="train one class 'object' (default) or the generator's four shape classes")
    p.add_argument("--train-sequences", type=int, default=200)
    p.add_argument("--train-frames", type=int, default=8)
    p.add_argument("--tune-sequences", type=int, default=4)
    p.add_argument("--tune-frames", type=int, default=60)
    p.add_argument("--test-sequences", type=int, default=4)
    p.add_argument("--test-frames", type=int, default=60)
    p.add_argument("--track-thresh", type=float, default=None,
                   help="the tracker's high-score threshold (default: the best mean of MOTA and IDF1 of 0.15-0.7 on "
                        "the tuning sequences); low-score detections go down to min(--low-thresh, it)")
    p.add_argument("--low-thresh", type=float, default=0.1)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    from efficientdet.memory import tune_malloc

    tune_malloc()
    result = run(args)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
