"""The command line on real image files: predict, models, eval, and its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from efficientdet import create_model
from efficientdet.cli import main
from efficientdet.weights import save_checkpoint

TINY = dict(image_size=128, fpn_channels=16, fpn_layers=1, head_layers=1)


@pytest.fixture
def tiny_weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = create_model("d0", num_classes=2, class_names=["circle", "square"], category_ids=[3, 7], **TINY)
    with torch.no_grad():  # make some scores exceed the threshold
        model.class_net.predict.pw.bias.fill_(0.0)
    return save_checkpoint(tmp_path / "tiny.pt", model)


def test_predict_files_dirs_and_globs(tmp_path, photo_files, tiny_weights, capsys):
    out, js = tmp_path / "annotated", tmp_path / "dets.json"
    code = main(["predict", str(photo_files[0]), str(tmp_path / "*.png"), "--weights", str(tiny_weights),
                 "--out", str(out), "--json", str(js), "--score-threshold", "0.3", "--max-det", "5"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "wide.jpg: 320x200" in printed and "tall.png: 150x260" in printed and "ms inference" in printed
    records = json.loads(js.read_text())
    assert records, "expected detections with a zero class bias"
    assert set(records[0]) == {"file_name", "bbox", "score", "category_id", "category_name"}
    assert {r["category_id"] for r in records} <= {3, 7}
    assert {r["category_name"] for r in records} <= {"circle", "square"}
    for r in records:
        x, y, w, h = r["bbox"]
        size = (320, 200) if r["file_name"] == "wide.jpg" else (150, 260)
        assert x >= 0 and y >= 0 and x + w <= size[0] + 1e-3 and y + h <= size[1] + 1e-3 and r["score"] >= 0.3
    per_image = {}
    for r in records:
        per_image[r["file_name"]] = per_image.get(r["file_name"], 0) + 1
    assert max(per_image.values()) <= 5
    assert Image.open(out / "wide.jpg").size == (320, 200) and (out / "tall.png").exists()


def test_files_with_one_name_in_two_folders_keep_apart(tmp_path, photo_files, tiny_weights, capsys):
    """``predict dA/x.png dB/x.png``: two annotated copies and two JSON file names, not one overwriting the other."""
    import shutil

    for folder, src in (("dA", photo_files[0]), ("dB", photo_files[1])):
        (tmp_path / folder).mkdir()
        shutil.copy(src, tmp_path / folder / "x.png")
    out, js = tmp_path / "out", tmp_path / "d.json"
    assert main(["predict", str(tmp_path / "dA" / "x.png"), str(tmp_path / "dB" / "x.png"), str(photo_files[2]),
                 "--weights", str(tiny_weights), "--out", str(out), "--json", str(js), "--score-threshold", "0.3"]) == 0
    printed = capsys.readouterr().out
    assert "dA/x.png: 320x200" in printed and "dB/x.png: 150x260" in printed
    assert Image.open(out / "dA" / "x.png").size == (320, 200) and Image.open(out / "dB" / "x.png").size == (150, 260)
    assert {r["file_name"] for r in json.loads(js.read_text())} <= {"dA/x.png", "dB/x.png", photo_files[2].name}
    assert not (out / "x.png").exists()


def test_predict_directory_with_a_bad_file(tmp_path, photo_files, tiny_weights, capsys):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    code = main(["predict", str(tmp_path), "--weights", str(tiny_weights), "--batch-size", "2"])
    captured = capsys.readouterr()
    assert code == 1
    assert "broken.jpg" in captured.err and "1 input(s) skipped" in captured.err
    assert captured.out.count("ms inference") == 3  # the three good images were still processed


def test_models_json_lists_family_with_exact_params(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["efficientdet_d0"]["params"] == 3_880_067 and rows["efficientdet_d0"]["input_size"] == 512
    assert abs(rows["efficientdet_d7x"]["flops"] / 410e9 - 1) < 0.03
    assert len(rows) == 15 + 8  # the detection family and the segmentation rows d0_seg ... d7_seg
    d4_seg = rows["efficientdet_d4_seg"]  # the paper's: 17M parameters, 18B FLOPs (Table 3)
    assert abs(d4_seg["params"] / 17e6 - 1) < 0.1 and abs(d4_seg["flops"] / 18e9 - 1) < 0.1
    assert d4_seg["tasks"] == ["segment"] and d4_seg["levels"] == [2, 7] and d4_seg["anchors"] == 0
    assert rows["efficientdet_d0"]["published_weights"] == "tf_efficientdet_d0_34-f153e0cf.pth"
    assert rows["efficientdet_d0"]["coco_ap"] == 34.2


def test_eval_predictions_file_by_file_name(tmp_path, photo_files, capsys):
    gt = {"images": [{"id": 1, "file_name": "wide.jpg", "width": 320, "height": 200}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 50, 40], "area": 2000,
                           "iscrowd": 0}],
          "categories": [{"id": 7, "name": "square"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    preds = [{"file_name": "wide.jpg", "bbox": [10, 10, 50, 40], "score": 0.9, "category_id": 7}]
    (tmp_path / "p.json").write_text(json.dumps(preds))
    code = main(["eval", "--predictions", str(tmp_path / "p.json"), "--annotations", str(tmp_path / "gt.json"),
                 "--json", str(tmp_path / "m.json")])
    assert code == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert set(metrics) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm",
                            "ARl", "per_class"}


def test_no_usable_image_is_an_error_not_a_score(tmp_path, photo_files, tiny_weights, capsys):
    """Annotations whose files are not under --images (wrong split or folder): eval, train and anchors stop
    with one line naming the cause, instead of AP -1 with exit 0 or 'lower the batch size'."""
    gt = {"images": [{"id": 1, "file_name": "sub/wide.jpg", "width": 320, "height": 200}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 50, 40], "area": 2000,
                           "iscrowd": 0}],
          "categories": [{"id": 7, "name": "square"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    images, ann = str(photo_files[0].parent), str(tmp_path / "gt.json")
    for args in (["eval", "--weights", str(tiny_weights), "--images", images, "--annotations", ann,
                  "--json", str(tmp_path / "m.json")],
                 ["train", "--model", "d0", "--train-images", images, "--train-annotations", ann,
                  "--epochs", "1", "--batch-size", "1", "--image-size", "128", "--out", str(tmp_path / "run")],
                 ["anchors", "--train-images", images, "--train-annotations", ann]):
        assert main(args) == 2, args[0]
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "gt.json: no usable image (1 images skipped because the file is missing" in err, (args[0], err)
        assert f"check that {images} is the folder its file names are relative to" in err
    assert not (tmp_path / "m.json").exists()


def test_eval_matches_voc_classes_to_the_model_by_name(tmp_path, photo_files, tiny_weights, capsys):
    """A model trained with COCO ids (circle 3, square 7) scored on VOC xml (whose reader numbers classes 1..C
    from the sorted names) gives the COCO json's numbers for the same boxes; a class the model lacks is named
    and counts as missed. The ground truth is the model's own best box per image, so the scores are > 0."""
    assert main(["predict", *map(str, photo_files), "--weights", str(tiny_weights), "--json",
                 str(tmp_path / "p.json"), "--score-threshold", "0.01"]) == 0
    best: dict[str, dict] = {}
    for r in json.loads((tmp_path / "p.json").read_text()):
        if r["file_name"] not in best or r["score"] > best[r["file_name"]]["score"]:
            best[r["file_name"]] = r
    voc = tmp_path / "voc"
    voc.mkdir()
    coco = {"images": [], "annotations": [], "categories": [{"id": 3, "name": "circle"}, {"id": 7, "name": "square"},
                                                              {"id": 9, "name": "triangle"}]}
    for i, path in enumerate(photo_files, 1):
        w, h = Image.open(path).size
        r = best[path.name]
        x, y, bw, bh = r["bbox"]
        objects = [(r["category_name"], (x, y, x + bw, y + bh)), ("triangle", (1, 1, 30, 30))]
        xml = "".join(f"<object><name>{n}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
                      f"<ymax>{y2}</ymax></bndbox></object>" for n, (x1, y1, x2, y2) in objects)
        (voc / f"{path.stem}.xml").write_text(f"<annotation><filename>{path.name}</filename><size><width>{w}</width>"
                                              f"<height>{h}</height></size>{xml}</annotation>")
        coco["images"].append({"id": i, "file_name": path.name, "width": w, "height": h})
        for n, (x1, y1, x2, y2) in objects:
            cid = {"circle": 3, "square": 7, "triangle": 9}[n]
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i, "iscrowd": 0,
                                        "category_id": cid, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                        "area": (x2 - x1) * (y2 - y1)})
    (tmp_path / "gt.json").write_text(json.dumps(coco))
    common = ["eval", "--weights", str(tiny_weights), "--images", str(tmp_path)]
    assert main([*common, "--annotations", str(voc), "--json", str(tmp_path / "voc.json"), "--save-predictions",
                 str(tmp_path / "saved.json")]) == 0
    assert "1 class(es) not among the 2 classes of the model (triangle)" in capsys.readouterr().err
    # the saved detections scored against the VOC folder (--predictions, with --images) give the same numbers
    assert main(["eval", "--predictions", str(tmp_path / "saved.json"), "--images", str(tmp_path), "--annotations",
                 str(voc), "--json", str(tmp_path / "again.json")]) == 0
    again, first = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("again", "voc"))
    assert again["AP"] == first["AP"] and again["per_class"] == first["per_class"]
    assert main([*common, "--annotations", str(tmp_path / "gt.json"), "--json", str(tmp_path / "coco.json")]) == 0
    by_voc, by_coco = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("voc", "coco"))
    classes = {r["category_name"] for r in best.values()}
    for name in classes:  # the model's best boxes are found again under their own classes
        assert by_voc["per_class_AP50"][name] > 0.5
        # VOC's 1-based pixel coordinates move the boxes by up to a pixel: close, not equal
        assert by_voc["per_class_AP50"][name] == pytest.approx(by_coco["per_class_AP50"][name], abs=0.1)
    assert by_voc["per_class_AP50"]["triangle"] == by_coco["per_class_AP50"]["triangle"] == 0.0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["predict", "/nonexistent/x.jpg"], "no such file"),
        (["predict", "{img}", "--batch-size", "-1"], "must be a positive integer"),
        (["predict", "{img}", "--model", "efficientdet_d9"], "unknown model"),
        (["predict", "{img}", "--weights", "/nonexistent/w.pt"], "not found"),
        (["predict", "{img}", "--score-treshold", "0.3"], "did you mean --score-threshold"),
    ],
)
def test_console_script_errors_are_one_line(tmp_path, photo_files, args, needle):
    args = [a.replace("{img}", str(photo_files[0])) for a in args]
    proc = subprocess.run([sys.executable, "-m", "efficientdet", *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2


def test_predict_on_exif_rotated_file_reports_displayed_size(tmp_path, photo_files, tiny_weights, capsys):
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees
    Image.open(photo_files[0]).save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert main(["predict", str(tmp_path / "rotated.jpg"), "--weights", str(tiny_weights)]) == 0
    assert "rotated.jpg: 200x320" in capsys.readouterr().out


def test_closed_stdout_stops_quietly():
    """``efficientdet models | head -1``: the reader goes away; exit 141 (as Unix tools), no error message."""
    proc = subprocess.Popen([sys.executable, "-m", "efficientdet", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command writes anything: its first write hits a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""
