"""Video input: frame sampling (:mod:`.sampling`), decoding with PyAV (:mod:`.reader`), background
prefetch (:mod:`.prefetch`), live frames (:mod:`.live`) and synthetic test videos
(:mod:`.synthetic`)::

    from statekv.video import VideoReader, prefetch

    reader = VideoReader("clip.mp4", fps=1.0, max_frames=512)
    print(reader.frame_count, reader.frame_rate, reader.vfr, len(reader))
    with prefetch(reader, depth=8) as frames:        # decoding runs ahead in a thread
        for frame in frames:                          # Frame(index, timestamp, rgb)
            ...

Nothing here imports the compiled extension.
"""
from .frame import Frame, VideoError
from .live import frames_from_arrays
from .prefetch import Prefetcher, prefetch
from .reader import VideoReader
from .sampling import SAMPLING_RULES, sample_frame_indices, sample_frames_by_time
from .synthetic import read_test_frame_id, write_test_video

__all__ = ["VideoError", "Frame", "SAMPLING_RULES", "sample_frame_indices", "sample_frames_by_time", "VideoReader",
           "prefetch", "Prefetcher", "frames_from_arrays", "write_test_video", "read_test_frame_id"]
