"""Generated tracking sequences, the motmetrics wrapper (checked by hand) and the tracker on noisy ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from efficientdet.data.sequences import make_synthetic_sequences, read_mot_ground_truth
from efficientdet.detections import Detections
from efficientdet.track import Tracker, box_iou
from efficientdet.track.metrics import evaluate_tracks, track_frames


@pytest.fixture(scope="module")
def sequences(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq")
    return root, make_synthetic_sequences(root, num_sequences=3, num_frames=40, seed=3)


def test_metrics_of_a_tiny_case_computed_by_hand():
    def gt(*boxes, vis=None):
        ids = np.arange(1, len(boxes) + 1)
        return {"ids": ids, "boxes": np.array(boxes, float), "visibility": np.array(vis or [1.0] * len(boxes))}

    def hyp(pairs):
        return {"ids": np.array([i for i, _ in pairs]), "boxes": np.array([b for _, b in pairs], float).reshape(-1, 4)}

    a = [[0, 0, 10, 10], [2, 0, 12, 10], [4, 0, 14, 10]]
    b = [[50, 0, 60, 10], [52, 0, 62, 10], [54, 0, 64, 10]]
    hidden = [200, 200, 220, 220]  # object 3, 10% visible in frame 2: ignored
    ground_truth = {1: gt(a[0], b[0]), 2: gt(a[1], b[1], hidden, vis=[1, 1, 0.1]), 3: gt(a[2], b[2])}
    hypotheses = {
        1: hyp([(1, a[0]), (2, b[0])]),
        2: hyp([(1, a[1]), (3, [100, 100, 110, 110]), (5, hidden)]),  # B missed, one false positive
        3: hyp([(1, a[2]), (4, b[2])]),  # B comes back under a new id: one switch
    }
    m = evaluate_tracks(ground_truth, hypotheses)
    # 6 objects to find; 1 miss + 1 false positive + 1 switch: MOTA = 1 - 3/6
    assert (m["num_objects"], m["num_misses"], m["num_false_positives"], m["num_switches"]) == (6, 1, 1, 1)
    assert m["mota"] == pytest.approx(0.5) and m["num_ignored"] == 1
    # identities: A<->1 for 3 frames, B<->2 (or 4) for 1: IDTP 4 of 6 true and 6 predicted -> 8 / 12
    assert m["idf1"] == pytest.approx(2 / 3)


def test_sequences_are_deterministic_and_have_crossings_and_occlusions(sequences, tmp_path):
    root, infos = sequences
    again = make_synthetic_sequences(tmp_path, num_sequences=1, num_frames=40, seed=3)
    assert (again[0].frames / "000017.jpg").read_bytes() == (infos[0].frames / "000017.jpg").read_bytes()
    assert again[0].gt.read_text() == infos[0].gt.read_text()
    assert Image.open(infos[1].frames / "000001.jpg").size == (320, 240)
    assert len(list(infos[2].frames.iterdir())) == 40

    hidden_runs, crossings, rows = 0, 0, 0
    for info in infos:
        gt = read_mot_ground_truth(info.gt)
        assert sorted(gt) == list(range(1, 41))
        rows += sum(int((g["visibility"] >= 0.25).sum()) for g in gt.values())
        for oid in np.unique(gt[1]["ids"]):
            vis = [float(gt[f]["visibility"][gt[f]["ids"] == oid][0]) for f in range(1, 41)]
            hidden_runs += _hidden_then_back(vis)
        for g in gt.values():
            iou = box_iou(g["boxes"], g["boxes"])
            crossings += int((np.triu(iou, 1) > 0).sum())
    assert hidden_runs >= 1 and crossings >= 1
    doc = json.loads((root / "annotations.json").read_text())
    assert len(doc["images"]) == 120 and len(doc["annotations"]) == rows
    assert (root / doc["images"][0]["file_name"]).is_file()


def _hidden_then_back(vis: list[float]) -> int:
    """Stretches of >= 3 fully hidden frames after which the object is at least half visible again."""
    count, run = 0, 0
    for i, v in enumerate(vis):
        if v == 0:
            run += 1
            continue
        if run >= 3 and max(vis[i:]) >= 0.5:
            count += 1
        run = 0
    return count


def _noisy(g: dict, rng: np.random.Generator) -> Detections:
    keep = (g["visibility"] >= 0.25) & (rng.random(len(g["ids"])) >= 0.05)  # 5% missed
    boxes = g["boxes"][keep]
    wh = np.tile(boxes[:, 2:] - boxes[:, :2], 2)
    boxes = boxes + rng.normal(0, 0.03, boxes.shape) * wh
    scores = rng.uniform(0.3, 1.0, len(boxes))  # some low-score boxes: they only extend tracks
    order = np.argsort(-scores)
    return Detections.from_arrays(boxes[order], scores[order], np.zeros(len(order), np.int64), ["obj"], [1],
                                  (320, 240))


def test_tracker_on_noisy_ground_truth_scores_high(sequences):
    _, infos = sequences
    rng = np.random.default_rng(0)
    for info in infos:
        gt = read_mot_ground_truth(info.gt)
        tracker = Tracker(frame_rate=info.fps)
        tracked = {f: tracker.update(_noisy(gt[f], rng)) for f in sorted(gt)}
        m = evaluate_tracks(gt, track_frames(tracked))
        assert m["mota"] >= 0.8 and m["idf1"] >= 0.8, (info.name, m)
        assert m["num_objects"] > 80  # objects x frames scored
