"""HOTA in :func:`efficientdet.track.metrics.evaluate_tracks`: hand-computed cases and trackeval's own
MOTChallenge pipeline (files on disk, its preprocessing, HOTA/CLEAR/Identity) as the oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import trackeval

from efficientdet.errors import ConfigError
from efficientdet.track.metrics import evaluate_tracks, hota_metrics


def _box(x: float, y: float = 0.0, size: float = 10.0) -> list[float]:
    return [x, y, x + size, y + size]


def _frame(pairs) -> dict[str, np.ndarray]:
    """``[(id, box), ...]`` -> ``{"ids", "boxes"}``."""
    return {"ids": np.array([i for i, _ in pairs], np.int64),
            "boxes": np.array([b for _, b in pairs], np.float64).reshape(-1, 4)}


# two objects far apart (IoU 0 with each other); every tracker box equals its ground-truth box (IoU 1), so
# a pair matches at every localisation threshold alpha and all 19 alphas give the same values
A = [_box(0 + 2 * t) for t in range(6)]
B = [_box(100 + 2 * t, 50) for t in range(6)]


def test_perfect_tracks_score_one():
    gt = {t + 1: _frame([(1, A[t]), (2, B[t])]) for t in range(6)}
    hyp = {t + 1: _frame([(7, A[t]), (9, B[t])]) for t in range(6)}  # other id numbers: any names will do
    m = evaluate_tracks(gt, hyp)
    assert m["hota"] == pytest.approx(1.0) and m["deta"] == pytest.approx(1.0) and m["assa"] == pytest.approx(1.0)
    assert m["loca"] == pytest.approx(1.0) and m["mota"] == pytest.approx(1.0)


def test_identity_swap_half_way_by_hand():
    # 4 frames; tracker 1 follows A then B, tracker 2 follows B then A (swap after frame 2)
    gt = {t + 1: _frame([(1, A[t]), (2, B[t])]) for t in range(4)}
    hyp = {t + 1: _frame([(1, A[t] if t < 2 else B[t]), (2, B[t] if t < 2 else A[t])]) for t in range(4)}
    m = evaluate_tracks(gt, hyp)
    # every detection is found: DetA = TP / (TP + FN + FP) = 8 / 8
    assert m["deta"] == pytest.approx(1.0)
    # each match c pairs a ground-truth id with a tracker id for 2 of its 4 frames:
    # A(c) = TPA / (TPA + FNA + FPA) = 2 / (2 + 2 + 2) for all 8 matches
    assert m["assa"] == pytest.approx(1 / 3)
    assert m["hota"] == pytest.approx(math.sqrt(1 / 3))
    # motmetrics on the same data: two switches at frame 3 -> MOTA 1 - 2/8; IDF1 = 2 * 4 / (8 + 8)
    assert m["mota"] == pytest.approx(0.75) and m["idf1"] == pytest.approx(0.5)


def test_swap_with_a_miss_and_a_false_positive_by_hand():
    # 6 frames; tracker 1 follows A in frames 1-3 and B in 4-5; tracker 2 follows B in 1-3 and A in 4-6;
    # B is missed in frame 6, and tracker 3 is a false positive in frame 2 (far from both)
    gt = {t + 1: _frame([(1, A[t]), (2, B[t])]) for t in range(6)}
    hyp = {}
    for t in range(6):
        pairs = [(1, A[t])] if t < 3 else ([(1, B[t])] if t < 5 else [])
        pairs.append((2, B[t] if t < 3 else A[t]))
        if t == 1:
            pairs.append((3, _box(200, 200)))
        hyp[t + 1] = _frame(pairs)
    m = evaluate_tracks(gt, hyp)
    tp, fn, fp = 11, 1, 1
    assert m["deta"] == pytest.approx(tp / (tp + fn + fp))
    assert m["detre"] == pytest.approx(11 / 12) and m["detpr"] == pytest.approx(11 / 12)
    # per match: A(c) = TPA / (TPA + FNA + FPA), with |A| = |B| = 6 gt boxes, |1| = 5 and |2| = 6 tracker boxes
    a1 = 3 / (3 + 3 + 2)  # (A, 1): frames 1-3
    b2 = 3 / (3 + 3 + 3)  # (B, 2): frames 1-3
    b1 = 2 / (2 + 4 + 3)  # (B, 1): frames 4-5
    a2 = 3 / (3 + 3 + 3)  # (A, 2): frames 4-6
    assa = (3 * a1 + 3 * b2 + 2 * b1 + 3 * a2) / tp
    assert assa == pytest.approx(257 / 792)
    assert m["assa"] == pytest.approx(assa)
    assert m["hota"] == pytest.approx(math.sqrt(tp / (tp + fn + fp) * assa))


def test_localisation_thresholds_are_averaged():
    # one object, one tracker box at IoU 0.5 in every frame: it matches for alpha 0.05 ... 0.50 (10 of
    # the 19 thresholds); there DetA = AssA = 1, above it nothing matches (DetA = 0)
    gt = {t: _frame([(1, [0, 0, 10, 10])]) for t in range(1, 4)}
    hyp = {t: _frame([(1, [0, 0, 10, 5])]) for t in range(1, 4)}  # IoU 50 / 100
    m = evaluate_tracks(gt, hyp)
    assert m["deta"] == pytest.approx(10 / 19) and m["hota"] == pytest.approx(10 / 19)
    assert m["mota"] == pytest.approx(1.0)


def test_hota_metrics_refuses_a_repeated_id_in_a_frame():
    with pytest.raises(ConfigError, match="occurs twice"):
        hota_metrics([(np.array([1, 1]), np.array([1]), np.ones((2, 1)))])


def _random_sequence(seed: int, frames: int = 40):
    """Ground truth of 6 moving objects (some rows barely visible: ignored) and a tracker output with
    jitter, misses, false positives, fragmented and swapped identities."""
    rng = np.random.default_rng(seed)
    n = 6
    pos = rng.uniform(0, 300, (n, 2))
    vel = rng.uniform(-4, 4, (n, 2))
    size = rng.uniform(20, 45, (n, 2))
    gt, hyp = {}, {}
    remap = {i: i + 1 for i in range(n)}
    next_id = n + 1
    for f in range(1, frames + 1):
        pos += vel
        boxes = np.concatenate([pos, pos + size], 1)
        vis = np.where(rng.random(n) < 0.1, rng.uniform(0.0, 0.2, n), rng.uniform(0.3, 1.0, n))
        gt[f] = {"ids": np.arange(1, n + 1), "boxes": boxes.copy(), "visibility": vis}
        if rng.random() < 0.08:  # a tracker id breaks (fragment) or two swap
            i, j = rng.choice(n, 2, replace=False)
            if rng.random() < 0.5:
                remap[i], next_id = next_id, next_id + 1
            else:
                remap[i], remap[j] = remap[j], remap[i]
        keep = rng.random(n) >= 0.15
        wh = np.tile(size, 2)
        h_boxes = boxes + rng.normal(0, 0.08, boxes.shape) * wh
        ids = [remap[i] for i in range(n) if keep[i]]
        h_boxes = h_boxes[keep]
        if rng.random() < 0.3:  # false positives, some on an object (duplicates)
            xy = rng.uniform(0, 300, 2)
            h_boxes = np.concatenate([h_boxes, [[*xy, *(xy + 30)]]])
            ids.append(1000 + f)
        hyp[f] = {"ids": np.array(ids, np.int64), "boxes": h_boxes}
    return gt, hyp


def _row(frame: int, track_id: int, box, rest: str) -> str:
    """One MOTChallenge line: frame, id, x, y, w, h (full float precision), then ``rest``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return f"{frame},{int(track_id)},{x0!r},{y0!r},{x1 - x0!r},{y1 - y0!r},{rest}"


