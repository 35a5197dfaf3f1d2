"""COCO evaluation: hand-checkable AP values, robustness of the inputs, and backend agreement."""

from __future__ import annotations

import json
import random

import pytest

from efficientdet.errors import ConfigError, DataError
from efficientdet.eval import METRIC_NAMES, evaluate_detections, format_metrics, load_predictions

BACKENDS = ["pycocotools", "faster-coco-eval"]


def _gt(anns, images=(1,), categories=((1, "cat"), (2, "dog"))):
    """A minimal COCO dict; annotations given as (image_id, category_id, bbox[, iscrowd])."""
    out = []
    for k, a in enumerate(anns):
        x, y, w, h = a[2]
        ann = {"id": k + 1, "image_id": a[0], "category_id": a[1], "bbox": list(a[2]), "area": w * h}
        ann["iscrowd"] = a[3] if len(a) > 3 else 0
        out.append(ann)
    return {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in images],
        "annotations": out,
        "categories": [{"id": c, "name": n} for c, n in categories],
    }


def _det(image_id, cat, bbox, score):
    return {"image_id": image_id, "category_id": cat, "bbox": list(bbox), "score": score}


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_detections_give_ap_one(backend):
    gt = _gt([(1, 1, (10, 10, 50, 40)), (1, 2, (100, 100, 120, 90)), (2, 1, (5, 5, 20, 20))], images=(1, 2))
    dets = [_det(a["image_id"], a["category_id"], a["bbox"], 0.9) for a in gt["annotations"]]
    m = evaluate_detections(gt, dets, backend=backend)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"):
        assert m[key] == pytest.approx(1.0), key
    assert m["per_class"] == pytest.approx({"cat": 1.0, "dog": 1.0})
    assert m["per_class_AP50"] == pytest.approx({"cat": 1.0, "dog": 1.0})
    assert m["num_images"] == 2 and m["num_detections"] == 3 and m["num_skipped_detections"] == 0
    assert all(type(m[k]) is float for k in METRIC_NAMES)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_detection_with_iou_062(backend):
    gt = _gt([(1, 1, (0, 0, 100, 100))])
    m = evaluate_detections(gt, [_det(1, 1, (0, 0, 62, 100), 0.8)], backend=backend)  # IoU 0.62
    assert m["AP50"] == pytest.approx(1.0)
    assert m["AP75"] == 0.0
    assert m["AP"] == pytest.approx(0.3)  # matched at IoU thresholds 0.50, 0.55, 0.60 out of 10
    assert m["per_class"]["cat"] == pytest.approx(0.3)
    assert m["per_class"]["dog"] == -1.0  # no ground truth for dog


