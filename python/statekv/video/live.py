"""Live frames: :class:`~statekv.video.Frame` objects from any iterable of RGB arrays. Nothing here
imports the compiled extension."""
from __future__ import annotations

import math
import numbers
from typing import Iterable, Iterator

import numpy as np

from .frame import Frame

__all__ = ["frames_from_arrays"]


def frames_from_arrays(frames: Iterable, timestamps: Iterable[float] | None = None, fps: float | None = None,
                       *, start_index: int = 0) -> Iterator[Frame]:
    """:class:`Frame` objects from any iterable of ``(H, W, 3)`` uint8 arrays (a live stream).

    ``timestamps``: one time in seconds per frame (non-decreasing); default ``index / fps`` with
    ``fps`` 1.0.  ``start_index`` numbers the first frame (to continue a stream across calls).
    Frames are checked and converted lazily, as they arrive; a bad frame raises ``ValueError``
    naming its index.
    """
    if timestamps is not None and fps is not None:
        raise ValueError("give timestamps or fps, not both")
    if fps is None:
        fps = 1.0
    fps = float(fps)
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be positive, got {fps!r}")
    if isinstance(start_index, bool) or not isinstance(start_index, numbers.Integral) or start_index < 0:
        raise ValueError(f"start_index must be an integer >= 0, got {start_index!r}")
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        raise ValueError("frames must be an iterable of (H, W, 3) arrays, got a single 3-D array "
                         "(wrap a single frame in a list)")
    return _frames_from_arrays(frames, timestamps, fps, int(start_index))


def _frames_from_arrays(frames, timestamps, fps, start_index):
    ts_iter = iter(timestamps) if timestamps is not None else None
    prev = -math.inf
    for i, a in enumerate(frames):
        index = start_index + i
        arr = np.asarray(a)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ValueError(f"frame {index}: expected an (H, W, 3) uint8 array, "
                             f"got shape {tuple(arr.shape)} dtype {arr.dtype}")
        if ts_iter is not None:
            try:
                ts = float(next(ts_iter))
            except StopIteration:
                raise ValueError(f"frame {index}: no timestamp left (fewer timestamps than frames)") from None
        else:
            ts = index / fps
        if not math.isfinite(ts) or ts < prev:
            raise ValueError(f"frame {index}: timestamp {ts!r} is not finite or goes back in time (previous {prev})")
        prev = ts
        yield Frame(index, ts, np.ascontiguousarray(arr))
