"""Eagle 2.5's step layout: one frame per step, ``Frame {i} sample at {t}s: <img>`` + 256 visual
rows + ``</img>`` (:mod:`.prompt`), positions on one axis (the session's own).

:func:`step_layout` is the benchmarks' fixed-size step: the text of the first frame (``Frame 1
sample at 0.00s: `` is 13 Qwen tokens, then ``<img>``; ``</img>`` after)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..base import (OneFramePerStep, StepLayout, session_step_positions, session_text_positions,
                    square_step_layout)
from .preprocess import IMAGE_MEAN, IMAGE_STD, preprocess_frames
from .prompt import VideoPromptBuilder

__all__ = ["ChatLayout", "STEP_TEXT_TOKENS", "step_layout", "step_positions", "text_positions", "preprocess"]

STEP_TEXT_TOKENS = (14, 1)


class ChatLayout(OneFramePerStep):
    """Eagle 2.5: one frame per step, numbered from 1 across the chat, with its time."""

    family = "eagle2_5"
    default_mean, default_std = IMAGE_MEAN, IMAGE_STD
    preprocess_frames = staticmethod(preprocess_frames)

    def __init__(self, tokenizer: Any, info: dict):
        side = int(info["vision.image_size"]) // int(info["vision.patch_size"]) // 2
        super().__init__(VideoPromptBuilder(tokenizer, side * side), info)

    def _step(self, number: int, seconds: float):
        ids, rows = self.builder.step(number, seconds)
        return ids, rows, None

    def _step_length(self, number: int, seconds: float) -> int:
        return self.builder.step_length(number, seconds)


def step_layout(info: dict, n_steps: int, source_size: tuple[int, int]) -> StepLayout:
    return square_step_layout("eagle2_5", info, STEP_TEXT_TOKENS)


step_positions = session_step_positions
text_positions = session_text_positions


def preprocess(frames: np.ndarray, layout: StepLayout, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    return preprocess_frames(frames, image_size=layout.frame_size[0], mean=mean, std=std)
