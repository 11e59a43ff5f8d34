"""Qwen3-VL frames, as transformers' Qwen3-VL video processor makes them.

Frames (:func:`preprocess_frames`): the video processor's steps -- one target size for the whole
video from :func:`smart_resize` (multiples of ``patch_size * merge_size`` = 32, ``t * h * w``
within ``[min_pixels, max_pixels]`` counted over all frames), a bicubic resize of every frame
(PIL's, as the HF image processors do; the torchvision resize of transformers' video processor
rounds slightly differently), ``x / 255``, ``(x - mean) / std``, and temporal pairing: an odd
frame count gets its last frame repeated. Frames of different sizes in one video raise
``ValueError`` unless ``allow_mixed_sizes=True``, which resizes every frame to the size computed
from the first frame (documented behaviour; transformers' processor needs one size per video).
Sampling (:func:`sample_frame_indices`, the ``"linspace"`` rule of
:func:`statekv.video.sample_frame_indices`) and timestamps (:func:`frame_timestamps`) follow the
video processor's ``sample_frames`` and the processor's ``_calculate_timestamps``.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from ...video.sampling import sample_frame_indices as _sample

__all__ = [
    "IMAGE_MEAN", "IMAGE_STD", "PATCH_SIZE", "MERGE_SIZE", "TEMPORAL_PATCH_SIZE", "MIN_PIXELS", "MAX_PIXELS",
    "FPS", "MIN_FRAMES", "MAX_FRAMES", "smart_resize", "target_size", "sample_frame_indices", "frame_timestamps",
    "preprocess_frames",
]

# The released checkpoints' video_preprocessor_config.json (Qwen3-VL 2B/4B/8B).
# The released checkpoints' video_preprocessor_config.json (Qwen3-VL 2B/4B/8B).
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
PATCH_SIZE = 16
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
MIN_PIXELS = 4096           # size.shortest_edge: least t * h * w of a whole video
MAX_PIXELS = 25165824       # size.longest_edge: most t * h * w of a whole video
FPS = 2.0
MIN_FRAMES = 4
MAX_FRAMES = 768


def smart_resize(num_frames: int, height: int, width: int, temporal_factor: int = TEMPORAL_PATCH_SIZE,
                 factor: int = PATCH_SIZE * MERGE_SIZE, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Target (height, width) of a video's frames: transformers' Qwen3-VL video ``smart_resize``
    (multiples of ``factor``, aspect kept, ``t_bar * h * w`` within the pixel bounds)."""
    if num_frames < temporal_factor:
        raise ValueError(f"t:{num_frames} must be larger than temporal_factor:{temporal_factor}")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height = int(height * scale)
        width = int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def target_size(num_frames: int, height: int, width: int, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
                cap_pixels_per_frame: bool = False, max_video_tokens: int = 768,
                factor: int = PATCH_SIZE * MERGE_SIZE) -> tuple[int, int]:
    """The frame size the video processor's ``resize`` picks for ``num_frames`` frames of
    ``height x width`` (with its optional per-frame cap, ``cap_pixels_per_frame``). For a stream of
    unknown length, pass the number of frames you plan to keep (or pick the size yourself)."""
    if cap_pixels_per_frame:
        per_frame = max(min(max_video_tokens * factor * factor, max_pixels // num_frames), int(min_pixels * 1.05))
        max_pixels = per_frame * num_frames
    n = max(num_frames, TEMPORAL_PATCH_SIZE)  # a single frame is paired with itself
    return smart_resize(n, height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def sample_frame_indices(total_frames: int, video_fps: float | None, fps: float | None = FPS,
                         num_frames: int | None = None, min_frames: int = MIN_FRAMES,
                         max_frames: int = MAX_FRAMES) -> np.ndarray:
    """Indices of the frames the video processor samples (its ``sample_frames``): the
    ``"linspace"`` rule of :func:`statekv.video.sample_frame_indices` with the processor's
    defaults: ``fps`` frames per second of video (``num_frames`` instead, if given), at least
    ``min_frames``, at most ``max_frames`` and ``total_frames``, evenly spaced."""
    return _sample(total_frames, video_fps, rule="linspace", max_fps=fps, num_frames=num_frames,
                   min_frames=min_frames, max_frames=max_frames)


def frame_timestamps(indices: Iterable[int], video_fps: float | None,
                     temporal_patch_size: int = TEMPORAL_PATCH_SIZE) -> list[float]:
    """Seconds of each temporal patch, as the processor's ``_calculate_timestamps``: the frame
    indices (padded with the last one to a multiple of the temporal patch) over the video's fps,
    averaged over the first and last frame of each patch. ``video_fps`` None means 24 (the
    processor's default when the fps is unknown)."""
    fps = 24 if video_fps is None else video_fps
    idx = [int(i) for i in indices]
    if not idx:
        raise ValueError("no frame indices")
    if len(idx) % temporal_patch_size:
        idx += [idx[-1]] * (temporal_patch_size - len(idx) % temporal_patch_size)
    ts = [i / fps for i in idx]
    return [(ts[i] + ts[i + temporal_patch_size - 1]) / 2 for i in range(0, len(ts), temporal_patch_size)]


def _as_rgb_uint8(frame, i: int) -> np.ndarray:
    from PIL import Image

    if isinstance(frame, Image.Image):
        frame = np.asarray(frame.convert("RGB"))
    arr = np.asarray(frame)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"frame {i}: expected an RGB image of shape (height, width, 3), got {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"frame {i}: expected uint8 pixels (0..255), got {arr.dtype}")
    return arr


def preprocess_frames(frames, *, num_frames: int | None = None, size: tuple[int, int] | None = None,
                      min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
                      image_mean: Sequence[float] = IMAGE_MEAN, image_std: Sequence[float] = IMAGE_STD,
                      cap_pixels_per_frame: bool = False, allow_mixed_sizes: bool = False,
                      pad_to_pairs: bool = True) -> np.ndarray:
    """RGB frames (uint8 ``(n, H, W, 3)`` or a list of such arrays / PIL images) -> pixels float32
    ``(n', 3, h, w)`` for ``Model.encode_frames``, ``n'`` = ``n`` rounded up to even (the last
    frame repeated, as the processor pads temporal patches) unless ``pad_to_pairs=False``.

    ``size``: the target ``(h, w)`` (multiples of 32); default :func:`target_size` of the first
    frame for ``num_frames`` frames (default ``n``: the whole video is given). Streaming callers
    preprocess a pair at a time with a fixed ``size`` (or the total ``num_frames``).
    ``image_mean`` / ``image_std``: pass ``model.info()["vision.image_mean"]`` etc. to use the
    mmproj's values. Frames of different sizes raise ``ValueError`` naming the first odd frame,
    unless ``allow_mixed_sizes`` (then each frame is resized to the common target size).
    """
    from PIL import Image

    if isinstance(frames, np.ndarray) and frames.ndim == 4:
        frames = list(frames)
    frames = [_as_rgb_uint8(f, i) for i, f in enumerate(frames)]
    if not frames:
        raise ValueError("no frames")
    h0, w0 = frames[0].shape[:2]
    for i, f in enumerate(frames):
        if f.shape[:2] != (h0, w0) and not allow_mixed_sizes:
            raise ValueError(f"frame {i} is {f.shape[0]}x{f.shape[1]} but frame 0 is {h0}x{w0}: the frames of one "
                             "video must have one size (pass allow_mixed_sizes=True to resize every frame to the "
                             "size computed from frame 0, or size=(h, w))")
    if size is None:
        size = target_size(num_frames or len(frames), h0, w0, min_pixels=min_pixels, max_pixels=max_pixels,
                           cap_pixels_per_frame=cap_pixels_per_frame)
    th, tw = int(size[0]), int(size[1])
    unit = PATCH_SIZE * MERGE_SIZE
    if th <= 0 or tw <= 0 or th % unit or tw % unit:
        raise ValueError(f"size {th}x{tw}: both sides must be positive multiples of {unit}")
    mean = np.asarray(image_mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(image_std, dtype=np.float32).reshape(3, 1, 1)
    n_out = len(frames) + (len(frames) % TEMPORAL_PATCH_SIZE if pad_to_pairs else 0)
    out = np.empty((n_out, 3, th, tw), dtype=np.float32)
    for i, f in enumerate(frames):
        if f.shape[:2] != (th, tw):
            f = np.asarray(Image.fromarray(f).resize((tw, th), resample=Image.BICUBIC))
        x = (f.astype(np.float64) * (1 / 255)).astype(np.float32).transpose(2, 0, 1)
        out[i] = (x - mean) / std
    if n_out > len(frames):
        out[len(frames):] = out[len(frames) - 1]
    return out
