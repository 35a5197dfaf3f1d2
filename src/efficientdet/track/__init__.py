"""Multi-object tracking: :class:`Tracker` (ByteTrack-style) gives detections persistent ids across frames.

    from efficientdet.track import Tracker

    tracker = Tracker(track_thresh=0.5, track_buffer=30, frame_rate=fps)
    for frame in frames:
        tracked = tracker.update(detector(frame)[0])   # Detections with .track_ids (n,) int64

numpy + scipy only (no PyTorch), so it also runs behind :class:`efficientdet.deploy.OnnxModel`.
:mod:`.metrics` scores tracks against ground truth with ``motmetrics`` (MOTA, IDF1) and ``trackeval`` (HOTA).
"""

from .bytetrack import Tracker, box_iou
from .kalman import KalmanBoxFilter

__all__ = ["KalmanBoxFilter", "Tracker", "box_iou"]
