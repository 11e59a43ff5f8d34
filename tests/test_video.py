"""Video input: frame sampling (the StateKV authors' rule), decoding with PyAV, errors, prefetch.

Every video is generated here with PyAV (``statekv.video.write_test_video``): frame ``k`` carries
``k`` in big black/white cells, so a test can tell which frame was decoded.  Expected frame
indices are computed in this file from the authors' formula (``get_index`` of their
``lmms_eval/models/chat/internvl3.py``, transcribed below) and, for variable frame rate, from the
grid rule with exact rational arithmetic; expected timestamps come from demuxing the file here.
"""
from __future__ import annotations

import bisect
import io
import threading
import time
from fractions import Fraction

import numpy as np
import pytest

av = pytest.importorskip("av")

from statekv.video import (  # noqa: E402
    Frame,
    VideoError,
    VideoReader,
    frames_from_arrays,
    prefetch,
    read_test_frame_id,
    sample_frame_indices,
    sample_frames_by_time,
    write_test_video,
)

# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------


def authors_get_index(bound, fps, max_frame, first_idx=0, num_segments=32, max_fps=None):
    """The authors' ``get_index`` (their defaults: bound None -> (-100000, 100000) s)."""
    if bound:
        start, end = bound[0], bound[1]
    else:
        start, end = -100000, 100000
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    if max_fps is not None:
        duration = (end_idx - start_idx + 1) / fps
        frames_at_max_fps = max(1, int(duration * max_fps))
        actual_num_segments = min(frames_at_max_fps, num_segments)
    else:
        actual_num_segments = num_segments
    seg_size = float(end_idx - start_idx) / actual_num_segments
    return np.array([int(start_idx + (seg_size / 2) + np.round(seg_size * idx))
                     for idx in range(actual_num_segments)])


def expected_indices(n_frames, fps, max_fps, max_frames, start, end):
    if start is None and end is None:
        bound = None
    else:
        bound = (-100000 if start is None else start, 100000 if end is None else end)
    return authors_get_index(bound, fps, n_frames - 1, num_segments=max_frames, max_fps=max_fps)


