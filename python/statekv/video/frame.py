"""The frame type and the error every video source shares. Nothing here imports the compiled
extension."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["VideoError", "Frame"]


class VideoError(ValueError):
    """A video statekv cannot read: missing, not a video, no video stream, nothing decodable.

    The message names the file."""


class Frame(NamedTuple):
    """One decoded video frame.

    ``index``: position of the frame in the video (presentation order, counted from 0 over the
    whole file); ``timestamp``: presentation time in seconds (``pts * time_base``);
    ``rgb``: ``(H, W, 3)`` uint8 array.
    """

    index: int
    timestamp: float
    rgb: np.ndarray
