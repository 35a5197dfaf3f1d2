"""train_batch.png and labels.png: real files with the right content, and no warnings."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from PIL import Image

from efficientdet.train.visuals import PALETTE, anchor_shapes, denormalize, save_label_statistics, save_train_batch


def test_denormalize_inverts_normalisation():
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1)
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    assert denormalize((x - 0.5) / 0.5, mean, std)[0, 0, 0].tolist() == [0, 128, 255]


def test_train_batch_draws_boxes_in_class_colours(tmp_path):
    images = torch.zeros(2, 3, 64, 64)  # mean grey after denormalisation
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 40.0, 40.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    path = save_train_batch(images, targets, (0.5,) * 3, (0.5,) * 3, ["a", "b"], tmp_path / "train_batch.png")
    grid = np.asarray(Image.open(path).convert("RGB"))
    assert grid.shape == (64, 128, 3)  # two 64 px cells in one row
    assert tuple(grid[25, 10]) == PALETTE[1]  # left edge of the box, class 1's colour
    assert tuple(grid[25, 64 + 10]) == (128, 128, 128)  # second image: no box


def test_train_batch_blends_segmentation_masks(tmp_path):
    """A segmentation target's mask is blended in its VOC colour (class 1: (128, 0, 0)), 0 and 255 left alone."""
    images = torch.zeros(1, 3, 64, 64)  # grey 128 after denormalisation
    mask = torch.zeros(64, 64, dtype=torch.uint8)
    mask[10:20, 10:20] = 1
    mask[30:40, 30:40] = 255
    path = save_train_batch(images, [{"mask": mask}], (0.5,) * 3, (0.5,) * 3, [], tmp_path / "train_batch.png")
    grid = np.asarray(Image.open(path).convert("RGB")).astype(int)
    expected = np.round(0.55 * 128 + 0.45 * np.array([128, 0, 0]))  # alpha 0.45
    assert np.abs(grid[15, 15] - expected).max() <= 1
    assert tuple(grid[35, 35]) == (128, 128, 128) and tuple(grid[5, 5]) == (128, 128, 128)


def test_label_statistics_plot_without_warnings(tmp_path):
    boxes = np.array([[0, 0, 20, 10], [5, 5, 50, 60]], np.float32)
    shapes = anchor_shapes(128, 3, 4, 4.0, 1, ((1.0, 1.0),))
    assert shapes == [(32.0, 32.0), (64.0, 64.0)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = save_label_statistics(boxes, np.array([0, 0]), ["only"], shapes, tmp_path / "labels.png", 128)
        empty = save_label_statistics(np.zeros((0, 4)), np.zeros(0), ["only"], [], tmp_path / "empty.png", 128)
    assert not caught, [str(w.message) for w in caught]
    assert Image.open(path).size[0] > 500 and empty.is_file()
