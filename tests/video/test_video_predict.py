"""Video prediction on real files the tests encode, image sequences and an HTTP stream from 127.0.0.1."""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from efficientdet.errors import ConfigError, DataError
from efficientdet.video import (
    VideoWriter,
    detect_frames,
    frame_record,
    open_source,
    predict_video,
    select_frames,
)
from efficientdet.visualize import draw_detections

from .conftest import FPS, decode_all, make_video, scene


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def expected_records(detector, frames: list[np.ndarray]) -> list[list[dict]]:
    """What the detector says about each decoded frame on its own (the image-case records, no file name)."""
    return [[{k: v for k, v in r.items() if k != "file_name"} for r in detector([f])[0].to_coco()] for f in frames]


def test_video_file_json_lines_and_annotated_video(tmp_path, clip, detector, capsys):
    frames, times, _ = decode_all(clip)
    summary = predict_video(detector, clip, out=tmp_path / "out", json=tmp_path / "d.jsonl", progress=True)
    assert "frame/s" in capsys.readouterr().err  # the progress bar, with its rate
    assert (summary.frames, summary.decoded, summary.stopped, summary.skipped) == (24, 24, None, 0)
    lines = read_lines(tmp_path / "d.jsonl")
    assert [r["frame"] for r in lines] == list(range(24))
    assert [r["time_s"] for r in lines] == pytest.approx([i / FPS for i in range(24)], abs=1e-6)
    assert [r["time_s"] for r in lines] == pytest.approx(times, abs=1e-6)
    want = expected_records(detector, frames)
    assert [r["detections"] for r in lines] == want
    assert sum(len(w) for w in want) == summary.detections > 0
    assert set(lines[0]["detections"][0]) == {"bbox", "score", "category_id", "category_name"}

    out_frames, _, info = decode_all(tmp_path / "out" / "clip.mp4")
    assert summary.video == tmp_path / "out" / "clip.mp4"
    assert (info["width"], info["height"], info["rate"], info["codec"]) == (320, 192, FPS, "h264")
    assert len(out_frames) == 24
    # the output shows the boxes: closer to the drawn frame than to the plain one (lossy codec)
    k = next(i for i, w in enumerate(want) if w)
    drawn = np.asarray(draw_detections(Image.fromarray(frames[k]), detector([frames[k]])[0]), dtype=np.int16)
    err_drawn = np.abs(out_frames[k].astype(np.int16) - drawn).mean()
    err_plain = np.abs(out_frames[k].astype(np.int16) - frames[k].astype(np.int16)).mean()
    assert err_drawn < err_plain


@pytest.mark.parametrize(("suffix", "codec"), [(".mov", "libx264"), (".avi", "mpeg4"), (".mkv", "libx264"),
                                               (".webm", "libvpx-vp9")])
def test_containers(tmp_path, detector, suffix, codec):
    path = make_video(tmp_path / f"v{suffix}", frames=6, codec=codec)
    summary = predict_video(detector, path, out=tmp_path, json=tmp_path / "v.jsonl")
    assert (summary.frames, summary.stopped) == (6, None)
    assert [r["frame"] for r in read_lines(tmp_path / "v.jsonl")] == list(range(6))
    out_frames, _, info = decode_all(tmp_path / "v.mp4")
    assert (len(out_frames), info["width"], info["height"], info["rate"]) == (6, 320, 192, FPS)


