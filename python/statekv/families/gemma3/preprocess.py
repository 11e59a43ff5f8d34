"""Gemma 3 frames, as transformers' Gemma 3 image processor preprocesses them (no pan-and-scan, as
its default): resized to ``image_size`` x ``image_size`` (896 for every Gemma 3) with PIL's bilinear
filter, rescaled by 1/255 in float32 and normalized with the mmproj's mean/std (0.5 for Gemma 3)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..base import square_frames

__all__ = ["IMAGE_SIZE", "IMAGE_MEAN", "IMAGE_STD", "preprocess_frames"]

IMAGE_SIZE = 896
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)


def preprocess_frames(frames, image_size: int = IMAGE_SIZE, mean: Sequence[float] = IMAGE_MEAN,
                      std: Sequence[float] = IMAGE_STD) -> np.ndarray:
    """RGB frames uint8 ``(n, H, W, 3)`` -> pixels float32 ``(n, 3, image_size, image_size)``:
    PIL bilinear resize (any input size and aspect), ``x * float32(1/255)``, ``(x - mean) / std``."""
    return square_frames(frames, image_size, mean, std, "bilinear")
