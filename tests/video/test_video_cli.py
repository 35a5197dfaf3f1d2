"""``efficientdet predict`` on videos, streams and image sequences, and its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from efficientdet.cli import main
from efficientdet.errors import ConfigError

from .conftest import FPS, TINY, decode_all, make_video


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


def test_predict_video_file(tmp_path, clip, tiny_weights, capsys):
    out, js = tmp_path / "annotated", tmp_path / "d.jsonl"
    code = main(["predict", str(clip), "--weights", str(tiny_weights), "--out", str(out), "--json", str(js),
                 "--vid-stride", "2", "--max-frames", "5", "--score-threshold", "0.2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "clip.mp4: 5 frame(s) 320x192 at 25 fps" in printed and "frames/s" in printed
    lines = [json.loads(line) for line in js.read_text().splitlines()]
    assert [r["frame"] for r in lines] == [0, 2, 4, 6, 8]
    assert {d["category_id"] for r in lines for d in r["detections"]} <= {3, 7}
    frames, _, info = decode_all(out / "clip.mp4")
    assert len(frames) == 5 and info["rate"] == FPS / 2


def test_predict_images_and_a_sequence_together(tmp_path, tiny_weights, photo_files, capsys):
    from PIL import Image

    from .conftest import scene

    (tmp_path / "seq").mkdir()
    for i in range(3):
        Image.fromarray(scene(i, 64, 48)).save(tmp_path / "seq" / f"f{i:03d}.jpg")
    out = tmp_path / "out"
    code = main(["predict", str(photo_files[0]), str(tmp_path / "seq" / "f%03d.jpg"), "--weights", str(tiny_weights),
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "wide.jpg: 320x200" in printed and "3 frame(s) 64x48 at 30 fps" in printed
    assert (out / "wide.jpg").is_file() and len(decode_all(out / "seq.mp4")[0]) == 3


def test_predict_stream_that_drops(tmp_path, http_root, tiny_weights, capsys):
    base, root = http_root
    make_video(root / "live.ts", frames=48)
    code = main(["predict", f"{base}/drop/live.ts", "--weights", str(tiny_weights), "--out", str(tmp_path),
                 "--json", str(tmp_path / "l.jsonl")])
    err = capsys.readouterr().err
    assert code == 1 and "stopped early: the stream dropped after" in err
    n = len((tmp_path / "l.jsonl").read_text().splitlines())
    assert 0 < n < 48 and len(decode_all(tmp_path / "live.mp4")[0]) == n


@pytest.mark.parametrize(("make", "needle"), [
    ("truncated", "cut.mp4: cannot open the video (Invalid data found when processing input)"),
    ("webcam", "webcam 0: /dev/video0 does not exist"),
    ("json-two", "--json"),
])
def test_predict_video_errors_are_one_line(tmp_path, clip, tiny_weights, make, needle):
    if make == "truncated":
        data = clip.read_bytes()
        (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
        args = [str(tmp_path / "cut.mp4")]
    elif make == "webcam":
        args = ["--source", "0"]
        if __import__("os").path.exists("/dev/video0"):
            args = ["--source", "63"]
            needle = "webcam 63: /dev/video63 does not exist"
    else:
        args = [str(clip), str(clip), "--json", str(tmp_path / "x.jsonl")]
    proc = subprocess.run([sys.executable, "-m", "efficientdet", "predict", *args, "--weights", str(tiny_weights)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr


def test_sources_are_split_into_images_and_videos(tmp_path, photo_files):
    import argparse

    from efficientdet.cli.predict import split_video_sources

    for name in ("b.mp4", "a.mp4", "c.mkv"):
        (tmp_path / name).write_bytes(b"")
    args = argparse.Namespace(sources=[str(photo_files[0]), str(tmp_path / "*.mp4"), "rtsp://cam/live",
                                       "f/%04d.png"], source=["0"], json=None)
    images, videos = split_video_sources(args)
    assert images == [str(photo_files[0])]
    assert videos == [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4"), "rtsp://cam/live", "f/%04d.png", "0"]
    args.json = "x.jsonl"
    with pytest.raises(ConfigError, match="run one command per video"):
        split_video_sources(args)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_signal_mid_video_finalises_outputs(tmp_path, tiny_weights, sig):
    """``timeout`` / ``kill`` (SIGTERM) stop ``predict`` as Ctrl-C does: exit 130, a playable video and
    JSON Lines with one record per frame written, no traceback."""
    import signal
    import time

    video = make_video(tmp_path / "long.mp4", frames=600)
    out, js = tmp_path / "out", tmp_path / "d.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "efficientdet", "predict", str(video), "--weights",
                             str(tiny_weights), "--out", str(out), "--json", str(js), "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a background job's children start with SIGINT ignored: give it back its default
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while (not js.exists() or len(js.read_text().splitlines()) < 3) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "predict ended before the signal"  # the signal lands mid-video
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "the outputs are finalised" in err and "Traceback" not in err
    records = [json.loads(line) for line in js.read_text().splitlines()]
    frames, _, _ = decode_all(out / "long.mp4")
    assert 3 <= len(records) < 600 and len(frames) == len(records)
    assert [r["frame"] for r in records] == list(range(len(records)))


def test_videos_with_one_name_in_two_folders_keep_apart(tmp_path, tiny_weights, capsys):
    a = make_video((tmp_path / "dA").mkdir() or tmp_path / "dA" / "clip.mp4", frames=3)
    b = make_video((tmp_path / "dB").mkdir() or tmp_path / "dB" / "clip.mp4", frames=5)
    out = tmp_path / "out"
    assert main(["predict", str(a), str(b), "--weights", str(tiny_weights), "--out", str(out)]) == 0
    assert len(decode_all(out / "dA" / "clip.mp4")[0]) == 3 and len(decode_all(out / "dB" / "clip.mp4")[0]) == 5
    assert not (out / "clip.mp4").exists()
    capsys.readouterr()
    assert main(["predict", str(a), str(b), "--weights", str(tiny_weights), "--out", str(tmp_path / "one.mp4")]) == 2
    assert "names one video file, but there are 2 video sources" in capsys.readouterr().err


def test_videos_inside_a_folder_are_reported_and_dev_video_is_a_webcam(tmp_path, photo_files, tiny_weights, capsys):
    from efficientdet.video.sources import is_video_source

    make_video(tmp_path / "clip.mp4", frames=2)  # next to the three photos
    assert main(["predict", str(tmp_path), "--weights", str(tiny_weights)]) == 0  # the images all ran
    captured = capsys.readouterr()
    assert captured.out.count("ms inference") == 3
    assert f"warning: {tmp_path}: 1 video file(s) in the folder not run (clip.mp4); pass videos by name" in captured.err
    assert is_video_source("/dev/video0") and is_video_source("/dev/video12") and not is_video_source("/dev/vid")
    proc = subprocess.run([sys.executable, "-m", "efficientdet", "predict", "/dev/video63", "--weights",
                           str(tiny_weights)], capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "webcam 63: /dev/video63 does not exist" in lines[0]


def test_segmentation_model_on_a_video(tmp_path, clip):
    """A segmentation-only checkpoint on a video: the masks blended into the output video and the pixels per
    class of every frame in the JSON Lines, equal to the Segmenter's on the same decoded frames."""
    import numpy as np
    import torch

    from efficientdet import create_model
    from efficientdet.inference.segmenter import Segmenter
    from efficientdet.masks import pixel_counts
    from efficientdet.weights import save_checkpoint

    torch.manual_seed(0)
    model = create_model("d0_seg", seg_classes=3, image_size=128, fpn_channels=16, fpn_layers=1, seg_channels=16,
                         seg_layers=1)
    model.seg_class_names = ["background", "red", "green"]
    weights = save_checkpoint(tmp_path / "seg.pt", model.eval())
    out, js = tmp_path / "out", tmp_path / "s.jsonl"
    assert main(["predict", str(clip), "--weights", str(weights), "--out", str(out), "--json", str(js),
                 "--max-frames", "4"]) == 0
    records = [json.loads(line) for line in js.read_text().splitlines()]
    assert [r["frame"] for r in records] == [0, 1, 2, 3] and all(r["detections"] == [] for r in records)
    source, _, _ = decode_all(clip)
    segmenter = Segmenter(create_model(None, weights=str(weights)))
    for record, frame in zip(records, source):
        assert sum(record["pixels"].values()) == 320 * 192
        assert record["pixels"] == pixel_counts(segmenter([frame])[0], ["background", "red", "green"])
    written, _, _ = decode_all(out / "clip.mp4")
    assert len(written) == 4
    assert any(k != "background" for k in records[0]["pixels"])  # an untrained model paints some classes
    assert np.abs(written[0].astype(int) - source[0].astype(int)).mean() > 3  # blended into the picture


def test_joint_model_on_a_video_gives_boxes_and_pixels(tmp_path, clip):
    import torch

    from efficientdet import create_model
    from efficientdet.weights import save_checkpoint

    torch.manual_seed(0)
    model = create_model("d0", num_classes=2, class_names=["red", "green"], seg_head="decoder", seg_classes=3,
                         seg_class_names=["background", "red", "green"], **TINY)
    with torch.no_grad():  # some detection scores above the threshold
        model.class_net.predict.pw.bias.fill_(0.0)
    weights = save_checkpoint(tmp_path / "joint.pt", model.eval())
    js = tmp_path / "j.jsonl"
    assert main(["predict", str(clip), "--weights", str(weights), "--json", str(js), "--max-frames", "2",
                 "--score-threshold", "0.3"]) == 0
    records = [json.loads(line) for line in js.read_text().splitlines()]
    assert len(records) == 2 and all(r["detections"] for r in records)
    assert all(sum(r["pixels"].values()) == 320 * 192 and set(r["pixels"]) <= {"background", "red", "green"}
               for r in records)
