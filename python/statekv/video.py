"""Video input: frame sampling, decoding with PyAV, background prefetch, live frames.

Sampling follows the StateKV authors' evaluation loader (``get_index`` in their
``lmms_eval/models/chat/internvl3.py``): at most ``max_fps`` frames per second of the clip and at
most ``max_frames`` frames, spread uniformly (one frame from the middle of each of ``n`` equal
segments of the clip).  :func:`sample_frame_indices` is that formula on frame indices;
:class:`VideoReader` applies it to a real file and decodes the chosen frames::

    from statekv.video import VideoReader, prefetch

    reader = VideoReader("clip.mp4", fps=1.0, max_frames=512)
    print(reader.frame_count, reader.frame_rate, reader.vfr, len(reader))
    with prefetch(reader, depth=8) as frames:        # decoding runs ahead in a thread
        for frame in frames:                          # Frame(index, timestamp, rgb)
            ...

How frames are chosen
---------------------
The reader first reads the video stream's packets without decoding them (cheap: no pixel work)
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

How frames are decoded
----------------------
Targets are visited in order.  The decoder keeps going sequentially while the next target is in
reach (no keyframe more than a few frames past the current position before it); otherwise the
reader seeks to the keyframe at or before the target and decodes from there, discarding the
frames before the target without converting them to RGB.  So a one-hour video sampled at 1 fps
costs about one GOP of decoding per sampled frame, not the whole stream.  If a seek lands after
the wanted keyframe (some containers, e.g. MPEG-TS, seek inexactly) the reader retries from the
previous keyframe, and if that fails too it falls back to decoding sequentially from the start
for the rest of the file.  Streams without timestamps (raw H.264/HEVC elementary streams) are
decoded sequentially, with timestamps ``index / frame_rate``.

Nothing here imports the compiled extension.
"""
from __future__ import annotations

import math
import numbers
import os
import queue
import threading
from fractions import Fraction
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import numpy as np

__all__ = [
    "VideoError",
    "Frame",
    "sample_frame_indices",
    "sample_frames_by_time",
    "VideoReader",
    "prefetch",
    "Prefetcher",
    "frames_from_arrays",
    "write_test_video",
    "read_test_frame_id",
]


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


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


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


