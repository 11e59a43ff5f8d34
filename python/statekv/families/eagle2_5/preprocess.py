"""Eagle 2.5 frames: one 448 x 448 tile per frame (NVlabs' processor runs videos with
``max_dynamic_tiles = 1``, so no thumbnail), resized with the bicubic filter, rescaled by 1/255 and
normalized with the mmproj's mean/std (0.5: SigLIP's). NVlabs' image processor is a "fast"
(torchvision) one; statekv resizes with PIL as transformers' PIL processors do (the two bicubic
filters differ slightly at edges)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..base import square_frames

__all__ = ["IMAGE_SIZE", "IMAGE_MEAN", "IMAGE_STD", "preprocess_frames"]

IMAGE_SIZE = 448
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)


def preprocess_frames(frames, image_size: int = IMAGE_SIZE, mean: Sequence[float] = IMAGE_MEAN,
                      std: Sequence[float] = IMAGE_STD) -> np.ndarray:
    """RGB frames uint8 ``(n, H, W, 3)`` -> pixels float32 ``(n, 3, image_size, image_size)``."""
    return square_frames(frames, image_size, mean, std, "bicubic")
