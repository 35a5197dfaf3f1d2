"""The ByteTrack-style tracker on hand-built frames: occlusion, crossing, low-score detections, buffers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from efficientdet.detections import Detections
from efficientdet.errors import ConfigError
from efficientdet.track import KalmanBoxFilter, Tracker, box_iou


def frame(boxes, scores, labels=None) -> Detections:
    labels = [0] * len(scores) if labels is None else labels
    return Detections.from_arrays(np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(scores, np.float32),
                                  np.array(labels), ["car", "person"], [3, 1], (640, 480))


def ids_by_x(out: Detections) -> dict[int, float]:
    return {int(t): float(b[0]) for t, b in zip(out.track_ids, out.boxes)}


def test_box_iou_by_hand_and_against_torchvision():
    a = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [0, 0, 0, 5]], dtype=np.float64)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], dtype=np.float64)
    iou = box_iou(a, b)
    # [5,5,15,15] vs [0,0,10,10]: 25 / (100 + 100 - 25); vs [5,0,15,10]: 50 / 150; an empty box: 0
    assert iou[1, 0] == pytest.approx(25 / 175) and iou[1, 1] == pytest.approx(50 / 150)
    assert iou[0, 0] == 1.0 and iou[0, 1] == pytest.approx(0.5 * 100 / 150) and (iou[2] == 0).all()
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (2, 30, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 40, (2, 30, 2))], -1)
    ref = torchvision.ops.box_iou(torch.from_numpy(boxes[0]), torch.from_numpy(boxes[1])).numpy()
    np.testing.assert_allclose(box_iou(boxes[0], boxes[1]), ref, atol=1e-12)


def test_kalman_learns_constant_velocity():
    kf = KalmanBoxFilter(np.array([0, 0, 20, 40]))
    for t in range(1, 15):
        kf.predict()
        kf.update(np.array([4 * t, 2 * t, 20 + 4 * t, 40 + 2 * t]))
    kf.predict()  # frame 15, not seen: extrapolated at (4, 2) px per frame
    np.testing.assert_allclose(kf.box, [60, 30, 80, 70], atol=0.5)


def test_track_survives_a_three_frame_occlusion_and_keeps_its_id():
    tracker = Tracker(track_buffer=30)
    other = [400, 300, 440, 340]  # a static second object keeps its own id throughout
    lost_seen = []
    for f in range(16):
        box = [20 + 5 * f, 100, 60 + 5 * f, 140]
        hidden = f in (7, 8, 9)
        out = tracker.update(frame([other] if hidden else [box, other], [0.9] if hidden else [0.9, 0.8]))
        if hidden:
            lost_seen.append(tracker.lost_ids)
            assert list(out.track_ids) == [2]
        else:
            assert ids_by_x(out) == {1: box[0], 2: 400.0}
    assert lost_seen == [[1], [1], [1]]  # the occlusion did happen: the track was lost, then found again


def test_two_crossing_objects_keep_their_ids():
    tracker = Tracker()
    history = {1: [], 2: []}
    for f in range(20):
        a = [10 + 6 * f, 100, 40 + 6 * f, 130]  # left to right
        b = [124 - 6 * f + 6 * 10, 108, 154 - 6 * f + 6 * 10, 138]  # right to left, 8 px lower
        out = tracker.update(frame([b, a], [0.85, 0.9]))  # the order of the detections changes nothing
        for tid, box in zip(out.track_ids, out.boxes):
            history[int(tid)].append(float(box[1]))
    # the boxes overlap heavily around frame 10 (IoU 0.6 at the closest), yet each id keeps its own object
    assert box_iou(np.array([[70, 100, 100, 130]]), np.array([[70, 108, 100, 138]]))[0, 0] > 0.5
    assert {tid: set(ys) for tid, ys in history.items()} == {1: {108.0}, 2: {100.0}}  # ids in detection order
    assert len(history[1]) == len(history[2]) == 20


def test_low_score_detections_extend_tracks_but_never_start_them():
    tracker = Tracker(track_thresh=0.5, low_thresh=0.1)
    for _ in range(5):  # a low-score object alone: never a track
        assert len(tracker.update(frame([[300, 300, 330, 330]], [0.3]))) == 0
    assert tracker.tracks == []
    for f in range(3):  # a confident object: tentative on its first frame, then tracked with id 1
        out = tracker.update(frame([[10 + 2 * f, 10, 50 + 2 * f, 50], [300, 300, 330, 330]], [0.9, 0.3]))
        assert list(out.track_ids) == ([] if f == 0 else [1])
        assert out.scores.tolist() == ([] if f == 0 else [np.float32(0.9)])
    for f in range(3, 6):  # its score drops (partial occlusion): the low-score box keeps id 1
        out = tracker.update(frame([[10 + 2 * f, 10, 50 + 2 * f, 50], [300, 300, 330, 330]], [0.3, 0.3]))
        assert list(out.track_ids) == [1] and out.scores[0] == pytest.approx(0.3)
        assert out.boxes[0, 0] == 10 + 2 * f
    out = tracker.update(frame([[22, 10, 62, 50]], [0.05]))  # below low_thresh: ignored, the track is lost
    assert len(out) == 0 and tracker.lost_ids == [1]
    assert len(tracker.tracks) == 1  # the static low-score object never got a track


def test_new_tracks_need_a_second_frame_except_on_the_first():
    tracker = Tracker()
    assert list(tracker.update(frame([[0, 0, 20, 20]], [0.9])).track_ids) == [1]  # frame 1: at once
    out = tracker.update(frame([[1, 0, 21, 20], [200, 200, 230, 230]], [0.9, 0.9]))
    assert list(out.track_ids) == [1]  # the newcomer is tentative
    out = tracker.update(frame([[2, 0, 22, 20], [202, 200, 232, 230]], [0.9, 0.9]))
    assert sorted(out.track_ids.tolist()) == [1, 2]
    # a one-frame false positive never gets an id and is forgotten
    tracker.update(frame([[3, 0, 23, 20], [204, 200, 234, 230], [500, 50, 520, 70]], [0.9, 0.9, 0.95]))
    out = tracker.update(frame([[4, 0, 24, 20], [206, 200, 236, 230]], [0.9, 0.9]))
    assert sorted(out.track_ids.tolist()) == [1, 2] and len(tracker.tracks) == 2
    # a score between track_thresh and track_thresh + margin matches tracks but starts none
    for _ in range(3):
        out = tracker.update(frame([[5, 0, 25, 20], [600, 400, 630, 430]], [0.9, 0.55]))
    assert list(out.track_ids) == [1] and len(tracker.tracks) == 2  # the 0.55 object: no track


def test_track_buffer_scales_with_frame_rate_and_retires_ids():
    tracker = Tracker(track_buffer=30, frame_rate=10)  # 30 frames at 30 fps = 10 frames here
    assert tracker.max_lost_frames == 10
    tracker.update(frame([[100, 100, 140, 140]], [0.9]))
    for _ in range(10):
        tracker.update(frame([], []))
    assert tracker.lost_ids == [1]  # still kept after 10 missing frames
    tracker.update(frame([], []))
    assert tracker.lost_ids == [] and tracker.tracks == []  # retired after the 11th
    tracker.update(frame([[100, 100, 140, 140]], [0.9]))
    out = tracker.update(frame([[100, 100, 140, 140]], [0.9]))
    assert list(out.track_ids) == [2]  # the same place later: a new id


def test_class_aware_association():
    for class_aware, expected in ((False, [1]), (True, [2])):
        tracker = Tracker(class_aware=class_aware)
        tracker.update(frame([[100, 100, 140, 140]], [0.9], [0]))
        tracker.update(frame([[100, 100, 140, 140]], [0.9], [1]))
        out = tracker.update(frame([[100, 100, 140, 140]], [0.9], [1]))
        assert list(out.track_ids) == expected and out.names == ["person"]


def test_tracked_detections_write_track_ids_and_reset():
    tracker = Tracker()
    out = tracker.update(frame([[10, 20, 40, 60], [0, 0, 5, 5]], [0.9, 0.05]))
    assert out.track_ids.dtype == np.int64 and out.track_ids.shape == (1,)
    (rec,) = out.to_coco(file_name="f.jpg")
    assert rec["track_id"] == 1 and rec["bbox"] == [10.0, 20.0, 30.0, 40.0] and rec["category_id"] == 3
    assert "track_id" not in frame([[1, 1, 2, 2]], [0.9]).to_coco()[0]
    tracker.reset()
    assert tracker.frame == 0 and tracker.tracks == []
    assert list(tracker.update(frame([[0, 0, 9, 9]], [0.9])).track_ids) == [1]


@pytest.mark.parametrize("kwargs", [{"track_thresh": 1.5}, {"low_thresh": 0.6}, {"frame_rate": 0},
                                    {"track_buffer": -1}])
def test_bad_settings_are_config_errors(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        Tracker(**kwargs)
