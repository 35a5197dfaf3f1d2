"""Video, stream, webcam and image-sequence prediction (PyAV).

::

    import efficientdet
    from efficientdet.video import predict_video

    detector = efficientdet.Detector("d0", weights="tf_efficientdet_d0")
    summary = predict_video(detector, "clip.mp4", out="annotated/", json="clip.jsonl", vid_stride=2)
    print(summary)   # frames, detections, frames/s, the files written

Sources (:func:`open_source`): video files (mp4, mov, avi, mkv, webm, ...), ``http(s)://`` / ``rtsp://``
URLs, a webcam index, numbered image sequences (``frames/%05d.png`` or a folder of numbered frames).
"""

from .predict import Tracker, VideoSummary, detect_frames, output_video_path, predict_video
from .sources import (
    VIDEO_SUFFIXES,
    Frame,
    FrameSource,
    expected_frames,
    is_video_source,
    open_source,
    select_frames,
)
from .writers import JsonLinesWriter, VideoWriter, frame_record, video_codec

__all__ = [
    "VIDEO_SUFFIXES",
    "Frame",
    "FrameSource",
    "JsonLinesWriter",
    "Tracker",
    "VideoSummary",
    "VideoWriter",
    "detect_frames",
    "expected_frames",
    "frame_record",
    "is_video_source",
    "open_source",
    "output_video_path",
    "predict_video",
    "select_frames",
    "video_codec",
]