def stream_facts(path):
    """(sorted presentation timestamps as exact Fractions, keyframe presentation indices,
    average rate) of the first video stream, read by demuxing."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        tb = s.time_base
        pts, keys = [], []
        for p in c.demux(s):
            if p.pts is None or p.is_discard:
                continue
            pts.append(p.pts)
            if p.is_keyframe:
                keys.append(p.pts)
        rate = s.average_rate
    pts = sorted(set(pts))
    key_idx = sorted(bisect.bisect_left(pts, k) for k in set(keys))
    return [Fraction(p) * tb for p in pts], key_idx, rate, tb


def expected_vfr_indices(times, tick, max_fps, max_frames, start, end):
    """The grid rule with exact arithmetic: N slots from the first to the last timestamp, the
    authors' formula on the slots, each chosen slot -> first frame with time >= slot time - half
    a tick (timestamps are rounded to the time base)."""
    n = len(times)
    span = times[-1] - times[0]
    rate = Fraction(n - 1) / span
    slots = expected_indices(n, float(rate), max_fps, max_frames, start, end)
    out = []
    for s in slots:
        target = times[0] + int(s) / rate
        j = next((i for i, t in enumerate(times) if t >= target - tick / 2), n - 1)
        out.append(j)
    return np.array(out)


def check_frames(frames, path, expected_idx):
    """Indices, content and timestamps of decoded frames."""
    times, _, _, _ = stream_facts(path)
    assert [f.index for f in frames] == [int(i) for i in expected_idx]
    for f in frames:
        assert isinstance(f, Frame)
        assert f.rgb.dtype == np.uint8 and f.rgb.ndim == 3 and f.rgb.shape[2] == 3
        assert read_test_frame_id(f.rgb) == f.index
        assert f.timestamp == float(times[f.index])


# --------------------------------------------------------------------------------------------
# Videos
# --------------------------------------------------------------------------------------------

VFR_TIMES = None


def _vfr_times():
    rng = np.random.default_rng(7)
    gaps = rng.choice([0.017, 0.033, 0.05, 0.1, 0.25, 0.4], size=149)
    gaps[70] = 3.0  # a frozen stretch: one frame shown for 3 s
    t = np.concatenate([[0.0], np.cumsum(gaps)])
    return [round(x, 3) for x in t.tolist()]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    v = {}
    v["3s_10fps"] = write_test_video(d / "a.mp4", 30, 10, codec="mpeg4")
    v["20s_30fps"] = write_test_video(d / "b.mkv", 600, 30, codec="libx264", options={"preset": "ultrafast"})
    v["7.5s_24fps"] = write_test_video(d / "c.webm", 180, 24, codec="libvpx",
                                       options={"deadline": "realtime", "cpu-used": "8"})
    v["ntsc"] = write_test_video(d / "d.mov", 90, Fraction(30000, 1001), codec="libx264")
    v["avi"] = write_test_video(d / "e.avi", 45, 7.5, codec="mpeg4")
    v["vfr_mp4"] = write_test_video(d / "vfr.mp4", 150, 10, vfr_timestamps=_vfr_times(), codec="mpeg4")
    v["vfr_mkv"] = write_test_video(d / "vfr.mkv", 150, 10, vfr_timestamps=_vfr_times(), codec="libx264")
    v["long"] = write_test_video(d / "long.mp4", 1060, 2, size=(64, 48), codec="mpeg4", gop_size=10)
    v["gop10"] = write_test_video(d / "gop10.mp4", 1800, 30, size=(64, 48), codec="mpeg4", gop_size=10)
    v["x264_gop15"] = write_test_video(d / "x264.mp4", 1800, 30, size=(64, 48), codec="libx264", gop_size=15,
                                       options={"preset": "ultrafast", "bf": "2"})
    v["ts"] = write_test_video(d / "f.ts", 900, 30, size=(64, 48), codec="libx264", gop_size=15)
    v["raw_h264"] = write_test_video(d / "g.h264", 40, 10, codec="libx264")
    return v


# --------------------------------------------------------------------------------------------
# sample_frame_indices
# --------------------------------------------------------------------------------------------


def test_sample_frame_indices_hand_computed():
    # 30 frames @ 10 fps, 1 fps: n = int(3.0 * 1) = 3, seg = 29/3
    assert sample_frame_indices(30, 10).tolist() == [4, 14, 23]
    # 600 frames @ 30 fps, 1 fps -> 20 frames, seg = 599/20 = 29.95
    assert sample_frame_indices(600, 30).tolist()[:4] == [14, 44, 74, 104]
    # cap by max_frames: 1060 frames @ 2 fps = 530 s -> 512 frames
    assert len(sample_frame_indices(1060, 2, max_frames=512)) == 512
    # max_fps=None: exactly max_frames, as the authors' loader without max_fps
    assert sample_frame_indices(100, 25, max_fps=None, max_frames=4).tolist() == [12, 37, 62, 86]
    # start/end: frames 25..75 of 100 @ 25 fps (1 s .. 3 s), 1 fps -> n = int(51/25) = 2, seg 25
    assert sample_frame_indices(100, 25, start=1.0, end=3.0).tolist() == [37, 62]
    # a clip shorter than a second still gives one frame
    assert sample_frame_indices(5, 30).tolist() == [2]


@pytest.mark.parametrize("n_frames,fps", [(30, 10.0), (600, 30.0), (180, 24.0), (90, 30000 / 1001),
                                          (45, 7.5), (1060, 2.0), (1, 25.0), (2, 1.0), (17, 0.5),
                                          (36000, 29.97)])
def test_sample_frame_indices_matches_authors(n_frames, fps):
    duration = n_frames / fps
    for max_fps in (None, 0.25, 0.5, 1.0, 2.0, 3.0, 30.0):
        for max_frames in (1, 8, 32, 512):
            for start, end in ((None, None), (0.0, None), (None, duration / 2), (duration / 3, None),
                               (duration / 4, 3 * duration / 4), (0.26, 0.27), (0.0, duration * 2)):
                if start is not None and round(start * fps) > n_frames - 1:
                    continue
                got = sample_frame_indices(n_frames, fps, max_fps=max_fps, max_frames=max_frames,
                                           start=start, end=end)
                want = expected_indices(n_frames, fps, max_fps, max_frames, start, end)
                assert got.dtype == np.int64
                assert got.tolist() == want.tolist(), (n_frames, fps, max_fps, max_frames, start, end)
                assert np.all(np.diff(got) >= 0) and got.min() >= 0 and got.max() <= n_frames - 1


def test_sample_frame_indices_errors():
    with pytest.raises(ValueError, match="past the end"):
        sample_frame_indices(30, 10, start=3.1)
    with pytest.raises(ValueError, match="after start"):
        sample_frame_indices(30, 10, start=2.0, end=1.0)
    for bad in (dict(max_fps=0), dict(max_fps=-1), dict(max_frames=0), dict(start=-1.0), dict(end=float("nan"))):
        with pytest.raises(ValueError):
            sample_frame_indices(30, 10, **bad)
    with pytest.raises(ValueError):
        sample_frame_indices(0, 10)
    with pytest.raises(ValueError):
        sample_frame_indices(30, 0)


def test_time_rule_equals_index_rule_for_constant_rate():
    """The variable-frame-rate rule reduces to the index formula when frames are evenly spaced,
    also with timestamps rounded to a coarse time base (29.97 fps in milliseconds)."""
    cases = [(30, Fraction(10), Fraction(1, 10240)), (600, Fraction(30), Fraction(1, 15360)),
             (300, Fraction(30000, 1001), Fraction(1, 1000)), (300, Fraction(30000, 1001), Fraction(1, 90000)),
             (1060, Fraction(2), Fraction(1, 2)), (180, Fraction(24), Fraction(1, 1000))]
    for n, rate, tb in cases:
        pts = [round(Fraction(i) / rate / tb) for i in range(n)]
        t = np.array([float(p * tb) for p in pts])
        dur = n / float(rate)
        for max_fps in (None, 0.5, 1.0, 4.0):
            for max_frames in (4, 64, 512):
                for start, end in ((None, None), (dur / 5, None), (dur / 7, dur * 0.6)):
                    want = sample_frame_indices(n, float(rate), max_fps=max_fps, max_frames=max_frames,
                                                start=start, end=end)
                    got = sample_frames_by_time(t, rate=float(rate), tolerance=0.5 * float(tb) + 1e-9,
                                                max_fps=max_fps,
                                                max_frames=max_frames, start=start, end=end)
                    assert got.tolist() == want.tolist(), (n, rate, tb, max_fps, max_frames, start, end)
        if all(pts[i + 1] - pts[i] == pts[1] - pts[0] for i in range(n - 1)):
            # exact spacing: the default grid rate is the frame rate itself
            got = sample_frames_by_time(t, max_frames=64)
            assert got.tolist() == sample_frame_indices(n, (n - 1) / (t[-1] - t[0]), max_frames=64).tolist()


def test_time_rule_picks_first_frame_at_or_after_target():
    t = [0.0, 0.1, 0.15, 0.5, 0.52, 1.3, 1.31, 1.32, 2.0, 2.9]
    # grid rate 9 / 2.9 slots/s; 1 fps over ~3.2 s -> 3 slots: 1, 4, 7 (seg 3)
    slots = sample_frame_indices(10, 9 / 2.9, max_frames=512)
    assert slots.tolist() == [1, 4, 7]
    # slot times 0.322, 1.289, 2.256 -> first frames at or after: 0.5 (3), 1.3 (5), 2.9 (9)
    assert sample_frames_by_time(t).tolist() == [3, 5, 9]
    with pytest.raises(ValueError, match="increasing"):
        sample_frames_by_time([0.0, 0.2, 0.1])


# --------------------------------------------------------------------------------------------
# VideoReader: constant frame rate
# --------------------------------------------------------------------------------------------

CFR_SETTINGS = [
    dict(fps=1.0, max_frames=512),
    dict(fps=2.0, max_frames=512),
    dict(fps=0.5, max_frames=512),
    dict(fps=1.0, max_frames=8),
    dict(fps=None, max_frames=16),
    dict(fps=4.0, max_frames=512, start=1.0),
    dict(fps=1.0, max_frames=512, end=2.5),
    dict(fps=3.0, max_frames=512, start=0.5, end=2.75),
    dict(fps=1.0, max_frames=512, start=0.2, end=1000.0),
]


@pytest.mark.parametrize("name", ["3s_10fps", "20s_30fps", "7.5s_24fps", "ntsc", "avi"])
def test_reader_constant_rate(videos, name):
    path = videos[name]
    times, _, rate, _ = stream_facts(path)
    n = len(times)
    for setting in CFR_SETTINGS:
        reader = VideoReader(path, **setting)
        assert not reader.vfr
        assert reader.frame_count == n
        assert reader.frame_rate == float(rate)
        want = expected_indices(n, float(rate), setting["fps"], setting["max_frames"],
                                setting.get("start"), setting.get("end"))
        assert reader.indices.tolist() == want.tolist(), setting
        frames = list(reader)
        assert len(frames) == len(reader) == len(want)
        check_frames(frames, path, want)
        assert reader.timestamps.tolist() == [f.timestamp for f in frames]


def test_reader_frame_counts_and_rates(videos):
    expect = {"3s_10fps": (30, 10.0), "20s_30fps": (600, 30.0), "7.5s_24fps": (180, 24.0),
              "ntsc": (90, 30000 / 1001), "avi": (45, 7.5), "long": (1060, 2.0)}
    for name, (n, fps) in expect.items():
        r = VideoReader(videos[name])
        assert (r.frame_count, r.frame_rate) == (n, fps), name
        assert r.duration == pytest.approx(n / fps, abs=1e-9), name
        assert r.frame_timestamps[0] == 0.0


def test_reader_longer_than_max_frames_seconds(videos):
    path = videos["long"]  # 530 s at 2 fps
    reader = VideoReader(path, fps=1.0, max_frames=512)
    assert len(reader) == 512
    want = expected_indices(1060, 2.0, 1.0, 512, None, None)
    frames = list(reader)
    check_frames(frames, path, want)


def test_reader_seeks_instead_of_decoding_everything(videos):
    path = videos["gop10"]  # 60 s at 30 fps, a keyframe every 10 frames, no B-frames
    _, keys, _, _ = stream_facts(path)
    reader = VideoReader(path, fps=1.0)
    frames = list(reader)
    want = expected_indices(1800, 30.0, 1.0, 512, None, None)
    check_frames(frames, path, want)
    # each target is reached by seeking to the keyframe before it and decoding from there
    per_target = [t - keys[bisect.bisect_right(keys, t) - 1] + 1 for t in want]
    assert reader.stats["seeks"] == len(want)
    assert reader.stats["decoded"] == sum(per_target)
    assert reader.stats["decoded"] < 1800 / 6
    assert reader.stats["converted"] == len(want)


def test_reader_seeking_with_b_frames(videos):
    path = videos["x264_gop15"]
    reader = VideoReader(path, fps=1.0)
    want = expected_indices(1800, 30.0, 1.0, 512, None, None)
    frames = list(reader)
    check_frames(frames, path, want)
    assert reader.stats["seeks"] > 0 and reader.stats["decoded"] < 1800 * 0.6


def test_reader_dense_sampling_decodes_sequentially(videos):
    path = videos["gop10"]
    reader = VideoReader(path, fps=None, max_frames=1800)
    frames = list(reader)
    want = expected_indices(1800, 30.0, None, 1800, None, None)
    check_frames(frames, path, want)
    assert reader.stats["seeks"] == 0
    assert reader.stats["decoded"] == max(want) + 1


def test_reader_inexact_seeking_container(videos):
    """MPEG-TS seeks land after the wanted keyframe: the reader retries earlier and still
    returns the right frames."""
    path = videos["ts"]
    times, _, rate, _ = stream_facts(path)
    reader = VideoReader(path, fps=2.0)
    want = expected_indices(len(times), float(rate), 2.0, 512, None, None)
    check_frames(list(reader), path, want)


def test_reader_stream_without_timestamps(videos):
    """A raw H.264 stream has no timestamps: frames in order, timestamps index / frame rate."""
    reader = VideoReader(videos["raw_h264"], fps=2.0)
    assert reader.frame_count == 40
    assert reader.frame_rate == 10.0  # from the stream's timing information
    rate = reader.frame_rate
    want = expected_indices(40, rate, 2.0, 512, None, None)
    frames = list(reader)
    assert [f.index for f in frames] == want.tolist()
    for f in frames:
        assert read_test_frame_id(f.rgb) == f.index
        assert f.timestamp == f.index / rate


def test_reader_file_objects(videos):
    path = videos["20s_30fps"]
    want = expected_indices(600, 30.0, 1.0, 512, 2.0, 9.0)
    with open(path, "rb") as f:
        frames = list(VideoReader(f, start=2.0, end=9.0))
    check_frames(frames, path, want)
    with open(path, "rb") as f:
        data = io.BytesIO(f.read())
    reader = VideoReader(data, start=2.0, end=9.0)
    check_frames(list(reader), path, want)
    check_frames(list(reader), path, want)  # iterating again decodes again


def test_reader_iterates_lazily_and_can_stop(videos):
    reader = VideoReader(videos["gop10"], fps=1.0)
    it = iter(reader)
    first = [next(it) for _ in range(3)]
    it.close()
    assert [f.index for f in first] == reader.indices[:3].tolist()


# --------------------------------------------------------------------------------------------
# VideoReader: variable frame rate
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vfr_mp4", "vfr_mkv"])
def test_reader_variable_rate(videos, name):
    path = videos[name]
    times, _, _, tb = stream_facts(path)
    assert [float(t) for t in times] == _vfr_times()  # the file keeps the irregular timestamps
    duration = float(times[-1])
    for setting in [dict(fps=1.0, max_frames=512), dict(fps=2.0, max_frames=512), dict(fps=1.0, max_frames=5),
                    dict(fps=None, max_frames=40), dict(fps=1.0, max_frames=512, start=3.0, end=duration - 2)]:
        reader = VideoReader(path, **setting)
        assert reader.vfr
        want = expected_vfr_indices(times, tb, setting["fps"], setting["max_frames"],
                                    setting.get("start"), setting.get("end"))
        assert reader.indices.tolist() == want.tolist(), setting
        frames = list(reader)
        check_frames(frames, path, want)
        if setting.get("start") is not None:
            assert min(f.timestamp for f in frames) >= setting["start"]


def test_reader_variable_rate_frozen_stretch(videos):
    """Every sampling slot that falls in a 3-s gap between two frames takes the frame that ends
    the gap (the first frame at or after the slot's time)."""
    path = videos["vfr_mp4"]
    times = _vfr_times()
    reader = VideoReader(path, fps=2.0)
    frames = list(reader)
    frozen = [f for f in frames if f.index == 71]  # the frame after the 3-s gap
    assert len(frozen) >= 5
    assert all(f.timestamp == times[71] for f in frozen)
    assert all(np.array_equal(f.rgb, frozen[0].rgb) for f in frozen)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def _audio_only(path):
    with av.open(str(path), "w") as c:
        a = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for i in range(8):
            frame.pts = i * 1024
            for p in a.encode(frame):
                c.mux(p)
        for p in a.encode():
            c.mux(p)
    return path


def _zeroed_payload(src, dst):
    """A copy of an mp4 whose media data are all zero bytes: container fine, nothing decodes."""
    data = bytearray(open(src, "rb").read())
    at = data.index(b"mdat")
    size = int.from_bytes(data[at - 4:at], "big")
    data[at + 4:at - 4 + size] = bytes(size - 8)
    open(dst, "wb").write(data)
    return dst


def test_errors(tmp_path, videos):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.mp4"
    audio = _audio_only(tmp_path / "audio.mp4")
    broken = _zeroed_payload(videos["3s_10fps"], tmp_path / "zeroed.mp4")
    cases = [(text, "not a video"), (empty, "empty"), (missing, "no such file"), (audio, "no video stream"),
             (broken, "no decodable video frame"), (tmp_path, "directory")]
    for path, what in cases:
        with pytest.raises(VideoError) as e:
            VideoReader(path)
        msg = str(e.value)
        assert str(path) in msg and what in msg, msg
        assert "\n" not in msg
        assert isinstance(e.value, ValueError)
    with pytest.raises(VideoError, match=r"a\.mp4.*past the end"):
        VideoReader(videos["3s_10fps"], start=3.5)
    with pytest.raises(ValueError):
        VideoReader(videos["3s_10fps"], fps=0)
    with pytest.raises(ValueError):
        VideoReader(videos["3s_10fps"], max_frames=0)
    with open(text, "rb") as f:
        with pytest.raises(VideoError, match="notes.mp4"):
            VideoReader(f)

    class Pipe(io.RawIOBase):  # a stream that cannot seek
        name = "camera-pipe"

        def readable(self):
            return True

        def seekable(self):
            return False

    with pytest.raises(VideoError, match="camera-pipe: the file object is not seekable"):
        VideoReader(Pipe())


def test_error_video_stream_without_frames(tmp_path):
    path = tmp_path / "silent.mkv"
    with av.open(str(path), "w") as c:
        v = c.add_stream("mpeg4", rate=10)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for i in range(4):
            frame.pts = i * 1024
            for p in a.encode(frame):
                c.mux(p)
        for p in a.encode():
            c.mux(p)
    with pytest.raises(VideoError, match=r"silent\.mkv: the video stream has no frames"):
        VideoReader(path)


# --------------------------------------------------------------------------------------------
# prefetch
# --------------------------------------------------------------------------------------------


def test_prefetch_order_and_fn():
    out = list(prefetch(range(1000), depth=3, fn=lambda x: x * x))
    assert out == [x * x for x in range(1000)]
    assert list(prefetch([], depth=1)) == []


def test_prefetch_runs_ahead():
    produced = []

    def source():
        for i in range(100):
            produced.append(i)
            yield i

    p = prefetch(source(), depth=4)
    deadline = time.monotonic() + 10
    while len(produced) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    # the worker filled the queue (4) and holds the next item without the consumer asking
    assert len(produced) >= 5
    assert list(p) == list(range(100))


def test_prefetch_exception_propagates():
    def source():
        yield 1
        yield 2
        raise KeyError("bad frame 3")

    p = prefetch(source(), depth=2)
    assert next(p) == 1 and next(p) == 2
    with pytest.raises(KeyError, match="bad frame 3"):
        next(p)
    with pytest.raises(StopIteration):
        next(p)
    assert not p.thread.is_alive()

    def boom(x):
        if x == 5:
            raise RuntimeError("preprocessing failed on 5")
        return x

    got = []
    with pytest.raises(RuntimeError, match="preprocessing failed on 5"):
        for x in prefetch(range(10), fn=boom):
            got.append(x)
    assert got == [0, 1, 2, 3, 4]


def test_prefetch_close_stops_worker():
    state = {"closed": False, "made": 0}

    def endless():
        try:
            i = 0
            while True:
                state["made"] += 1
                yield i
                i += 1
        finally:
            state["closed"] = True

    p = prefetch(endless(), depth=2)
    assert [next(p) for _ in range(5)] == [0, 1, 2, 3, 4]
    p.close()
    assert not p.thread.is_alive()
    assert state["closed"]  # the source generator was closed by the worker
    made = state["made"]
    time.sleep(0.1)
    assert state["made"] == made
    with pytest.raises(StopIteration):
        next(p)

    with prefetch(endless(), depth=2) as q:
        next(q)
        thread = q.thread
    assert not thread.is_alive()


def test_prefetch_dropped_iterator_stops_worker():
    started = threading.Event()

    def endless():
        while True:
            started.set()
            yield 0

    p = prefetch(endless(), depth=1)
    thread = p.thread
    started.wait(5)
    del p
    thread.join(5)
    assert not thread.is_alive()


def test_prefetch_video(videos):
    reader = VideoReader(videos["20s_30fps"], fps=2.0)
    direct = list(reader)
    with prefetch(reader, depth=4, fn=lambda f: (f.index, f.timestamp, f.rgb.mean())) as frames:
        ahead = list(frames)
    assert ahead == [(f.index, f.timestamp, f.rgb.mean()) for f in direct]


# --------------------------------------------------------------------------------------------
# frames_from_arrays
# --------------------------------------------------------------------------------------------


def test_frames_from_arrays():
    arrays = [np.full((4, 6, 3), i, np.uint8) for i in range(5)]
    frames = list(frames_from_arrays(iter(arrays)))
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert [f.timestamp for f in frames] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert all(np.array_equal(f.rgb, a) for f, a in zip(frames, arrays))
    frames = list(frames_from_arrays(arrays, fps=4))
    assert [f.timestamp for f in frames] == [0.0, 0.25, 0.5, 0.75, 1.0]
    frames = list(frames_from_arrays(arrays, timestamps=[0.0, 0.5, 0.75, 2.0, 2.5]))
    assert [f.timestamp for f in frames] == [0.0, 0.5, 0.75, 2.0, 2.5]
    frames = list(frames_from_arrays(arrays[:2], fps=2, start_index=10))
    assert [(f.index, f.timestamp) for f in frames] == [(10, 5.0), (11, 5.5)]


def test_frames_from_arrays_errors():
    good = np.zeros((4, 6, 3), np.uint8)
    with pytest.raises(ValueError, match="frame 1"):
        list(frames_from_arrays([good, np.zeros((4, 6, 3), np.float32)]))
    with pytest.raises(ValueError, match="frame 0"):
        list(frames_from_arrays([np.zeros((4, 6), np.uint8)]))
    with pytest.raises(ValueError, match="frame 2"):
        list(frames_from_arrays([good] * 3, timestamps=[0.0, 1.0]))
    with pytest.raises(ValueError, match="frame 1"):
        list(frames_from_arrays([good] * 2, timestamps=[1.0, 0.5]))
    with pytest.raises(ValueError):
        frames_from_arrays([good], timestamps=[0.0], fps=2.0)
    with pytest.raises(ValueError):
        frames_from_arrays(good)


def test_write_test_video_ids_survive_compression(tmp_path):
    for codec, ext in (("mpeg4", "mp4"), ("libx264", "mkv")):
        path = write_test_video(tmp_path / f"ids.{ext}", 70, 25, size=(96, 64), codec=codec)
        with av.open(path) as c:
            ids = [read_test_frame_id(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
        assert ids == list(range(70))