def test_false_positive_ranking_changes_ap_as_hand_computed():
    gt = _gt([(1, 1, (0, 0, 40, 40)), (1, 1, (100, 100, 40, 40))])
    tp1, tp2, fp = (0, 0, 40, 40), (100, 100, 40, 40), (300, 300, 40, 40)
    # Ranked TP, FP, TP: recall 0.5, 0.5, 1; precision 1, 1/2, 2/3 -> interpolated precision 1 for the
    # 51 recall thresholds 0..0.50 and 2/3 for the 50 thresholds 0.51..1.00.
    m = evaluate_detections(gt, [_det(1, 1, tp1, 0.9), _det(1, 1, fp, 0.8), _det(1, 1, tp2, 0.7)])
    assert m["AP"] == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101)
    # FP ranked first: precision 1/2, 2/3 at recall 0.5, 1 -> 2/3 everywhere.
    m = evaluate_detections(gt, [_det(1, 1, fp, 0.95), _det(1, 1, tp1, 0.9), _det(1, 1, tp2, 0.7)])
    assert m["AP"] == pytest.approx(2 / 3)
    # FP ranked last does not hurt.
    m = evaluate_detections(gt, [_det(1, 1, tp1, 0.9), _det(1, 1, tp2, 0.8), _det(1, 1, fp, 0.1)])
    assert m["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_detections(backend):
    gt = _gt([(1, 1, (0, 0, 100, 100))])
    m = evaluate_detections(gt, [], backend=backend)
    assert m["AP"] == 0.0 and m["AR100"] == 0.0 and m["APs"] == -1.0
    assert m["per_class"] == {"cat": 0.0, "dog": -1.0}
    assert m["num_detections"] == 0


def test_missing_area_iscrowd_info_categories_and_file_input(tmp_path):
    data = {
        "images": [{"id": 7}],
        "annotations": [{"image_id": 7, "category_id": 3, "bbox": [0, 0, 10, 10]}],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    m = evaluate_detections(path, [_det(7, 3, (0, 0, 10, 10), 0.5)], class_names={3: "bird"})
    assert m["AP"] == pytest.approx(1.0)
    assert m["APs"] == pytest.approx(1.0) and m["APm"] == -1.0  # area computed as 10 * 10 = small
    assert m["per_class"] == pytest.approx({"bird": 1.0})
    assert evaluate_detections(str(path), [])["per_class"] == {3: 0.0}  # categories derived, keyed by id
    assert "area" not in data["annotations"][0]  # the caller's dict is not modified


def test_crowd_ground_truth_is_honoured():
    gt = _gt([(1, 1, (0, 0, 50, 50)), (1, 1, (100, 100, 200, 200), 1)])
    on_crowd = _det(1, 1, (120, 120, 60, 60), 0.9)  # inside the crowd region, ranked first
    m = evaluate_detections(gt, [on_crowd, _det(1, 1, (0, 0, 50, 50), 0.5)])
    assert m["AP"] == pytest.approx(1.0)  # not a false positive
    elsewhere = _det(1, 1, (400, 300, 60, 60), 0.9)
    m = evaluate_detections(gt, [elsewhere, _det(1, 1, (0, 0, 50, 50), 0.5)])
    assert m["AP"] == pytest.approx(0.5)


def test_unknown_images_and_categories_are_dropped_and_counted():
    gt = _gt([(1, 1, (0, 0, 100, 100))])
    dets = [
        _det(1, 1, (0, 0, 100, 100), 0.9),
        _det(99, 1, (0, 0, 10, 10), 0.9),
        _det(1, 42, (0, 0, 9, 9), 0.9),
    ]
    m = evaluate_detections(gt, dets)
    assert m["AP"] == pytest.approx(1.0)
    assert (m["num_detections"], m["num_skipped_detections"], m["num_unknown_category_detections"]) == (
        1,
        1,
        1,
    )


def test_quiet_suppresses_prints(capsys):
    gt = _gt([(1, 1, (0, 0, 100, 100))])
    evaluate_detections(gt, [_det(1, 1, (0, 0, 100, 100), 0.9)])
    assert capsys.readouterr().out == ""
    evaluate_detections(gt, [_det(1, 1, (0, 0, 100, 100), 0.9)], quiet=False)
    assert "Average Precision" in capsys.readouterr().out


def test_unknown_backend():
    with pytest.raises(ConfigError, match="did you mean 'faster-coco-eval'"):
        evaluate_detections(_gt([]), [], backend="faster-coco")


def test_format_metrics():
    gt = _gt([(1, 1, (0, 0, 100, 100))])
    text = format_metrics(evaluate_detections(gt, [_det(1, 1, (0, 0, 62, 100), 0.8)]))
    assert "AP50" in text and "ARl" in text and "1.000" in text and "0.300" in text
    assert "cat" in text and "dog" in text


def test_load_predictions_by_file_name(tmp_path, caplog):
    gt = _gt([], images=(1, 2, 3, 4, 5))
    names = ["val/a.jpg", "val/b.jpg", "other/c.jpg", "x/d.jpg", "y/d.jpg"]
    for img, name in zip(gt["images"], names):
        img["file_name"] = name
    records = [
        {
            "file_name": "val/a.jpg",
            "bbox": [1, 2, 3, 4],
            "score": 0.5,
            "category_id": 1,
            "category_name": "cat",
        },
        {"file_name": "/data/coco/val/b.jpg", "bbox": [1, 2, 3, 4], "score": 0.5, "category_id": 2},
        {"file_name": "c.jpg", "bbox": [1, 2, 3, 4], "score": 0.5, "category_id": 1},
        {"file_name": "d.jpg", "bbox": [1, 2, 3, 4], "score": 0.5, "category_id": 1},  # ambiguous basename
        {"file_name": "zzz.jpg", "bbox": [1, 2, 3, 4], "score": 0.5, "category_id": 1},
        {"image_id": 4, "bbox": [1, 2, 3, 4], "score": 0.25, "category_id": 2},
    ]
    pred_path = tmp_path / "pred.json"
    pred_path.write_text(json.dumps(records))
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    preds = load_predictions(pred_path, gt_path)
    assert [p["image_id"] for p in preds] == [1, 2, 3, 4]
    assert preds[0] == {"image_id": 1, "category_id": 1, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5}
    assert preds.num_unmatched == 2 and preds.unmatched_file_names == ["d.jpg", "zzz.jpg"]
    assert "2 detection(s)" in caplog.text
    m = evaluate_detections(gt_path, preds)
    assert m["num_unmatched_file_names"] == 2 and m["num_detections"] == 4
    assert "2 skipped (unmatched file name)" in format_metrics(m)
    # None matching at all means the wrong annotation file.
    (tmp_path / "bad.json").write_text(json.dumps(records[4:5]))
    with pytest.raises(DataError, match="none of the 1 detection file names"):
        load_predictions(tmp_path / "bad.json", gt)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"a": 1}', "expected a JSON list"),
        ('[{"image_id": 1, "score": 0.5, "category_id": 1}]', "record 0 has no 'bbox'"),
        ('[{"image_id": 1, "bbox": [1, 2, 3, 4], "category_id": 1}]', "record 0 has no 'score'"),
        ('[{"image_id": 1, "bbox": [1, 2, 3, 4], "score": 1}, 5]', "record 0 has no 'category_id'"),
        ('[{"image_id": 1, "bbox": [1, 2, 3], "score": 1, "category_id": 1}]', "record 0 bbox"),
        ('[{"image_id": 1, "bbox": [1, 2, 3, NaN], "score": 1, "category_id": 1}]', "not 4 finite numbers"),
        ('[{"bbox": [1, 2, 3, 4], "score": 1, "category_id": 1}]', "neither 'image_id' nor 'file_name'"),
    ],
)
def test_load_predictions_malformed(tmp_path, content, message):
    path = tmp_path / "pred.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        load_predictions(path, _gt([]))
    text = str(info.value)
    assert "\n" not in text and str(path) in text


