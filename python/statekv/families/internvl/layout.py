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
from typing import Any, Sequence

import numpy as np

from ..base import (OneFramePerStep, StepLayout, session_step_positions, session_text_positions,
                    square_step_layout)
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


class ChatLayout(OneFramePerStep):
    """InternVL3: one frame per step (transformers' InternVL processor, frames numbered from 1
    across the whole chat)."""

    family = "internvl"
    default_mean, default_std = IMAGE_MEAN, IMAGE_STD
    preprocess_frames = staticmethod(preprocess_frames)

    def __init__(self, tokenizer: Any, info: dict):
        super().__init__(VideoPromptBuilder(tokenizer, rows_per_frame(info)), info)

    def _step(self, number: int, seconds: float):
        ids, rows = self.builder.step(number)
        return ids, rows, None

    def _step_length(self, number: int, seconds: float) -> int:
        return self.builder.step_length(number)


# ------------------------------------------------------------------------------ benchmarks
def step_layout(info: dict, n_steps: int, source_size: tuple[int, int]) -> StepLayout:
    """One ``image_size`` tile per frame (448 x 448 for InternViT-300M); the rows are counted from
    the encoder's output (``visual_rows`` -1)."""
    return square_step_layout("internvl", info, STEP_TEXT_TOKENS)


step_positions = session_step_positions
text_positions = session_text_positions


def preprocess(frames: np.ndarray, layout: StepLayout, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    return preprocess_frames(frames, image_size=layout.frame_size[0], mean=mean, std=std)
