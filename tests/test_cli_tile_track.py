"""``predict --tile/--track`` and ``eval --tile`` end to end with a tiny checkpoint on generated files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from efficientdet import Detector, create_model
from efficientdet.cli import main
from efficientdet.data.sequences import make_synthetic_sequences
from efficientdet.data.synth_large import make_large_image_dataset
from efficientdet.inference.tiling import TiledDetector
from efficientdet.weights import save_checkpoint

from .conftest import spread_class_scores

TINY = dict(image_size=128, fpn_channels=16, fpn_layers=1, head_layers=1)
NAMES, IDS = ["circle", "square", "triangle", "cross"], [1, 3, 7, 12]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("d0", num_classes=4, class_names=NAMES, category_ids=IDS, **TINY)
    with torch.no_grad():  # scores around 0.62: detections everywhere, stable from frame to frame
        model.class_net.predict.pw.bias.fill_(0.5)
    return save_checkpoint(tmp_path_factory.mktemp("w") / "tiny.pt", model)


@pytest.fixture(scope="module")
def spread_weights(tmp_path_factory) -> Path:
    """Scores that differ from box to box, so the top ``max_det`` after merging the tiles are well defined."""
    torch.manual_seed(0)
    model = spread_class_scores(create_model("d0", num_classes=4, class_names=NAMES, category_ids=IDS, **TINY), -3.0)
    return save_checkpoint(tmp_path_factory.mktemp("w") / "spread.pt", model)


@pytest.fixture(scope="module")
def large_set(tmp_path_factory) -> dict[str, Path]:
    return make_large_image_dataset(tmp_path_factory.mktemp("large"), num_images=2,
                                    image_size=((300, 340), (260, 300)), num_objects=(3, 6), object_size=(10, 20))


def test_predict_tile_matches_the_python_api(tmp_path, spread_weights, large_set, capsys):
    image = large_set["images"] / "00000.jpg"
    js = tmp_path / "dets.json"
    code = main(["predict", str(image), "--weights", str(spread_weights), "--tile", "128", "--tile-overlap", "0.3",
                 "--score-threshold", "0.3", "--json", str(js), "--out", str(tmp_path / "annotated"),
                 "--backend", "torch"])
    assert code == 0 and "ms inference" in capsys.readouterr().out
    records = json.loads(js.read_text())
    api = TiledDetector(Detector("d0", weights=spread_weights, score_threshold=0.3), tile=128, overlap=0.3,
                        max_det=100)(str(image), batch_size=1)[0]
    assert len(records) == len(api) > 0
    got = np.array([r["bbox"] for r in records])  # xywh, rounded to 3 decimals in the JSON
    want = np.array([[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in api.boxes.tolist()])
    dist = np.abs(got[:, None] - want[None]).max(-1)  # each record's nearest API box, one to one
    assert dist.min(1).max() <= 1e-3 and len(set(dist.argmin(1).tolist())) == len(want)
    assert max(r["bbox"][0] + r["bbox"][2] for r in records) > 128  # boxes beyond the first tile: shifted
    assert (tmp_path / "annotated" / "00000.jpg").is_file()


def test_eval_tile_scores_the_tiled_detections(tmp_path, tiny_weights, large_set, capsys):
    common = ["eval", "--weights", str(tiny_weights), "--images", str(large_set["images"]),
              "--annotations", str(large_set["annotations"])]
    assert main([*common, "--tile", "128", "--json", str(tmp_path / "m.json"),
                 "--save-predictions", str(tmp_path / "p.json")]) == 0
    assert "AP" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert {"AP", "APs", "ARs"} <= set(metrics)
    tiled = json.loads((tmp_path / "p.json").read_text())
    assert main([*common, "--save-predictions", str(tmp_path / "q.json")]) == 0
    whole = json.loads((tmp_path / "q.json").read_text())
    # the tiled run sees each image as 3 x 3 tiles + the whole image: smaller boxes (100 per image both)
    assert len(tiled) == len(whole) == 200
    assert np.median([r["bbox"][2] for r in tiled]) < np.median([r["bbox"][2] for r in whole])


def test_predict_track_gives_persistent_ids_over_frames(tmp_path, tiny_weights, capsys):
    (seq,) = make_synthetic_sequences(tmp_path / "seq", num_sequences=1, num_frames=6, seed=0)
    js = tmp_path / "tracks.json"
    assert main(["predict", str(seq.frames), "--weights", str(tiny_weights), "--track", "--json", str(js)]) == 0
    records = json.loads(js.read_text())
    assert records and all(isinstance(r["track_id"], int) and r["track_id"] >= 1 for r in records)
    frames_of: dict[int, set[str]] = {}
    for r in records:
        frames_of.setdefault(r["track_id"], set()).add(r["file_name"])
        assert len([q for q in records if q["file_name"] == r["file_name"] and q["track_id"] == r["track_id"]]) == 1
    assert max(len(f) for f in frames_of.values()) >= 5  # one id followed over (nearly) every frame


def test_tile_option_errors_are_one_line(tmp_path, tiny_weights, photo_files, capsys):
    assert main(["predict", str(photo_files[0]), "--weights", str(tiny_weights), "--tile-overlap", "0.3"]) == 2
    err = capsys.readouterr().err
    assert "--tile-overlap needs --tile" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(photo_files[0]), "--weights", str(tiny_weights), "--tile", "128", "--tile-overlap", "1"])
    assert exc.value.code == 2 and "must be in [0, 1)" in capsys.readouterr().err
    assert main(["predict", str(photo_files[0]), "--weights", str(tiny_weights), "--tile", "8"]) == 2
    assert "tile=8" in capsys.readouterr().err
