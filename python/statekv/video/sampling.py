"""Which frames of a video to use.

How frames are chosen
---------------------
A :class:`~statekv.video.VideoReader` first reads the video stream's packets without decoding them (cheap: no pixel work)
to learn every frame's presentation timestamp (``pts * time_base``) and where the keyframes are.

* Constant frame rate (all frame intervals equal, up to the rounding of timestamps to the
  stream's time base): the authors' formula on frame indices, with the stream's average frame
  rate as ``fps`` (what their decord-based loader uses).
* Variable frame rate: the same formula is applied to a uniform grid of ``N`` slots (``N`` = the
  number of frames) spanning the first to the last frame timestamp -- the grid the video would
  have at its average frame rate -- which gives target *times*; for each target time the reader
  takes the first frame whose timestamp is >= that time (:func:`sample_frames_by_time`).  Why
  this rule: for a constant-rate video the grid coincides with the frames, so it reduces exactly
  to the index-based sampling; a chosen frame is never earlier than ``start``; and it is what an
  accurate seek to a time returns in FFmpeg.  A frame that lasts longer than the sampling
  interval (a frozen screen recording, say) can be chosen by two targets; it is then yielded
  twice, exactly as the index formula repeats frames when ``max_fps`` exceeds the frame rate.

``start``/``end`` (seconds) are measured from the first frame.  ``Frame.timestamp`` is the
stream's own presentation time ``pts * time_base``: for nearly all mp4/mkv/webm files the first
frame is at 0, for MPEG-TS it is the transport stream's start offset.  Display rotation metadata
is not applied (the authors' loader does not apply it either).

Two rules, chosen by ``rule`` in :func:`sample_frame_indices`:

* ``"segments"`` (the default, what ``VideoReader`` and the product use for every family): the
  StateKV authors' evaluation loader (``get_index`` in their ``lmms_eval/models/chat/internvl3.py``):
  at most ``max_fps`` frames per second of the clip and at most ``max_frames`` frames, one from
  the middle of each of ``n`` equal segments of the clip.
* ``"linspace"``: transformers' video processors (``sample_frames``): ``max_fps`` frames per
  second of video (or ``num_frames``), at least ``min_frames``, at most ``max_frames`` and the
  frame count, evenly spaced with ``linspace(0, n_frames - 1, n).round()`` (Qwen3-VL's processor;
  its family module gives its defaults).

Nothing here imports the compiled extension.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["SAMPLING_RULES", "sample_frame_indices", "sample_frames_by_time"]

SAMPLING_RULES = ("segments", "linspace")


def _check_sampling_args(max_fps, max_frames, start, end):
    if max_fps is not None:
        max_fps = float(max_fps)
        if not (max_fps > 0 and math.isfinite(max_fps)):
            raise ValueError(f"fps must be a positive number or None, got {max_fps!r}")
    if isinstance(max_frames, bool) or not isinstance(max_frames, numbers.Integral) or max_frames < 1:
        raise ValueError(f"max_frames must be a positive integer, got {max_frames!r}")
    if start is not None:
        start = float(start)
        if not (start >= 0 and math.isfinite(start)):
            raise ValueError(f"start must be a number of seconds >= 0, got {start!r}")
    if end is not None:
        end = float(end)
        if not (end >= 0 and math.isfinite(end)):
            raise ValueError(f"end must be a number of seconds >= 0, got {end!r}")
        if start is not None and end <= start:
            raise ValueError(f"end ({end} s) must be after start ({start} s)")
    return max_fps, int(max_frames), start, end


def sample_frame_indices(n_frames: int, fps: float | None, *, max_fps: float | None = 1.0, max_frames: int = 512,
                         start: float | None = None, end: float | None = None, rule: str = "segments",
                         num_frames: int | None = None, min_frames: int = 1) -> np.ndarray:
    """Indices of the frames to use from a video of ``n_frames`` frames at ``fps`` frames/s.

    ``rule="linspace"``: transformers' video processors' ``sample_frames`` -- ``max_fps`` frames
    per second of video (``num_frames`` instead, if given; the two exclude each other), at least
    ``min_frames``, at most ``max_frames`` and ``n_frames``, evenly spaced
    (``linspace(0, n_frames - 1, n).round()``); ``fps`` None means 24 (the processors' default
    when the rate is unknown); no ``start``/``end``.

    ``rule="segments"`` (default): the StateKV authors' loader (``get_index``): the clip is frames ``start_idx ..
    end_idx`` with ``start_idx = round(start * fps)`` and ``end_idx = min(round(end * fps),
    n_frames - 1)`` (the whole video when ``start``/``end`` are None); it takes
    ``n = min(max(1, int(duration * max_fps)), max_frames)`` frames with ``duration =
    (end_idx - start_idx + 1) / fps`` seconds (``n = max_frames`` if ``max_fps`` is None), index
    ``int(start_idx + seg / 2 + round(seg * i))`` for ``i < n`` and ``seg = (end_idx -
    start_idx) / n``.  Rounding is Python's/NumPy's (half to even), as in their code.

    Returns a non-decreasing int64 array of length ``n``.  When ``max_fps`` exceeds ``fps`` the
    formula can repeat an index; it is kept (the authors' loader feeds such frames twice).
    Raises ``ValueError`` for bad arguments or a ``start`` past the last frame.
    """
    if rule == "linspace":
        if start is not None or end is not None:
            raise ValueError("start/end are not part of the 'linspace' rule")
        return _linspace_indices(n_frames, fps, max_fps, num_frames, min_frames, max_frames)
    if rule != "segments":
        raise ValueError(f"unknown sampling rule {rule!r} (expected one of {list(SAMPLING_RULES)})")
    if num_frames is not None:
        raise ValueError("num_frames is part of the 'linspace' rule (the 'segments' rule takes max_fps/max_frames)")
    if isinstance(n_frames, bool) or not isinstance(n_frames, numbers.Integral) or n_frames < 1:
        raise ValueError(f"n_frames must be a positive integer, got {n_frames!r}")
    fps = float(fps)
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"the video frame rate must be positive, got {fps!r}")
    max_fps, max_frames, start, end = _check_sampling_args(max_fps, max_frames, start, end)
    max_frame = int(n_frames) - 1
    start_idx = 0 if start is None else max(0, round(start * fps))
    if start_idx > max_frame:
        raise ValueError(f"start={start} s is past the end of the video "
                         f"({n_frames} frames at {fps:g} fps = {n_frames / fps:g} s)")
    end_idx = max_frame if end is None else min(round(end * fps), max_frame)
    end_idx = max(end_idx, start_idx)
    if max_fps is not None:
        duration = (end_idx - start_idx + 1) / fps
        n = min(max(1, int(duration * max_fps)), max_frames)
    else:
        n = max_frames
    seg = float(end_idx - start_idx) / n
    return (start_idx + seg / 2 + np.round(seg * np.arange(n))).astype(np.int64)


def _linspace_indices(n_frames: int, video_fps: float | None, fps: float | None, num_frames: int | None,
                      min_frames: int, max_frames: int) -> np.ndarray:
    if fps is not None and num_frames is not None:
        raise ValueError("`num_frames` and `fps` are mutually exclusive arguments, please use only one!")
    if num_frames is None and fps is not None:
        video_fps = 24 if video_fps is None else video_fps
        num_frames = int(n_frames / video_fps * fps)
        num_frames = min(max(num_frames, min_frames), max_frames, n_frames)
    if num_frames is None:
        num_frames = min(max(n_frames, min_frames), max_frames)
    return np.linspace(0, n_frames - 1, num_frames).round().astype(int)


def sample_frames_by_time(timestamps, *, max_fps: float | None = 1.0, max_frames: int = 512,
                          start: float | None = None, end: float | None = None,
                          rate: float | None = None, tolerance: float | None = None) -> np.ndarray:
    """Frames to use from a video whose frames are at ``timestamps`` (seconds, increasing).

    The rule for variable frame rate: :func:`sample_frame_indices` is applied to a uniform grid
    of ``N = len(timestamps)`` slots at ``rate`` slots per second starting at the first
    timestamp (``rate`` defaults to ``(N - 1) / (t[-1] - t[0])``, so that the grid spans the
    first to the last frame), slot ``i`` being at time ``t[0] + i / rate``; each chosen slot is
    mapped to the first frame whose timestamp is >= the slot's time (minus ``tolerance``, which
    absorbs timestamps rounded to the stream's time base; default a millionth of the mean frame
    interval; :class:`VideoReader` uses half a tick of the stream's time base).  ``start``/``end``
    are seconds from the first frame.  For a constant frame rate
    this returns exactly ``sample_frame_indices(N, rate, ...)``.
    """
    t = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    n = t.shape[0]
    if n == 0:
        raise ValueError("no timestamps")
    if not np.all(np.isfinite(t)):
        raise ValueError("timestamps must be finite numbers")
    if n > 1 and not np.all(np.diff(t) > 0):
        raise ValueError("timestamps must be strictly increasing")
    if n == 1:
        return sample_frame_indices(1, rate if rate is not None else 1.0, max_fps=max_fps,
                                    max_frames=max_frames, start=start, end=end)
    span = float(t[-1] - t[0])
    if rate is None:
        rate = (n - 1) / span
    rate = float(rate)
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be positive, got {rate!r}")
    if tolerance is None:
        tolerance = 1e-6 * span / (n - 1)
    slots = sample_frame_indices(n, rate, max_fps=max_fps, max_frames=max_frames, start=start, end=end)
    targets = t[0] + slots / rate
    idx = np.searchsorted(t, targets - float(tolerance), side="left")
    return np.minimum(idx, n - 1).astype(np.int64)
