"""Synthetic test videos whose frames carry their own number (tests, demo, benchmarks). Nothing
here imports the compiled extension."""
from __future__ import annotations

import math
import numbers
import os
from fractions import Fraction
from typing import Iterable

import numpy as np

from .reader import _av

__all__ = ["write_test_video", "read_test_frame_id"]

_ID_BITS = 16
_ID_COLS = 8
_ID_ROWS = 2


def _id_cell(size: tuple[int, int], bit: int) -> tuple[int, int, int, int]:
    w, h = size
    row, col = divmod(bit, _ID_COLS)
    band = h // 2
    y0, y1 = row * band // _ID_ROWS, (row + 1) * band // _ID_ROWS
    x0, x1 = col * w // _ID_COLS, (col + 1) * w // _ID_COLS
    return y0, y1, x0, x1


def _test_frame(k: int, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    img = np.empty((h, w, 3), np.uint8)
    # lower half: a background colour that changes with k, and a moving square
    hue = (k * 0.0618) % 1.0
    col = np.array([127 + 100 * math.cos(2 * math.pi * (hue + c / 3)) for c in range(3)])
    img[:] = col.astype(np.uint8)
    side = max(4, h // 5)
    x = (k * 3) % max(1, w - side)
    y = h // 2 + (k * 2) % max(1, h // 2 - side)
    img[y:y + side, x:x + side] = (255 - col).astype(np.uint8)
    # upper half: the frame number in binary, black/white cells
    for bit in range(_ID_BITS):
        y0, y1, x0, x1 = _id_cell(size, bit)
        img[y0:y1, x0:x1] = 255 if (k >> bit) & 1 else 0
    return img


def read_test_frame_id(rgb: np.ndarray) -> int:
    """The frame number drawn by :func:`write_test_video` into a decoded frame.

    Reads the 16 black/white cells of the upper half (the centre of each cell); raises
    ``ValueError`` if a cell is neither clearly dark nor clearly bright."""
    rgb = np.asarray(rgb)
    h, w = rgb.shape[:2]
    k = 0
    for bit in range(_ID_BITS):
        y0, y1, x0, x1 = _id_cell((w, h), bit)
        dy, dx = (y1 - y0) // 4, (x1 - x0) // 4
        v = float(rgb[y0 + dy:y1 - dy, x0 + dx:x1 - dx].mean())
        if v > 192:
            k |= 1 << bit
        elif v >= 64:
            raise ValueError(f"frame id cell {bit} is ambiguous (mean {v:.1f})")
    return k


def write_test_video(path: str | os.PathLike, n_frames: int, fps: float, size: tuple[int, int] = (128, 96), *,
                     vfr_timestamps: Iterable[float] | None = None, codec: str = "mpeg4",
                     gop_size: int | None = None, options: dict[str, str] | None = None) -> str:
    """Write a synthetic video with PyAV; frame ``k`` shows ``k`` in binary (see
    :func:`read_test_frame_id`) above a colour and a square that move with ``k``.

    ``fps``: the nominal frame rate (a float or ``fractions.Fraction``, e.g. ``Fraction(30000,
    1001)``); frame ``k`` is at ``k / fps`` unless ``vfr_timestamps`` (seconds, increasing, one per
    frame, rounded to 1 ms) gives the times.  ``size``: (width, height), even, at least 32x16.
    The container follows the file extension (.mp4, .mkv, .webm, .avi, .mov, .ts, ...);
    ``codec`` is any PyAV encoder (mpeg4, libx264, libvpx-vp9, ...); ``gop_size`` sets the
    keyframe interval; ``options`` are passed to the encoder.  Returns the path.
    """
    av = _av()
    path = os.fspath(path)
    w, h = (int(size[0]), int(size[1]))
    if w < 32 or h < 16 or w % 2 or h % 2:
        raise ValueError(f"size must be even and at least 32x16, got {size!r}")
    if isinstance(n_frames, bool) or not isinstance(n_frames, numbers.Integral) or n_frames < 1:
        raise ValueError(f"n_frames must be a positive integer, got {n_frames!r}")
    if n_frames >= 1 << _ID_BITS:
        raise ValueError(f"at most {(1 << _ID_BITS) - 1} frames")
    rate = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    vts = None
    if vfr_timestamps is not None:
        vts = [float(t) for t in vfr_timestamps]
        if len(vts) != n_frames:
            raise ValueError(f"vfr_timestamps has {len(vts)} entries for {n_frames} frames")
        ms = [round(t * 1000) for t in vts]
        if any(b <= a for a, b in zip(ms, ms[1:])) or ms[0] < 0:
            raise ValueError("vfr_timestamps must be >= 0 and increase by at least 1 ms")
    container = av.open(path, mode="w")
    try:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        if gop_size is not None:
            stream.codec_context.gop_size = int(gop_size)
        if options:
            stream.options = dict(options)
        tb = Fraction(1, 1000) if vts is not None else Fraction(rate.denominator, rate.numerator)
        stream.codec_context.time_base = tb
        for k in range(n_frames):
            frame = av.VideoFrame.from_ndarray(_test_frame(k, (w, h)), format="rgb24")
            frame.pts = round(vts[k] * 1000) if vts is not None else k
            frame.time_base = tb
            for pkt in stream.encode(frame):
                container.mux(pkt)
        for pkt in stream.encode():
            container.mux(pkt)
    finally:
        container.close()
    return path

