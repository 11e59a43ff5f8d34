"""Gemma 3's step layout: one frame per step, ``MM:SS`` + ``\\n\\n<start_of_image>`` + 256 image
rows (one bidirectional block) + ``<end_of_image>\\n\\n`` (:mod:`.prompt`), positions on one axis
(the session's own).

:class:`ChatLayout` is what a :class:`statekv.VideoChat` runs; :func:`step_layout` is the step's
geometry for the benchmarks (text before the rows in Gemma 3's vocabulary: ``MM:SS`` is 5 tokens,
digits being single pieces, then ``\\n\\n`` and ``<start_of_image>``; after: ``<end_of_image>``
and ``\\n\\n``)."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from ..base import PlannedStep, StepLayout, floats
from .preprocess import IMAGE_MEAN, IMAGE_STD, preprocess_frames
from .prompt import VideoPromptBuilder

__all__ = ["ChatLayout", "STEP_TEXT_TOKENS", "step_layout", "step_positions", "text_positions", "preprocess"]

STEP_TEXT_TOKENS = (7, 2)


def rows_per_frame(info: dict) -> int:
    """256 for Gemma 3 (the 64 x 64 patch grid pooled 4 x 4)."""
    side = int(info["vision.image_size"]) // int(info["vision.patch_size"]) // 4
    return side * side


class ChatLayout:
    """Gemma 3: one frame per step, each with its timestamp."""

    family = "gemma3"
    frames_per_step = 1

    def __init__(self, tokenizer: Any, info: dict):
        self.image_size = int(info["vision.image_size"])
        self.mean = floats(info["vision.image_mean"]) or IMAGE_MEAN
        self.std = floats(info["vision.image_std"]) or IMAGE_STD
        self.builder = VideoPromptBuilder(tokenizer, rows_per_frame(info))
        self.n_frames = 0
        self.waiting: list = []  # never used: every frame is a complete step

    def prefix(self, system: Optional[str]):
        return self.builder.prefix(system), None

    def fix_size(self, n_frames: int, height: int, width: int) -> None:
        pass  # every frame is resized to one image_size square

    def video_tokens(self, timestamps: Sequence[float]) -> int:
        return sum(self.builder.step_length(t) for t in timestamps)

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        return preprocess_frames(rgb[None], self.image_size, self.mean, self.std)[0]

    def plan(self, items: list) -> tuple[list[PlannedStep], list]:
        out = []
        for k, (frame, px) in enumerate(items):
            ids, rows, blocks = self.builder.step(frame.timestamp)
            out.append(PlannedStep(ids, rows, None, px[None], [frame], {"n_frames": self.n_frames + k + 1}, blocks))
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


def step_layout(info: dict, n_steps: int, source_size: tuple[int, int]) -> StepLayout:
    size = int(info["vision.image_size"])
    return StepLayout("gemma3", 1, (size, size), visual_rows=-1, text_before=STEP_TEXT_TOKENS[0],
                      text_after=STEP_TEXT_TOKENS[1])


def step_positions(layout: StepLayout, start: int) -> tuple[Optional[np.ndarray], int]:
    return None, start + layout.tokens_per_step


def text_positions(start: int, n: int) -> Optional[np.ndarray]:
    return None


def preprocess(frames: np.ndarray, layout: StepLayout, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    return preprocess_frames(frames, image_size=layout.frame_size[0], mean=mean, std=std)
