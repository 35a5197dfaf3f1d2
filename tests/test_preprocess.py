"""The fused inference preprocessing equals letterbox + normalise bit for bit."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from efficientdet.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    letterbox,
    normalize,
    preprocess_batch,
    preprocess_images,
)


def test_preprocess_batch_equals_letterbox_then_normalize():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in
              [(480, 640), (700, 300), (128, 128), (1, 1), (37, 1000)]]
    batch, scales = preprocess_batch(images, 128, IMAGENET_MEAN, IMAGENET_STD)
    canvases = [letterbox(img, 128, IMAGENET_MEAN) for img in images]
    expected = normalize(torch.stack([torch.from_numpy(c) for c, _ in canvases]), IMAGENET_MEAN, IMAGENET_STD)
    assert batch.shape == (5, 3, 128, 128) and batch.dtype == torch.float32
    assert batch.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch, expected)
    assert scales == [s for _, s in canvases]
    # non-square network input (height, width)
    batch, _ = preprocess_batch(images[:2], (64, 96), IMAGENET_MEAN, IMAGENET_STD)
    expected = normalize(torch.stack([torch.from_numpy(letterbox(i, (64, 96), IMAGENET_MEAN)[0]) for i in images[:2]]),
                         IMAGENET_MEAN, IMAGENET_STD)
    assert torch.equal(batch, expected)


def test_preprocess_images_nchw_for_onnx_equals_the_channels_last_batch():
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(480, 640), (90, 40)]]
    nchw, scales = preprocess_images(images, 96, IMAGENET_MEAN, IMAGENET_STD, channels_last=False)
    nhwc, scales2 = preprocess_images(images, 96, IMAGENET_MEAN, IMAGENET_STD)
    assert nchw.shape == (2, 3, 96, 96) and nchw.flags.c_contiguous and nchw.dtype == np.float32
    assert np.array_equal(nchw, nhwc.transpose(0, 3, 1, 2)) and scales == scales2
    assert scales[0] == 96 / 640 and np.all(nchw[0, :, 72:, :] == nchw[0, :, -1:, -1:])  # fill below the image
