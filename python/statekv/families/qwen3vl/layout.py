"""Qwen3-VL's step layout: one temporal patch (2 frames) per step, ``<t seconds>`` +
``<|vision_start|>`` + the merged grid's rows + ``<|vision_end|>``, with 3-axis positions
(:mod:`.prompt`: transformers' processor and ``get_rope_index``).

:class:`ChatLayout` is what a :class:`statekv.VideoChat` runs; :func:`step_layout` is the same
step's geometry for the benchmarks, whose steps have a fixed size: the text of the first steps,
``<0.5 seconds>`` (6 tokens) and ``<|vision_start|>`` before the rows, ``<|vision_end|>`` after --
past ten seconds the time has one more digit, one more token per step, a difference the
benchmark leaves out. The benchmark's frames take the size the video processor picks for its
whole video under the default pixel bounds (a 640 x 360 source becomes 352 x 640: an 11 x 20
grid, 220 rows per temporal patch, for up to ~110 frames).
"""
from __future__ import annotations

import base64
import math
from typing import Any, Optional, Sequence

import numpy as np

from ...video.frame import Frame
from ..base import PlannedStep, StepLayout, floats
from .preprocess import IMAGE_MEAN, IMAGE_STD, preprocess_frames, target_size
from .prompt import VideoPromptBuilder, merged_grid
from .prompt import step_positions as _step_positions
from .prompt import text_positions as _text_positions

__all__ = ["ChatLayout", "STEP_TEXT_TOKENS", "step_layout", "step_positions", "text_positions", "preprocess"]

# Text tokens of a benchmark step (before, after) its visual rows; see the module docstring.
STEP_TEXT_TOKENS = (7, 1)


def _pack_pixels(px: np.ndarray) -> dict:
    return {"shape": list(px.shape), "f32": base64.b64encode(np.ascontiguousarray(px, np.float32).tobytes()).decode()}


def _unpack_pixels(d: dict) -> np.ndarray:
    shape = d["shape"]
    if not isinstance(shape, list) or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in shape):
        raise ValueError(f"pixel shape must be a list of non-negative integers, got {shape!r}")
    return np.frombuffer(base64.b64decode(d["f32"], validate=True), dtype=np.float32).reshape(shape).copy()


