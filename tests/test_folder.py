"""Folders of still images through the overlapped pipeline: same results as one call at a time, skips counted."""

from __future__ import annotations

import numpy as np
import torch

from efficientdet import Detector, create_model
from efficientdet.folder import annotated_path, predict_files

from .conftest import make_photo, spread_class_scores


def _detector() -> Detector:
    torch.manual_seed(0)
    model = create_model("d0", num_classes=3, image_size=128, fpn_channels=16, fpn_layers=1, head_layers=1)
    spread_class_scores(model, -3.0)  # distinct scores: the top max_det are the same however the batch is cut
    return Detector(model, score_threshold=0.3, max_det=20)


def test_pipelined_folder_equals_plain_calls_and_counts_skips(tmp_path):
    files = [make_photo(tmp_path / f"img{i}.{'png' if i % 2 else 'jpg'}", 160 + 16 * i, 120, i) for i in range(5)]
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    items = [(p, p.name) for p in files[:3]] + [(tmp_path / "broken.jpg", "broken.jpg")] + \
        [(p, p.name) for p in files[3:]]
    det = _detector()
    seen = []
    summary = predict_files(det, items, tmp_path / "out", batch_size=2, on_image=lambda n, i, d: seen.append(n))
    assert summary.skipped == ["broken.jpg"] and summary.images == 5
    assert seen == [p.name for p in files]  # input order, the broken one left out
    plain = [d for p in files for d in det([str(p)])]
    assert summary.detections == sum(len(d) for d in plain) > 0
    got = {}
    for r in summary.records:
        got.setdefault(r["file_name"], []).append(r)
    for p, d in zip(files, plain):
        want = d.to_coco(file_name=p.name)
        assert len(got.get(p.name, [])) == len(want)
        for a, b in zip(got.get(p.name, []), want):
            np.testing.assert_allclose(a["bbox"], b["bbox"], atol=1e-2)
            assert abs(a["score"] - b["score"]) < 1e-4 and a["category_id"] == b["category_id"]
        assert annotated_path(tmp_path / "out", p.name).stat().st_size > 0
    sequential = predict_files(det, items, None, batch_size=2, pipelined=False)
    assert sequential.records == summary.records and sequential.skipped == ["broken.jpg"]