def test_stride_and_max_frames(tmp_path, clip, detector):
    summary = predict_video(detector, clip, out=tmp_path / "s.mp4", json=tmp_path / "s.jsonl", vid_stride=3,
                            max_frames=5)
    lines = read_lines(tmp_path / "s.jsonl")
    assert [r["frame"] for r in lines] == [0, 3, 6, 9, 12] and summary.frames == 5
    assert [r["time_s"] for r in lines] == pytest.approx([0, 0.12, 0.24, 0.36, 0.48], abs=1e-6)
    out_frames, _, info = decode_all(tmp_path / "s.mp4")
    assert len(out_frames) == 5 and info["rate"] == Fraction(FPS, 3)  # same duration as the source
    summary = predict_video(detector, clip, json=tmp_path / "t.jsonl", vid_stride=5)
    assert [r["frame"] for r in read_lines(tmp_path / "t.jsonl")] == [0, 5, 10, 15, 20] and summary.frames == 5
    with pytest.raises(ConfigError, match="vid_stride"):
        predict_video(detector, clip, vid_stride=0)
    with pytest.raises(ConfigError, match="max_frames"):
        select_frames([], max_frames=0)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_pipelined_equals_sequential(tmp_path, clip, detector, batch_size):
    seen: dict[bool, list] = {True: [], False: []}

    def record(frame, det, key):  # what the writer gets: the frame, its detections, the picture it encodes
        seen[key].append((frame.index, det.boxes.copy(), det.scores.copy(),
                          np.asarray(draw_detections(frame.image, det))))

    for pipelined in (True, False):
        predict_video(detector, clip, out=tmp_path / f"{pipelined}.mp4", json=tmp_path / f"{pipelined}.jsonl",
                      batch_size=batch_size, pipelined=pipelined, on_frame=lambda f, d, p=pipelined: record(f, d, p))
    assert (tmp_path / "True.jsonl").read_text() == (tmp_path / "False.jsonl").read_text()
    assert [s[0] for s in seen[True]] == list(range(24))
    for a, b in zip(seen[True], seen[False], strict=True):
        assert a[0] == b[0] and all(np.array_equal(x, y) for x, y in zip(a[1:], b[1:]))
    video_a, _, _ = decode_all(tmp_path / "True.mp4")
    video_b, _, _ = decode_all(tmp_path / "False.mp4")
    assert len(video_a) == len(video_b) == 24
    # the same pictures went in; x264's threads may round a block differently from run to run
    assert max(np.abs(a.astype(int) - b).mean() for a, b in zip(video_a, video_b)) < 1.0


def test_detect_frames_generator(clip, detector):
    frames, _, _ = decode_all(clip)
    with open_source(clip) as src:
        got = list(detect_frames(detector, select_frames(src, vid_stride=2), batch_size=2))
    assert [f.index for f, _ in got] == list(range(0, 24, 2))
    want = detector(frames[::2], batch_size=2)  # the same pairs in one call (batching changes the last digits)
    for (frame, det), ref, ref_det in zip(got, frames[::2], want, strict=True):
        assert np.array_equal(np.asarray(frame.image), ref)
        assert det.to_coco() == ref_det.to_coco()


def test_image_sequence_pattern_and_folder(tmp_path, detector):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(7):
        Image.fromarray(scene(i, 160, 96)).save(folder / f"{i + 1:05d}.png")
    (folder / "00004.png").write_bytes(b"not a png")  # an unreadable frame: skipped and counted
    (folder / "notes.txt").write_text("ignored")
    summary = predict_video(detector, str(folder / "%05d.png"), out=tmp_path, json=tmp_path / "p.jsonl")
    lines = read_lines(tmp_path / "p.jsonl")
    assert [r["frame"] for r in lines] == [0, 1, 2, 4, 5, 6]
    assert [r["time_s"] for r in lines] == pytest.approx([i / 30 for i in (0, 1, 2, 4, 5, 6)], abs=1e-6)
    assert (summary.frames, summary.skipped, summary.fps) == (6, 1, 30)
    assert "00004.png" in summary.problems[0]
    want = expected_records(detector, [scene(i, 160, 96) for i in (0, 1, 2, 4, 5, 6)])
    assert [r["detections"] for r in lines] == want
    out_frames, _, info = decode_all(tmp_path / "frames.mp4")
    assert (len(out_frames), info["width"], info["height"]) == (6, 160, 96)

    summary = predict_video(detector, folder, json=tmp_path / "f.jsonl", sequence_fps=10)  # a folder of frames
    assert [r["time_s"] for r in read_lines(tmp_path / "f.jsonl")] == pytest.approx([0, 0.1, 0.2, 0.4, 0.5, 0.6])
    with pytest.raises(DataError, match="no file matches"):
        open_source(str(folder / "img_%03d.png"))


def test_http_stream(tmp_path, http_root, detector):
    base, root = http_root
    make_video(root / "clip.mp4", frames=12)
    make_video(root / "live.ts", frames=12)
    frames, _, _ = decode_all(root / "clip.mp4")
    for name in ("clip.mp4", "live.ts"):
        summary = predict_video(detector, f"{base}/{name}", out=tmp_path, json=tmp_path / f"{name}.jsonl")
        assert (summary.frames, summary.stopped) == (12, None)
        lines = read_lines(tmp_path / f"{name}.jsonl")
        assert [r["detections"] for r in lines] == expected_records(detector, frames)
        assert lines[-1]["time_s"] == pytest.approx(11 / FPS, abs=1e-6)
    assert len(decode_all(tmp_path / "live.mp4")[0]) == 12


