"""InternVL3's step layout: one frame per step, ``Frame{i}: <img>`` + the frame's visual rows +
``</img>\\n`` (:mod:`.prompt`), positions on one axis (the session's own).

:class:`ChatLayout` is what a :class:`statekv.VideoChat` runs; :func:`step_layout` is the same
step's geometry for the benchmarks, whose steps have a fixed size: the text of the first frames,
``Frame1: <img>`` (5 tokens: ``Frame``, ``1``, ``:``, `` ``, ``<img>``) and ``</img>\\n`` (2
tokens) -- from the tenth frame on the number has one more digit, one more token per step, a
0.4 % difference the benchmark leaves out.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Optional, Sequence

import numpy as np

from ..base import PlannedStep, StepLayout, floats
from .preprocess import IMAGE_MEAN, IMAGE_STD, preprocess_frames
from .prompt import VideoPromptBuilder

__all__ = ["ChatLayout", "STEP_TEXT_TOKENS", "rows_per_frame", "step_layout", "step_positions", "text_positions",
           "preprocess"]

# Text tokens of a benchmark step (before, after) its visual rows; see the module docstring.
STEP_TEXT_TOKENS = (5, 2)


@functools.lru_cache(maxsize=16)
def _scale_factor(mmproj: str, mtime_ns: int) -> int:
    from ...gguf_io import read_gguf_kv

    return int(read_gguf_kv(mmproj).get("clip.vision.projector.scale_factor", 1))


def rows_per_frame(info: dict) -> int:
    """Visual rows of one frame: the ``image_size / patch_size`` patch grid, pixel-shuffled by the
    mmproj's ``clip.vision.projector.scale_factor`` (256 for a 448 x 448 tile, 14-pixel patches,
    scale 2)."""
    mmproj = info["mmproj"]
    scale = _scale_factor(mmproj, os.stat(mmproj).st_mtime_ns)
    side = int(info["vision.image_size"]) // int(info["vision.patch_size"]) // max(scale, 1)
    return side * side


class ChatLayout:
    """InternVL3: one frame per step (transformers' InternVL processor, frames numbered from 1
    across the whole chat)."""

    family = "internvl"
    frames_per_step = 1

    def __init__(self, tokenizer: Any, info: dict):
        self.image_size = int(info["vision.image_size"])
        self.mean = floats(info["vision.image_mean"]) or IMAGE_MEAN
        self.std = floats(info["vision.image_std"]) or IMAGE_STD
        self.builder = VideoPromptBuilder(tokenizer, rows_per_frame(info))
        self.n_frames = 0  # frames in the session's steps
        self.waiting: list = []  # never used: every frame is a complete step

    def prefix(self, system: Optional[str]):
        return self.builder.prefix(system), None

    def fix_size(self, n_frames: int, height: int, width: int) -> None:
        pass  # every frame is resized to one image_size tile

    def video_tokens(self, timestamps: Sequence[float]) -> int:
        return sum(self.builder.step_length(self.n_frames + k + 1) for k in range(len(timestamps)))

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        return preprocess_frames(rgb[None], self.image_size, self.mean, self.std)[0]

    def plan(self, items: list) -> tuple[list[PlannedStep], list]:
        out = []
        for k, (frame, px) in enumerate(items):
            number = self.n_frames + k + 1
            ids, rows = self.builder.step(number)
            out.append(PlannedStep(ids, rows, None, px[None], [frame], {"n_frames": number}))
        return out, []

    def commit(self, step: PlannedStep) -> None:
        self.n_frames = step.after["n_frames"]

    def question(self, text: str):
        return None, self.builder.question(text), None

    def state(self) -> dict:
        return {"n_frames": self.n_frames}

    def restore(self, state: dict) -> None:
        n = state["n_frames"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n_frames must be a non-negative integer, got {n!r}")
        self.n_frames = n


# ------------------------------------------------------------------------------ benchmarks
def step_layout(info: dict, n_steps: int, source_size: tuple[int, int]) -> StepLayout:
    """One ``image_size`` tile per frame (448 x 448 for InternViT-300M); the rows are counted from
    the encoder's output (``visual_rows`` -1)."""
    size = int(info["vision.image_size"])
    return StepLayout("internvl", 1, (size, size), visual_rows=-1, text_before=STEP_TEXT_TOKENS[0],
                      text_after=STEP_TEXT_TOKENS[1])


def step_positions(layout: StepLayout, start: int) -> tuple[Optional[np.ndarray], int]:
    return None, start + layout.tokens_per_step


def text_positions(start: int, n: int) -> Optional[np.ndarray]:
    return None


def preprocess(frames: np.ndarray, layout: StepLayout, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    return preprocess_frames(frames, image_size=layout.frame_size[0], mean=mean, std=std)
