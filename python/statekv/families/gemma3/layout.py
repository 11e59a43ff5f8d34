"""Gemma 3's step layout: one frame per step, ``MM:SS`` + ``\\n\\n<start_of_image>`` + 256 image
rows (one bidirectional block) + ``<end_of_image>\\n\\n`` (:mod:`.prompt`), positions on one axis
(the session's own).

:class:`ChatLayout` is what a :class:`statekv.VideoChat` runs; :func:`step_layout` is the step's
geometry for the benchmarks (text before the rows in Gemma 3's vocabulary: ``MM:SS`` is 5 tokens,
digits being single pieces, then ``\\n\\n`` and ``<start_of_image>``; after: ``<end_of_image>``
and ``\\n\\n``)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..base import (OneFramePerStep, StepLayout, session_step_positions, session_text_positions,
                    square_step_layout)
from .preprocess import IMAGE_MEAN, IMAGE_STD, preprocess_frames
from .prompt import VideoPromptBuilder

__all__ = ["ChatLayout", "STEP_TEXT_TOKENS", "step_layout", "step_positions", "text_positions", "preprocess"]

STEP_TEXT_TOKENS = (7, 2)


def rows_per_frame(info: dict) -> int:
    """256 for Gemma 3 (the 64 x 64 patch grid pooled 4 x 4)."""
    side = int(info["vision.image_size"]) // int(info["vision.patch_size"]) // 4
    return side * side


class ChatLayout(OneFramePerStep):
    """Gemma 3: one frame per step, each with its timestamp and its image block."""

    family = "gemma3"
    default_mean, default_std = IMAGE_MEAN, IMAGE_STD
    preprocess_frames = staticmethod(preprocess_frames)

    def __init__(self, tokenizer: Any, info: dict):
        super().__init__(VideoPromptBuilder(tokenizer, rows_per_frame(info)), info)

    def _step(self, number: int, seconds: float):
        return self.builder.step(seconds)

    def _step_length(self, number: int, seconds: float) -> int:
        return self.builder.step_length(seconds)


def step_layout(info: dict, n_steps: int, source_size: tuple[int, int]) -> StepLayout:
    return square_step_layout("gemma3", info, STEP_TEXT_TOKENS)


step_positions = session_step_positions
text_positions = session_text_positions


def preprocess(frames: np.ndarray, layout: StepLayout, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    return preprocess_frames(frames, image_size=layout.frame_size[0], mean=mean, std=std)