def sample_frame_indices(n_frames: int, fps: float, *, max_fps: float | None = 1.0, max_frames: int = 512,
                         start: float | None = None, end: float | None = None) -> np.ndarray:
    """Indices of the frames to use from a video of ``n_frames`` frames at ``fps`` frames/s.

    The StateKV authors' loader (``get_index``): the clip is frames ``start_idx ..
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


# --------------------------------------------------------------------------------------------
# Reading video files
# --------------------------------------------------------------------------------------------

# A seek is worth it when it skips at least this many frames of sequential decoding.
_SEEK_MIN_SKIP = 8
# Seconds before the wanted keyframe to seek to, tried in turn until decoding starts at or
# before that keyframe; then the reader gives up seeking and decodes sequentially.
_SEEK_RETRY_MARGINS = (0.0, 0.5, 2.0, 8.0)


def _av():
    try:
        import av  # noqa: F401
    except ImportError as e:  # pragma: no cover - environment problem
        raise ImportError("statekv needs PyAV to read videos: pip install av") from e
    import av.error  # noqa: F401

    return av


class _SeekMissed(Exception):
    """A seek landed after the keyframe it was meant to reach."""


class VideoReader:
    """The frames of a video file chosen by the authors' sampling rule, decoded on iteration.

    ``path_or_file``: a path or a binary file object (readable and seekable), any container and
    codec FFmpeg (through PyAV) reads.  ``fps``: at most this many frames per second of the clip
    (None: exactly ``max_frames`` frames, spread uniformly); ``max_frames``: at most this many;
    ``start``/``end``: bound the clip, in seconds from the first frame.

    Opening reads the stream's packet index and decodes the first chosen frame, so a file that
    is missing, not a video, has no video stream or no decodable frame raises
    :class:`VideoError` here.  Iterating yields :class:`Frame` objects in order (each iteration
    decodes again).  ``len(reader)`` is the number of frames an iteration yields.

    Attributes: ``name``, ``codec``, ``width``, ``height``, ``frame_count``, ``frame_rate``
    (frames/s used by the sampling), ``duration`` (s), ``vfr`` (variable frame rate),
    ``frame_timestamps`` (every frame's timestamp, s), ``indices`` (the chosen frame indices),
    ``timestamps`` (their timestamps), ``stats`` (counts of the last iteration: ``decoded``
    frames, ``converted`` to RGB, ``seeks``, ``restarts``, ``decode_errors``).
    """

    def __init__(self, path_or_file: Any, *, fps: float | None = 1.0, max_frames: int = 512,
                 start: float | None = None, end: float | None = None):
        self._max_fps, self._max_frames, self._start, self._end = _check_sampling_args(fps, max_frames, start, end)
        self._source = path_or_file
        self._file_pos0 = None
        if isinstance(path_or_file, (str, os.PathLike)):
            path = os.fspath(path_or_file)
            if isinstance(path, bytes):
                path = os.fsdecode(path)
            self.name = path
            if not os.path.exists(path):
                raise VideoError(f"{path}: no such file")
            if os.path.isdir(path):
                raise VideoError(f"{path}: is a directory, not a video file")
            if os.path.getsize(path) == 0:
                raise VideoError(f"{path}: empty file, not a video")
            self._source = path
        elif hasattr(path_or_file, "read"):
            self.name = str(getattr(path_or_file, "name", None) or f"<{type(path_or_file).__name__}>")
            # The file is read more than once (packet index, then decoding): it must seek.
            try:
                seekable = path_or_file.seekable() if hasattr(path_or_file, "seekable") else True
                self._file_pos0 = path_or_file.tell() if seekable else None
            except (AttributeError, OSError, ValueError):
                self._file_pos0 = None
            if self._file_pos0 is None:
                raise VideoError(f"{self.name}: the file object is not seekable (save the stream to a file, "
                                 "or use frames_from_arrays for live frames)")
        else:
            raise TypeError(f"VideoReader needs a path or a binary file object, got {type(path_or_file).__name__}")

        self.stats = {"decoded": 0, "converted": 0, "seeks": 0, "restarts": 0, "decode_errors": 0}
        container = self._open()
        try:
            self._stream_index = self._pick_stream(container)
            self._scan(container)
        finally:
            container.close()
        self._plan()
        # Decode the first chosen frame now, so that an undecodable file fails here.
        it = self._iterate(limit=1)
        try:
            next(it, None)
        finally:
            it.close()
        self.stats = {"decoded": 0, "converted": 0, "seeks": 0, "restarts": 0, "decode_errors": 0}

    # ---- opening -------------------------------------------------------------------------

    def _open(self):
        av = _av()
        if self._file_pos0 is not None:
            try:
                self._source.seek(self._file_pos0)
            except (AttributeError, OSError, ValueError) as e:
                raise VideoError(f"{self.name}: cannot rewind the file object ({e})") from None
        try:
            return av.open(self._source, mode="r")
        except av.error.FFmpegError as e:
            reason = getattr(e, "strerror", None) or str(e)
            raise VideoError(f"{self.name}: not a video file FFmpeg can read ({reason})") from None
        except OSError as e:
            raise VideoError(f"{self.name}: cannot open ({e})") from None

    def _pick_stream(self, container) -> int:
        av = _av()
        attached = getattr(av.stream.Disposition, "attached_pic", None)
        for s in container.streams.video:
            if attached is not None and (s.disposition & attached):
                continue  # cover art of an audio file
            return s.index
        kinds = [f"{s.type} {s.codec_context.name if s.codec_context else '?'}" for s in container.streams]
        have = ", ".join(kinds) if kinds else "none"
        raise VideoError(f"{self.name}: no video stream (streams: {have})")

    def _scan(self, container) -> None:
        """Read the packets (no decoding): timestamps, keyframes, frame count."""
        av = _av()
        stream = container.streams[self._stream_index]
        self.codec = stream.codec_context.name if stream.codec_context else "?"
        self.width = int(stream.codec_context.width or 0) if stream.codec_context else 0
        self.height = int(stream.codec_context.height or 0) if stream.codec_context else 0
        tb = stream.time_base
        pts_list: list[int] = []
        key_pts: list[int] = []
        key_order: list[int] = []
        n_packets = 0
        missing_pts = False
        try:
            for pkt in container.demux(stream):
                if pkt.size == 0 and pkt.pts is None and pkt.dts is None:
                    continue  # the flush packet PyAV yields at the end
                if pkt.is_discard:
                    continue  # dropped by the decoder (e.g. before an mp4 edit list start)
                if pkt.pts is None:
                    missing_pts = True
                else:
                    pts_list.append(int(pkt.pts))
                if pkt.is_keyframe:
                    key_order.append(n_packets)
                    if pkt.pts is not None:
                        key_pts.append(int(pkt.pts))
                n_packets += 1
        except av.error.FFmpegError as e:
            if n_packets == 0:
                reason = getattr(e, "strerror", None) or str(e)
                raise VideoError(f"{self.name}: cannot read the video stream ({reason})") from None
            # a truncated or damaged file: use the packets read so far
        if n_packets == 0:
            raise VideoError(f"{self.name}: the video stream has no frames")

        def first_rate(*rates):
            for r in rates:
                if r is not None and r > 0:
                    return Fraction(r)
            return None

        # The average frame rate is what the authors' (decord) loader uses.
        nominal = first_rate(stream.average_rate, stream.guessed_rate, stream.base_rate)

        if missing_pts or tb is None or not pts_list:
            # No timestamps: frames in decode order, at the rate the codec's timing information
            # gives (for raw streams FFmpeg's average rate is only its 25 fps default).
            self._has_pts = False
            self._tb = None
            rate = first_rate(stream.guessed_rate, stream.average_rate, stream.base_rate) or Fraction(25)
            self.frame_count = n_packets
            self._pts = np.arange(n_packets, dtype=np.int64)
            self._key_idx = np.array(sorted(set(key_order)) or [0], dtype=np.int64)
            self.frame_timestamps = np.arange(n_packets, dtype=np.float64) * rate.denominator / rate.numerator
            self._rate = rate
            self.vfr = False
            self.duration = n_packets / float(rate)
            return

        self._has_pts = True
        self._tb = Fraction(tb)
        pts = np.unique(np.asarray(pts_list, dtype=np.int64))
        n = int(pts.shape[0])
        self.frame_count = n
        self._pts = pts
        kp = np.unique(np.asarray(key_pts, dtype=np.int64))
        # presentation index of each keyframe
        self._key_idx = np.unique(np.searchsorted(pts, kp)) if kp.size else np.array([0], dtype=np.int64)
        num, den = self._tb.numerator, self._tb.denominator
        self.frame_timestamps = np.array([p * num / den for p in pts.tolist()], dtype=np.float64)

        if n >= 2:
            diffs = np.diff(pts)
            span = int(pts[-1] - pts[0])
            mean = span / (n - 1)
            dmin, dmax = int(diffs.min()), int(diffs.max())
            # Constant rate: equal intervals, or intervals that differ by one tick only because
            # timestamps were rounded to a time base much finer than the frame interval.
            self.vfr = not (dmin == dmax or (dmax - dmin <= 1 and mean >= 10))
            f_eff = Fraction(n - 1) / (Fraction(span) * self._tb)
            if not self.vfr and nominal is not None and abs(nominal / f_eff - 1) < Fraction(1, 1000):
                self._rate = nominal
            else:
                self._rate = f_eff
            if self.vfr:  # up to the last frame, plus a typical frame interval
                self.duration = float((Fraction(span) + Fraction(int(np.median(diffs)))) * self._tb)
            else:
                self.duration = float(n / self._rate)
        else:
            self.vfr = False
            self._rate = nominal if nominal is not None else Fraction(1)
            self.duration = float(1 / self._rate)

    def _plan(self) -> None:
        n = self.frame_count
        rate = float(self._rate)
        self.frame_rate = rate
        try:
            if self.vfr:
                # timestamps are rounded to the time base: a frame within half a tick of a target
                # time is at that time
                tol = 0.5 * float(self._tb) + 1e-9
                idx = sample_frames_by_time(self.frame_timestamps, max_fps=self._max_fps,
                                            max_frames=self._max_frames, start=self._start, end=self._end,
                                            rate=rate, tolerance=tol)
            else:
                idx = sample_frame_indices(n, rate, max_fps=self._max_fps, max_frames=self._max_frames,
                                           start=self._start, end=self._end)
        except ValueError as e:
            raise VideoError(f"{self.name}: {e}") from None
        self.indices = idx
        self.timestamps = self.frame_timestamps[idx]

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __repr__(self) -> str:
        return (f"VideoReader({self.name!r}: {self.codec} {self.width}x{self.height}, {self.frame_count} frames, "
                f"{self.frame_rate:.3f} fps{' (variable)' if self.vfr else ''}, {self.duration:.2f} s; "
                f"{len(self)} chosen)")

    # ---- decoding ------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Frame]:
        return self._iterate()

    def _keyframe_before(self, target: int) -> int:
        k = int(np.searchsorted(self._key_idx, target, side="right")) - 1
        return int(self._key_idx[k]) if k >= 0 else 0

    def _iterate(self, limit: int | None = None) -> Iterator[Frame]:
        self.stats = {"decoded": 0, "converted": 0, "seeks": 0, "restarts": 0, "decode_errors": 0}
        indices = self.indices if limit is None else self.indices[:limit]
        if indices.size == 0:
            return
        targets, counts = np.unique(indices, return_counts=True)
        target_key = self._pts[targets]  # the pts (decode order without timestamps) to reach
        n_targets = int(targets.shape[0])
        dec = _Decoder(self)
        try:
            ti = 0
            while ti < n_targets:
                t = int(targets[ti])
                if dec.run is None or (dec.seekable and self._keyframe_before(t) - dec.pos > _SEEK_MIN_SKIP):
                    dec.start_at(t)
                while True:
                    got = dec.next_frame()
                    if got is None:
                        self._raise_incomplete(int(targets[ti]), dec.pos)
                    pos, key_now, fr = got
                    if key_now < target_key[ti]:
                        continue
                    rgb = fr.to_ndarray(format="rgb24")
                    self.stats["converted"] += 1
                    ts = float(self.frame_timestamps[pos]) if not self._has_pts or key_now == self._pts[pos] \
                        else key_now * self._tb.numerator / self._tb.denominator
                    while ti < n_targets and target_key[ti] <= key_now:
                        for c in range(int(counts[ti])):
                            yield Frame(int(pos), ts, rgb if c == 0 else rgb.copy())
                        ti += 1
                    if ti >= n_targets:
                        break
                    if dec.seekable and self._keyframe_before(int(targets[ti])) - pos > _SEEK_MIN_SKIP:
                        break  # cheaper to seek to the next target
        finally:
            dec.close()

    def _raise_incomplete(self, target: int, pos: int):
        if self.stats["decoded"] == 0:
            raise VideoError(f"{self.name}: no decodable video frame (codec {self.codec}, "
                             f"{self.frame_count} frames in the stream, {self.stats['decode_errors']} decode errors)")
        t_s = float(self.frame_timestamps[target])
        last = float(self.frame_timestamps[max(pos, 0)])
        raise VideoError(f"{self.name}: could not decode the frame at {t_s:.3f} s (frame {target} of "
                         f"{self.frame_count}): the stream ends or is damaged after {last:.3f} s")

    def close(self) -> None:
        """Nothing stays open between iterations; kept for symmetry with file objects."""

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Decoder:
    """One decoding pass over a VideoReader's file: a container, a position, seeks."""

    def __init__(self, reader: VideoReader):
        self.r = reader
        self.container = reader._open()
        self.stream = self._video_stream()
        self.fresh = True          # nothing read from the container yet
        self.run = None            # generator of (pos, key, frame)
        self.pending = None        # a frame read ahead while checking a seek
        self.pos = -1              # presentation index of the last decoded frame
        self.seekable = reader._has_pts

    def _video_stream(self):
        stream = self.container.streams[self.r._stream_index]
        try:
            stream.thread_type = "AUTO"
        except Exception:  # pragma: no cover - codec without threading support
            pass
        return stream

    def close(self) -> None:
        if self.run is not None:
            self.run.close()
            self.run = None
        self.container.close()

    def start_at(self, target: int) -> None:
        """Position the decoder so that the next frames lead to frame ``target``."""
        r = self.r
        if self.run is not None:
            self.run.close()
            self.run = None
        self.pending = None
        key = r._keyframe_before(target)
        if self.seekable and key > _SEEK_MIN_SKIP:
            key_pts = int(r._pts[key])
            # Some demuxers (MPEG-TS, say) seek only approximately: retry a little earlier.
            for margin in _SEEK_RETRY_MARGINS:
                if self._try_seek(key_pts - round(margin / r._tb), key_pts):
                    return
            # This file does not seek accurately: decode sequentially for the rest of the pass.
            self.seekable = False
        if not self.fresh:
            self.run = None
            self.container.close()
            self.container = r._open()
            self.stream = self._video_stream()
            r.stats["restarts"] += 1
        self.fresh = False
        self.pos = -1
        self.run = self._frames(None, None)

    def _try_seek(self, seek_pts: int, key_pts: int) -> bool:
        av = _av()
        self.fresh = False
        run = self._frames(seek_pts, key_pts)
        try:
            first = next(run)
        except (_SeekMissed, StopIteration, av.error.FFmpegError):
            run.close()
            return False
        self.run = run
        self.pending = first
        return True

    def next_frame(self):
        if self.pending is not None:
            got, self.pending = self.pending, None
        else:
            try:
                got = next(self.run)
            except StopIteration:
                return None
        self.pos = got[0]
        return got

    def _frames(self, seek_pts: int | None, key_pts: int | None):
        """Decode from a seek to ``seek_pts`` (None: from the container's position), checking that
        decoding starts at a keyframe no later than ``key_pts``; yields ``(presentation index, pts
        (decode order without timestamps), frame)``."""
        av = _av()
        r = self.r
        stream = self.stream
        expect = key_pts
        if seek_pts is not None:
            self.container.seek(int(seek_pts), stream=stream, backward=True, any_frame=False)
            r.stats["seeks"] += 1
        waiting_key = seek_pts is not None
        pos = -1
        n = r.frame_count
        for pkt in self.container.demux(stream):
            if waiting_key:
                if pkt.size == 0 and pkt.pts is None:
                    raise _SeekMissed()  # end of stream before any keyframe
                if not pkt.is_keyframe or pkt.is_discard:
                    continue
                if pkt.pts is not None and pkt.pts > expect:
                    raise _SeekMissed()
                waiting_key = False
            try:
                frames = pkt.decode()
            except av.error.FFmpegError:
                r.stats["decode_errors"] += 1
                continue
            for fr in frames:
                r.stats["decoded"] += 1
                if r._has_pts:
                    if fr.pts is not None:
                        pos = min(int(np.searchsorted(r._pts, fr.pts, side="left")), n - 1)
                        key_now = int(fr.pts)
                    else:
                        pos = min((pos if pos >= 0 else self.pos) + 1, n - 1)
                        key_now = int(r._pts[pos])
                else:
                    pos += 1
                    key_now = pos
                yield pos, key_now, fr


# --------------------------------------------------------------------------------------------
# Prefetching
# --------------------------------------------------------------------------------------------

_ITEM, _ERROR, _END = 0, 1, 2


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _prefetch_worker(iterable, fn, q: queue.Queue, stop: threading.Event) -> None:
    it = None
    try:
        it = iter(iterable)
        while not stop.is_set():
            try:
                item = next(it)
            except StopIteration:
                break
            if fn is not None:
                item = fn(item)
            if not _put(q, (_ITEM, item), stop):
                break
    except BaseException as e:  # noqa: BLE001 - handed to the consumer
        _put(q, (_ERROR, e), stop)
        return
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001 - best effort
                pass
    _put(q, (_END, None), stop)


class Prefetcher:
    """Iterator over ``iterable`` (mapped through ``fn``) produced ahead by a background thread.

    At most ``depth`` items wait in the queue.  An exception raised by the source or by ``fn`` is
    raised by the consumer's next ``next()`` (with its original traceback).  :meth:`close` (or
    leaving a ``with`` block, or dropping the iterator) stops the thread after the item it is
    working on; the source is closed from the worker thread if it has a ``close`` method.
    """

    def __init__(self, iterable: Iterable, depth: int = 8, fn: Callable[[Any], Any] | None = None):
        if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 1:
            raise ValueError(f"depth must be a positive integer, got {depth!r}")
        self._q: queue.Queue = queue.Queue(maxsize=int(depth))
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=_prefetch_worker, args=(iterable, fn, self._q, self._stop),
                                        name="statekv-prefetch", daemon=True)
        self._thread.start()

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        kind, value = self._q.get()
        if kind == _ITEM:
            return value
        self._done = True
        self._thread.join()
        if kind == _ERROR:
            raise value
        raise StopIteration

    @property
    def thread(self) -> threading.Thread:
        """The worker thread (for tests and diagnostics)."""
        return self._thread

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop the worker (after its current item) and wait for it up to ``timeout`` seconds."""
        self._done = True
        self._stop.set()
        try:
            while True:
                self._q.get_nowait()
        except queue.Empty:
            pass
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self._done = True
            self._stop.set()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def prefetch(iterable: Iterable, depth: int = 8, fn: Callable[[Any], Any] | None = None) -> Prefetcher:
    """Run ``iterable`` (and ``fn`` on each item, e.g. preprocessing) ahead in a background thread.

    Returns a :class:`Prefetcher`: iterate it as you would ``map(fn, iterable)``; use it as a
    context manager or call ``close()`` to stop early."""
    return Prefetcher(iterable, depth=depth, fn=fn)


# --------------------------------------------------------------------------------------------
# Live frames
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Synthetic test videos
# --------------------------------------------------------------------------------------------

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