class ChatLayout:
    """Qwen3-VL in a chat. The frame size is fixed by the first video (or the first live frame,
    planned for ``max_frames`` frames); later frames are resized to it. An odd frame waits for its
    pair; a question asked meanwhile sees it paired with itself (as transformers pads a video)."""

    family = "qwen3vl"
    frames_per_step = 2

    def __init__(self, tokenizer: Any, info: dict):
        self.mean = floats(info["vision.image_mean"]) or IMAGE_MEAN
        self.std = floats(info["vision.image_std"]) or IMAGE_STD
        self.builder = VideoPromptBuilder(tokenizer, (0, 0))
        self.size: Optional[tuple[int, int]] = None
        self.waiting: list = []  # at most one (Frame, pixels): the first frame of the next pair

    def prefix(self, system: Optional[str]):
        return self.builder.prefix(system)

    def fix_size(self, n_frames: int, height: int, width: int) -> None:
        if self.size is None:
            self.size = target_size(max(n_frames, 1), height, width)
            self.builder.grid = merged_grid(*self.size)

    def video_tokens(self, timestamps: Sequence[float]) -> int:
        ts = list(timestamps)
        if len(ts) % 2:
            ts.append(ts[-1])
        return sum(self.builder.step_length((a + b) / 2) for a, b in zip(ts[::2], ts[1::2]))

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        return preprocess_frames([rgb], size=self.size, image_mean=self.mean, image_std=self.std, pad_to_pairs=False)[0]

    def plan(self, items: list) -> tuple[list[PlannedStep], list]:
        """One step per pair of (Frame, pixels) items; an odd last item is left waiting. Positions
        continue from the session's; nothing advances here."""
        n_pairs = len(items) // 2
        saved = self.builder.next_position
        out = []
        try:
            for k in range(n_pairs):
                (fa, pa), (fb, pb) = items[2 * k], items[2 * k + 1]
                step = self.builder.step((fa.timestamp + fb.timestamp) / 2)
                out.append(PlannedStep(step.ids, step.rows, step.positions, np.stack([pa, pb]), [fa, fb],
                                       {"next_position": self.builder.next_position}))
        finally:
            self.builder.next_position = saved
        return out, list(items[2 * n_pairs:])

    def commit(self, step: PlannedStep) -> None:
        self.set_progress(step.after)

    def progress(self) -> dict:
        return {"next_position": self.builder.next_position}

    def set_progress(self, after: dict) -> None:
        self.builder.next_position = after["next_position"]

    def question(self, text: str):
        """A waiting odd frame comes paired with itself before the question; the prompt does not
        advance (its pair may still arrive)."""
        saved = self.builder.next_position
        try:
            padded = None
            if self.waiting:
                [padded], _ = self.plan([self.waiting[0], self.waiting[0]])
                self.commit(padded)  # the question's positions continue after it
            return (padded,) + tuple(self.builder.question(text))
        finally:
            self.builder.next_position = saved

    def state(self) -> dict:
        waiting = [{"index": f.index, "timestamp": f.timestamp, "pixels": _pack_pixels(px)} for f, px in self.waiting]
        return {"size": list(self.size) if self.size else None, "next_position": self.builder.next_position,
                "waiting": waiting}

    def restore(self, state: dict) -> None:
        if state.get("size"):
            size = state["size"]
            if not isinstance(size, list) or len(size) != 2 or any(isinstance(x, bool) or not isinstance(x, int) for x in size):
                raise ValueError(f"size must be [height, width], got {size!r}")
            self.size = tuple(size)
            self.builder.grid = merged_grid(*self.size)
        pos = state["next_position"]
        if isinstance(pos, bool) or not isinstance(pos, int) or not 0 <= pos < 2**31:
            raise ValueError(f"next_position must be a non-negative 32-bit integer, got {pos!r}")
        self.builder.next_position = pos
        self.builder._started = True
        waiting = state.get("waiting", [])
        if not isinstance(waiting, list) or len(waiting) > 1:
            raise ValueError("waiting must be a list of at most one frame (an odd frame waits for its pair)")
        self.waiting = []
        for w in waiting:
            px = _unpack_pixels(w["pixels"])
            if self.size is None or px.shape != (3, *self.size) or not np.isfinite(px).all():
                raise ValueError(f"the waiting frame's pixels have shape {px.shape}, expected finite (3, {self.size})")
            timestamp = float(w["timestamp"])
            if not math.isfinite(timestamp):
                raise ValueError("the waiting frame's timestamp is not finite")
            self.waiting.append((Frame(int(w["index"]), timestamp, np.zeros((0, 0, 3), np.uint8)), px))


# ------------------------------------------------------------------------------ benchmarks
def step_layout(info: dict, n_steps: int, source_size: tuple[int, int]) -> StepLayout:
    """The video processor sizes frames for the whole video (``t * h * w`` within its pixel
    bounds): ``n_steps`` temporal patches of ``source_size`` (width, height) frames."""
    width, height = source_size
    frames_per_step = int(info["vision.frames_per_patch"])
    h, w = target_size(n_steps * frames_per_step, height, width)
    grid = merged_grid(h, w)
    return StepLayout("qwen3vl", frames_per_step, (h, w), visual_rows=grid[0] * grid[1],
                      text_before=STEP_TEXT_TOKENS[0], text_after=STEP_TEXT_TOKENS[1], grid=grid)


def step_positions(layout: StepLayout, start: int) -> tuple[Optional[np.ndarray], int]:
    """3-axis positions of a benchmark step starting at ``start`` (the prompt builder's formula)."""
    return _step_positions(start, layout.text_before, layout.grid, layout.text_after)


def text_positions(start: int, n: int) -> Optional[np.ndarray]:
    return _text_positions(start, n)


def preprocess(frames: np.ndarray, layout: StepLayout, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    return preprocess_frames(frames, size=layout.frame_size, image_mean=mean, image_std=std)
