"""``predict VIDEO --track`` and ``--tile`` through the video loop (the tracker hook of cli/predict.py)."""

from __future__ import annotations

import json

from efficientdet.cli import main


def test_predict_video_with_track_and_tile(tmp_path, clip, tiny_weights, one_thread):
    out = tmp_path / "tracks.jsonl"
    code = main(["predict", str(clip), "--weights", str(tiny_weights), "--backend", "torch", "--track",
                 "--tile", "128", "--score-threshold", "0.2", "--json", str(out)])
    assert code == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["frame"] for r in lines] == list(range(24))
    dets = [d for r in lines for d in r["detections"]]
    assert all(isinstance(d["track_id"], int) and d["track_id"] >= 1 for d in dets)
    for r in lines:  # one detection per track and frame
        ids = [d["track_id"] for d in r["detections"]]
        assert len(ids) == len(set(ids))