def _write_mot(root, gt, hyp, frames: int, min_visibility: float = 0.25):
    """The sequence as MOTChallenge files for trackeval: ignored objects as class 8 (distractor)."""
    seq = root / "gt" / "seq" / "gt"
    seq.mkdir(parents=True)
    lines = []
    for f, g in gt.items():
        for i, b, v in zip(g["ids"], g["boxes"], g["visibility"]):
            cls = 1 if v >= min_visibility else 8
            lines.append(_row(f, i, b, f"1,{cls},{float(v)!r}"))
    (seq / "gt.txt").write_text("\n".join(lines) + "\n")
    out = root / "trackers" / "ours" / "data"
    out.mkdir(parents=True)
    lines = [_row(f, i, b, "1,-1,-1,-1") for f, h in hyp.items() for i, b in zip(h["ids"], h["boxes"])]
    (out / "seq.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_trackeval_on_mot_files(tmp_path, seed):
    frames = 40
    gt, hyp = _random_sequence(seed, frames)
    ours = evaluate_tracks(gt, hyp)
    assert ours["num_ignored"] > 0 and 0.2 < ours["hota"] < 0.95  # the case exercises ignoring and errors

    _write_mot(tmp_path, gt, hyp, frames)
    evaluator = trackeval.Evaluator({"USE_PARALLEL": False, "PRINT_RESULTS": False, "PRINT_CONFIG": False,
                                     "TIME_PROGRESS": False, "OUTPUT_SUMMARY": False, "OUTPUT_DETAILED": False,
                                     "PLOT_CURVES": False, "DISPLAY_LESS_PROGRESS": True})
    dataset = trackeval.datasets.MotChallenge2DBox({
        "GT_FOLDER": str(tmp_path / "gt"), "TRACKERS_FOLDER": str(tmp_path / "trackers"),
        "OUTPUT_FOLDER": str(tmp_path / "out"), "SKIP_SPLIT_FOL": True, "SEQ_INFO": {"seq": frames},
        "TRACKERS_TO_EVAL": ["ours"], "PRINT_CONFIG": False})
    metrics = [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR({"PRINT_CONFIG": False}),
               trackeval.metrics.Identity({"PRINT_CONFIG": False})]
    results, _ = evaluator.evaluate([dataset], metrics)
    ref = results["MotChallenge2DBox"]["ours"]["seq"]["pedestrian"]
    for field, key in (("HOTA", "hota"), ("DetA", "deta"), ("AssA", "assa"), ("LocA", "loca")):
        assert ours[key] == pytest.approx(float(np.mean(ref["HOTA"][field])), abs=1e-9), key
    # and motmetrics' MOTA / IDF1 (the same data) agree with trackeval's CLEAR / Identity
    assert ours["mota"] == pytest.approx(ref["CLEAR"]["MOTA"], abs=1e-9)
    assert ours["idf1"] == pytest.approx(ref["Identity"]["IDF1"], abs=1e-9)
    assert ours["num_switches"] == ref["CLEAR"]["IDSW"]


def test_missing_trackeval_is_a_one_line_error_naming_the_fix(monkeypatch):
    import sys

    for name in [m for m in sys.modules if m == "trackeval" or m.startswith("trackeval.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "trackeval", None)  # makes `import trackeval` raise ImportError
    gt = {1: _frame([(1, A[0])])}
    with pytest.raises(ConfigError, match=r"^HOTA needs the trackeval package: pip install trackeval$"):
        evaluate_tracks(gt, gt)