def test_missing_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_predictions(tmp_path / "nope.json", _gt([]))
    with pytest.raises(DataError, match="not found"):
        evaluate_detections(tmp_path / "nope.json", [])


def _random_problem(seed: int = 0):
    rng = random.Random(seed)
    anns, dets = [], []
    for image_id in range(1, 21):
        for _ in range(rng.randint(0, 6)):
            w, h = rng.uniform(4, 200), rng.uniform(4, 200)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            cat = rng.randint(1, 3)
            anns.append((image_id, cat, (x, y, w, h), int(rng.random() < 0.08)))
            for _ in range(rng.randint(0, 4)):  # jittered copies, sometimes with the wrong class
                j = [rng.gauss(0, 0.06) for _ in range(4)]
                box = (x + j[0] * w, y + j[1] * h, w * (1 + j[2]), h * (1 + j[3]))
                dets.append(
                    _det(image_id, cat if rng.random() < 0.85 else rng.randint(1, 3), box, rng.random())
                )
        for _ in range(rng.randint(0, 8)):  # background false positives
            w, h = rng.uniform(4, 150), rng.uniform(4, 150)
            box = (rng.uniform(0, 640 - w), rng.uniform(0, 480 - h), w, h)
            dets.append(_det(image_id, rng.randint(1, 3), box, rng.random()))
    gt = _gt(anns, images=range(1, 21), categories=((1, "a"), (2, "b"), (3, "c")))
    return gt, dets


def test_backends_agree_on_random_problem():
    gt, dets = _random_problem()
    assert len(dets) > 150 and any(a["iscrowd"] for a in gt["annotations"])
    ref = evaluate_detections(gt, dets, backend="pycocotools")
    fast = evaluate_detections(gt, dets, backend="faster-coco-eval")
    assert 0.1 < ref["AP"] < 0.9
    for key in METRIC_NAMES:
        assert fast[key] == pytest.approx(ref[key], abs=1e-6), key
    for name in ("a", "b", "c"):
        assert fast["per_class"][name] == pytest.approx(ref["per_class"][name], abs=1e-6)
        assert fast["per_class_AP50"][name] == pytest.approx(ref["per_class_AP50"][name], abs=1e-6)
