"""InternVL3 frames, as transformers' InternVL processor preprocesses them (each frame one tile, as
the StateKV authors run InternVL3 on videos): resized to ``image_size`` x ``image_size`` with
PIL's bicubic filter (the ``GotOcr2ImageProcessor`` of the ``-hf`` checkpoints,
``crop_to_patches=False``), rescaled by 1/255 and normalized with the mmproj's mean/std
(ImageNet's for InternVL3)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["IMAGE_MEAN", "IMAGE_STD", "preprocess_frames"]

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def preprocess_frames(frames, image_size: int = 448, mean: Sequence[float] = IMAGE_MEAN,
                      std: Sequence[float] = IMAGE_STD) -> np.ndarray:
    """RGB frames uint8 ``(n, H, W, 3)`` -> pixels float32 ``(n, 3, image_size, image_size)``.

    Per frame: PIL bicubic resize to ``image_size`` x ``image_size`` (any input size and aspect),
    ``x / 255``, ``(x - mean) / std`` -- transformers' ``GotOcr2ImageProcessor`` (PIL backend,
    one tile). Pass the model's ``info()["vision.image_mean"]`` / ``image_std`` to use the file's
    values."""
    from PIL import Image

    arr = np.asarray(frames)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must have shape (n, height, width, 3) (RGB), got {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB, got dtype {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"frames must be non-empty, got shape {arr.shape}")
    size = int(image_size)
    if size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    m = np.asarray(mean, dtype=np.float64).reshape(3, 1, 1)
    s = np.asarray(std, dtype=np.float64).reshape(3, 1, 1)
    if m.size != 3 or s.size != 3 or np.any(s <= 0):
        raise ValueError("mean and std must have 3 values, std positive")
    out = np.empty((arr.shape[0], 3, size, size), dtype=np.float32)
    for i, frame in enumerate(arr):
        img = Image.fromarray(np.ascontiguousarray(frame), mode="RGB")
        resized = np.asarray(img.resize((size, size), resample=Image.Resampling.BICUBIC), dtype=np.uint8)
        x = resized.transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255)
        out[i] = ((x - m.astype(np.float32)) / s.astype(np.float32))
    return out
