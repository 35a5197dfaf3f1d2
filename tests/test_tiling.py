"""Sliced inference: the tile grid, boxes shifted to original pixels, objects cut at tile borders.

Geometry is checked exactly with a colour detector (connected pure-red regions of the real image
pixels, scipy.ndimage), so every expected box is known to the pixel; one test runs a real EfficientDet.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from efficientdet import Detector, create_model
from efficientdet.detections import Detections
from efficientdet.errors import ConfigError
from efficientdet.inference.tiling import TiledDetector, tile_grid, tile_starts
from efficientdet.track import box_iou

RED = (255, 0, 0)


class RedRegions:
    """A detector callable: each 4-connected region of pure red pixels is one 'blob' detection (score 0.9)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, images, batch_size: int = 8) -> list[Detections]:
        out = []
        for img in images:
            self.calls.append(img.size)
            a = np.asarray(img.convert("RGB"))
            regions, n = ndimage.label((a == RED).all(-1))
            boxes = [[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in ndimage.find_objects(regions)]
            out.append(Detections.from_arrays(np.array(boxes, np.float32).reshape(-1, 4), np.full(n, 0.9, np.float32),
                                              np.zeros(n, np.int64), ["blob"], [5], img.size,
                                              timings={"inference_ms": 1.0}))
        return out


def canvas(width: int, height: int, squares: list[tuple[int, int, int, int]], path) -> str:
    img = np.full((height, width, 3), 90, np.uint8)
    for x0, y0, x1, y1 in squares:
        img[y0:y1, x0:x1] = RED
    Image.fromarray(img).save(path)  # PNG: lossless, the red stays exactly red
    return str(path)


def test_tile_starts_by_hand():
    # 1000 px, tile 256, overlap 0.2: stride floor(204.8) = 204, ceil(744 / 204) + 1 = 5 tiles, spread evenly
    assert tile_starts(1000, 256, 0.2) == [0, 186, 372, 558, 744]
    assert tile_starts(256, 256, 0.2) == [0] and tile_starts(100, 256, 0.5) == [0]
    assert tile_starts(300, 256, 0.0) == [0, 44]


@pytest.mark.parametrize("size", [(1000, 700), (512, 512), (1025, 300), (200, 120), (2600, 2050)])
@pytest.mark.parametrize("overlap", [0.0, 0.2, 0.5])
def test_tile_grid_covers_the_image_with_the_requested_overlap(size, overlap):
    w, h, tile = *size, 256
    grid = tile_grid(w, h, tile, overlap)
    covered = np.zeros((h, w), int)
    for x0, y0, x1, y1 in grid:
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert x1 - x0 == min(tile, w) and y1 - y0 == min(tile, h)  # full tiles, none hanging over
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    for starts, length in ((tile_starts(w, tile, overlap), w), (tile_starts(h, tile, overlap), h)):
        gaps = np.diff(starts)
        if len(starts) > 1:
            assert (tile - gaps >= overlap * tile).all()  # neighbours overlap by at least the request
            assert starts[-1] + tile == length


def test_boxes_are_shifted_to_original_pixels_exactly(tmp_path):
    squares = [(10, 12, 30, 40), (300, 200, 321, 215), (560, 370, 590, 395), (400, 20, 420, 40)]
    path = canvas(600, 400, squares, tmp_path / "a.png")
    blobs = RedRegions()
    det = TiledDetector(blobs, tile=256, overlap=0.25, full_image=False)(path)[0]
    assert isinstance(det, Detections) and det.image_size == (600, 400) and det.source == path
    assert sorted(det.boxes.tolist()) == sorted(map(list, squares))
    assert det.names == ["blob"] * 4 and det.category_ids.tolist() == [5] * 4
    assert len(blobs.calls) == 3 * 2 and set(blobs.calls) == {(256, 256)}
    assert det.timings["inference_ms"] == pytest.approx(6.0)  # summed over the tiles


def test_a_border_cut_object_yields_one_box(tmp_path):
    obj = (246, 100, 276, 130)  # crosses x = 256, the first tile's right edge; whole in the second tile
    path = canvas(700, 300, [obj], tmp_path / "cut.png")
    tiled = TiledDetector(RedRegions(), tile=256, overlap=0.2, full_image=False)
    assert tile_starts(700, 256, 0.2)[1] < obj[0]
    det = tiled(path)[0]
    assert det.boxes.tolist() == [list(obj)]
    # the piece the first tile sees is too small a part of the object for NMS alone to remove it
    piece = np.array([[246, 100, 256, 130]])
    assert box_iou(piece, np.array([obj]))[0, 0] < 0.5


@pytest.mark.parametrize("full_image", [False, True])
def test_an_object_larger_than_the_overlap_is_joined_into_one_box(tmp_path, full_image):
    obj = (150, 60, 330, 110)  # 180 px wide: cut by both tiles that see it, whole in none
    path = canvas(520, 240, [obj], tmp_path / "big.png")
    blobs = RedRegions()
    det = TiledDetector(blobs, tile=256, overlap=0.2, full_image=full_image)(path)[0]
    assert det.boxes.tolist() == [list(obj)]
    assert ((520, 240) in blobs.calls) == full_image


def test_an_object_cut_across_four_tiles_is_joined(tmp_path):
    obj = (200, 200, 310, 300)  # around the corner of four 256 px tiles with a 20% overlap
    path = canvas(500, 500, [obj], tmp_path / "corner.png")
    det = TiledDetector(RedRegions(), tile=256, overlap=0.2, full_image=False)(path)[0]
    assert det.boxes.tolist() == [list(obj)]


def test_wbf_merge_by_hand():
    tiled = TiledDetector(RedRegions(), tile=64, merge="wbf", iou_threshold=0.5)
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float64)
    scores = np.array([0.9, 0.3, 0.5, 0.4])
    labels = np.array([0, 0, 1, 0])
    index, fused, fused_scores = tiled.merge_boxes(boxes, scores, labels, np.zeros(4, np.int64), [(0, 0, 64, 64)],
                                                   (64, 64))
    # class 0 boxes 0 and 1 (IoU 9/11) fuse: x = (0 * 0.9 + 1 * 0.3) / 1.2 = 0.25, score 0.9;
    # the class-1 box and the far box stay apart
    assert index.tolist() == [0, 2, 3]
    np.testing.assert_allclose(fused[0], [0.25, 0, 10.25, 10])
    np.testing.assert_allclose(fused_scores, [0.9, 0.5, 0.4])
    nms = TiledDetector(RedRegions(), tile=64, merge="nms")
    index, fused, _ = nms.merge_boxes(boxes, scores, labels, np.zeros(4, np.int64), [(0, 0, 64, 64)], (64, 64))
    assert index.tolist() == [0, 2, 3] and fused[0].tolist() == [0, 0, 10, 10]


