"""Gemma 3 frames, as transformers' Gemma 3 image processor preprocesses them (no pan-and-scan, as
its default): resized to ``image_size`` x ``image_size`` (896 for every Gemma 3) with PIL's bilinear
filter, rescaled by 1/255 in float32 and normalized with the mmproj's mean/std (0.5 for Gemma 3)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["IMAGE_SIZE", "IMAGE_MEAN", "IMAGE_STD", "preprocess_frames"]

IMAGE_SIZE = 896
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)


def preprocess_frames(frames, image_size: int = IMAGE_SIZE, mean: Sequence[float] = IMAGE_MEAN,
                      std: Sequence[float] = IMAGE_STD) -> np.ndarray:
    """RGB frames uint8 ``(n, H, W, 3)`` -> pixels float32 ``(n, 3, image_size, image_size)``:
    PIL bilinear resize (any input size and aspect), ``x * float32(1/255)``, ``(x - mean) / std``."""
    from PIL import Image

    arr = np.asarray(frames)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB of shape (n, height, width, 3), got {arr.dtype} {arr.shape}")
    if 0 in arr.shape:
        raise ValueError(f"frames must be non-empty, got shape {arr.shape}")
    size = int(image_size)
    if size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    m = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    if m.size != 3 or s.size != 3 or np.any(s <= 0):
        raise ValueError("mean and std must have 3 values, std positive")
    out = np.empty((arr.shape[0], 3, size, size), dtype=np.float32)
    for i, frame in enumerate(arr):
        img = Image.fromarray(np.ascontiguousarray(frame), mode="RGB")
        resized = np.asarray(img.resize((size, size), resample=Image.Resampling.BILINEAR), dtype=np.uint8)
        out[i] = (resized.transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255) - m) / s
    return out