def test_http_stream_dropped_midway(tmp_path, http_root, detector):
    base, root = http_root
    make_video(root / "live.ts", frames=48)
    summary = predict_video(detector, f"{base}/drop/live.ts", out=tmp_path, json=tmp_path / "d.jsonl")
    assert summary.stopped and "stream dropped" in summary.stopped
    assert 0 < summary.frames < 48
    lines = read_lines(tmp_path / "d.jsonl")  # every line is whole JSON
    assert [r["frame"] for r in lines] == list(range(summary.frames))
    out_frames, _, info = decode_all(tmp_path / "live.mp4")  # finalised: it decodes
    assert len(out_frames) == summary.frames and info["rate"] == FPS


def test_streams_that_cannot_be_opened(http_root, detector):
    base, _ = http_root
    with pytest.raises(DataError, match=r"missing\.mp4: cannot open the stream \(.*404"):
        open_source(f"{base}/missing.mp4")
    with pytest.raises(DataError, match="cannot open the stream"):
        predict_video(detector, "http://127.0.0.1:9/none.mp4", timeout=2)


def test_truncated_files(tmp_path, detector):
    whole = make_video(tmp_path / "whole.mp4", frames=48).read_bytes()  # index (moov) at the end
    (tmp_path / "cut.mp4").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError) as err:
        predict_video(detector, tmp_path / "cut.mp4", out=tmp_path / "o")
    assert "cut.mp4: cannot open the video" in str(err.value) and "\n" not in str(err.value)

    fast = make_video(tmp_path / "fast.mp4", frames=48, options={"movflags": "+faststart"}).read_bytes()
    (tmp_path / "fastcut.mp4").write_bytes(fast[: len(fast) // 2])  # index first: frames up to the cut decode
    summary = predict_video(detector, tmp_path / "fastcut.mp4", out=tmp_path / "o", json=tmp_path / "c.jsonl")
    assert summary.stopped and "of 48 frames" in summary.stopped
    assert 0 < summary.frames < 48
    assert len(read_lines(tmp_path / "c.jsonl")) == summary.frames
    assert len(decode_all(tmp_path / "o" / "fastcut.mp4")[0]) == summary.frames

    # Matroska has no frame count but a duration in its header: a cut file is reported too, a whole one not
    mkv = make_video(tmp_path / "whole.mkv", frames=48).read_bytes()
    assert predict_video(detector, tmp_path / "whole.mkv", json=tmp_path / "w.jsonl").stopped is None
    (tmp_path / "cut.mkv").write_bytes(mkv[: len(mkv) // 2])
    summary = predict_video(detector, tmp_path / "cut.mkv", json=tmp_path / "k.jsonl")
    assert 0 < summary.frames < 48 and len(read_lines(tmp_path / "k.jsonl")) == summary.frames
    found = re.fullmatch(r"the file ends at (\d+\.\d\d) s of its 1\.92 s \(truncated\?\)", summary.stopped or "")
    assert found and summary.frames / FPS - 0.01 <= float(found.group(1)) < 1.5, summary.stopped


def test_unknown_codec_not_a_video_and_no_webcam(tmp_path, detector):
    avi = make_video(tmp_path / "v.avi", frames=4, codec="mpeg4").read_bytes()
    assert avi.count(b"FMP4") == 2
    (tmp_path / "odd.avi").write_bytes(avi.replace(b"FMP4", b"QQQQ"))  # a FourCC FFmpeg has no decoder for
    with pytest.raises(DataError, match="odd.avi: the video codec is unknown"):
        predict_video(detector, tmp_path / "odd.avi")
    (tmp_path / "text.mp4").write_text("hello")
    with pytest.raises(DataError, match="text.mp4: cannot open the video"):
        open_source(tmp_path / "text.mp4")
    with pytest.raises(DataError, match="no such file"):
        open_source(tmp_path / "missing.mp4")
    with pytest.raises(DataError, match=r"webcam 63: /dev/video63 does not exist"):
        open_source(63)


def test_interrupt_finalises_outputs(tmp_path, clip, detector):
    calls = {"n": 0}

    def interrupted(images, batch_size=1):  # Ctrl-C arrives during the 10th network call
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return detector(images, batch_size=batch_size)

    summary = predict_video(interrupted, clip, out=tmp_path, json=tmp_path / "i.jsonl")
    assert summary.stopped == "interrupted" and summary.frames == 9
    assert [r["frame"] for r in read_lines(tmp_path / "i.jsonl")] == list(range(9))
    assert len(decode_all(tmp_path / "clip.mp4")[0]) == 9


def test_tracker_hook_adds_track_ids(tmp_path, clip, detector):
    class CountingTracker:  # a stand-in with the Tracker protocol: ids by rank, frames seen in order
        def __init__(self):
            self.frames = 0

        def update(self, det):
            self.frames += 1
            det.track_ids = np.arange(len(det), dtype=np.int64) + 100
            return det

    tracker = CountingTracker()
    predict_video(detector, clip, out=tmp_path, json=tmp_path / "t.jsonl", tracker=tracker, vid_stride=2)
    assert tracker.frames == 12
    lines = read_lines(tmp_path / "t.jsonl")
    tracked = [d for r in lines for d in r["detections"]]
    assert tracked and all("track_id" in d for d in tracked)
    assert [d["track_id"] for d in lines[0]["detections"]] == list(range(100, 100 + len(lines[0]["detections"])))


def test_writer_odd_size_and_frame_record(tmp_path):
    with VideoWriter(tmp_path / "odd.mp4", 161, 97, 12) as writer:
        for i in range(5):
            writer.write(scene(i, 161, 97))
        writer.write(Image.fromarray(scene(5, 320, 192)))  # another size: scaled to the video's
    frames, times, info = decode_all(tmp_path / "odd.mp4")
    assert (len(frames), info["width"], info["height"], info["rate"]) == (6, 161, 97, 12)
    assert times == pytest.approx([i / 12 for i in range(6)])
    assert np.abs(frames[2].astype(int) - scene(2, 161, 97)).mean() < 3  # the pictures survive encoding

    from efficientdet.detections import Detections

    det = Detections.from_arrays(np.array([[1, 2, 11, 22]]), np.array([0.5]), np.array([1]), ["a", "b"], [5, 9],
                                 (30, 30), "x.png")
    assert frame_record(3, 0.1234567, det) == {"frame": 3, "time_s": 0.123457, "detections": [
        {"bbox": [1.0, 2.0, 10.0, 20.0], "score": 0.5, "category_id": 9, "category_name": "b"}]}


def test_exported_model_in_the_loop(tmp_path, clip, one_thread):
    """efficientdet.deploy.OnnxModel (onnxruntime, NMS in the file) runs the loop, preprocessing in the reader."""
    from efficientdet.deploy import OnnxModel
    from efficientdet.export.onnx import export_onnx

    from .conftest import tiny_model

    model = OnnxModel(export_onnx(tiny_model(), tmp_path / "t.onnx", nms=True, score_threshold=0.2, max_det=8),
                      threads=1)
    frames, _, _ = decode_all(clip)
    summary = predict_video(model, clip, json=tmp_path / "o.jsonl", max_frames=6)
    lines = read_lines(tmp_path / "o.jsonl")
    assert summary.frames == 6 and [r["detections"] for r in lines] == expected_records(model, frames[:6])
    assert summary.detections > 0


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_display_rotation_is_applied(tmp_path, detector, rotation):
    """A phone video (landscape pixels + a display matrix) is detected and written upright, as players show it."""
    import av

    from efficientdet.video import open_source

    path = make_video(tmp_path / "phone.mp4", frames=4, width=96, height=64, rotation=rotation)
    with av.open(str(path)) as c:
        assert next(c.decode(video=0)).rotation % 360 == rotation % 360  # the file really carries it
    upright = np.rot90(scene(0, 96, 64), rotation // 90)
    with open_source(str(path)) as src:
        assert (src.width, src.height) == (upright.shape[1], upright.shape[0])
        frames = list(src)
    assert len(frames) == 4 and frames[0].image.size == (upright.shape[1], upright.shape[0])
    got = np.asarray(frames[0].image).astype(int)
    assert np.abs(got - upright).mean() < 6  # the same picture, turned (H.264 loses a little)
    summary = predict_video(detector, str(path), out=tmp_path / "out", json=tmp_path / "r.jsonl")
    written, _, info = decode_all(tmp_path / "out" / "phone.mp4")
    assert summary.frames == 4 and (info["width"], info["height"]) == (upright.shape[1], upright.shape[0])
    for record in (json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()):
        for d in record["detections"]:
            x, y, w, h = d["bbox"]
            assert x + w <= upright.shape[1] + 1e-3 and y + h <= upright.shape[0] + 1e-3