def test_with_a_real_efficientdet(tmp_path, photo_files):
    torch.manual_seed(0)
    model = create_model("d0", num_classes=2, image_size=128, fpn_channels=16, fpn_layers=1, head_layers=1)
    with torch.no_grad():  # scores around 0.5 so that every window gives detections
        model.class_net.predict.pw.bias.fill_(0.0)
    detector = Detector(model, score_threshold=0.2, max_det=20)
    tiled = TiledDetector(detector, tile=128, overlap=0.2, max_det=50)
    assert tiled.labels is detector.labels and tiled.config is detector.config  # the wrapped detector's own
    dets = tiled([str(p) for p in photo_files], batch_size=4)
    assert len(dets) == 3
    for det, path in zip(dets, photo_files):
        w, h = Image.open(path).size
        assert det.image_size == (w, h) and len(det) <= 50
        assert (det.boxes[:, :2] >= -1e-3).all() and (det.boxes[:, 2] <= w + 1e-3).all()
        assert (det.boxes[:, 3] <= h + 1e-3).all() and (np.diff(det.scores) <= 0).all()
        assert {"preprocess_ms", "inference_ms", "postprocess_ms"} <= set(det.timings)
    assert len(dets[0]) > 0  # wide.jpg (320x200): 3 x 2 tiles + the whole image gave detections


@pytest.mark.parametrize("kwargs", [{"tile": 16}, {"overlap": 1.0}, {"merge": "mean"}, {"max_det": 0}])
def test_bad_settings_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        TiledDetector(RedRegions(), **{"tile": 256, **kwargs})


def test_overlap_near_one_is_refused_before_running(tmp_path):
    """0.99 overlap of 64 px tiles on 289x310 would be ~56 000 tiles (1 px steps): a clear error instead of hours."""
    path = canvas(289, 310, [], tmp_path / "a.png")
    regions = RedRegions()
    with pytest.raises(ConfigError, match=r"a\.png: 289x310 pixels in 64 px tiles overlapping 0\.99 make \d+ tiles"):
        TiledDetector(regions, tile=64, overlap=0.99)([path])
    assert regions.calls == []
    assert len(TiledDetector(regions, tile=64, overlap=0.5)([path])) == 1  # 8 x 9 tiles + the image: fine


def test_max_det_defaults_to_the_wrapped_detectors():
    model = create_model("d0", num_classes=2, image_size=128, fpn_channels=16, fpn_layers=1, head_layers=1)
    assert TiledDetector(Detector(model, max_det=7), tile=128).max_det == 7
    assert TiledDetector(Detector(model), tile=128).max_det == Detector(model).settings.max_det
    assert TiledDetector(RedRegions(), tile=128).max_det == 100  # a plain callable
