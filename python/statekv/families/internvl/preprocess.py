"""InternVL3 frames, as transformers' InternVL processor preprocesses them (each frame one tile, as
the StateKV authors run InternVL3 on videos): resized to ``image_size`` x ``image_size`` with
PIL's bicubic filter (the ``GotOcr2ImageProcessor`` of the ``-hf`` checkpoints,
``crop_to_patches=False``), rescaled by 1/255 and normalized with the mmproj's mean/std
(ImageNet's for InternVL3)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..base import square_frames

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
    return square_frames(frames, image_size, mean, std, "bicubic")
