"""Reading video files: the chosen frames (:mod:`.sampling`), decoded with PyAV.

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
"""
from __future__ import annotations

import os
from fractions import Fraction
from typing import Any, Iterator

import numpy as np

from .frame import Frame, VideoError
from .sampling import _check_sampling_args, sample_frame_indices, sample_frames_by_time

__all__ = ["VideoReader"]

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
