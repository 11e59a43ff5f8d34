"""Eagle 2.5's step layout: one frame per step, ``Frame {i} sample at {t}s: <img>`` + 256 visual
rows + ``</img>`` (:mod:`.prompt`), positions on one axis (the session's own).

:func:`step_layout` is the benchmarks' fixed-size step: the text of the first frame (``Frame 1
sample at 0.00s: `` is 13 Qwen tokens, then ``<img>``; ``</img>`` after)."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from ..base import PlannedStep, StepLayout, floats
from .preprocess import IMAGE_MEAN, IMAGE_STD, preprocess_frames
from .prompt import VideoPromptBuilder

__all__ = ["ChatLayout", "STEP_TEXT_TOKENS", "step_layout", "step_positions", "text_positions", "preprocess"]

STEP_TEXT_TOKENS = (14, 1)


class ChatLayout:
    """Eagle 2.5: one frame per step, numbered from 1 across the chat, with its time."""

    family = "eagle2_5"
    frames_per_step = 1

    def __init__(self, tokenizer: Any, info: dict):
        self.image_size = int(info["vision.image_size"])
        self.mean = floats(info["vision.image_mean"]) or IMAGE_MEAN
        self.std = floats(info["vision.image_std"]) or IMAGE_STD
        side = self.image_size // int(info["vision.patch_size"]) // 2
        self.builder = VideoPromptBuilder(tokenizer, side * side)
        self.n_frames = 0
        self.waiting: list = []  # never used: every frame is a complete step

    def prefix(self, system: Optional[str]):
        return self.builder.prefix(system), None

    def fix_size(self, n_frames: int, height: int, width: int) -> None:
        pass  # every frame is resized to one tile

    def video_tokens(self, timestamps: Sequence[float]) -> int:
        return sum(self.builder.step_length(self.n_frames + k + 1, t) for k, t in enumerate(timestamps))

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        return preprocess_frames(rgb[None], self.image_size, self.mean, self.std)[0]

    def plan(self, items: list) -> tuple[list[PlannedStep], list]:
        out = []
        for k, (frame, px) in enumerate(items):
            number = self.n_frames + k + 1
            ids, rows = self.builder.step(number, frame.timestamp)
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


def step_layout(info: dict, n_steps: int, source_size: tuple[int, int]) -> StepLayout:
    size = int(info["vision.image_size"])
    return StepLayout("eagle2_5", 1, (size, size), visual_rows=-1, text_before=STEP_TEXT_TOKENS[0],
                      text_after=STEP_TEXT_TOKENS[1])


def step_positions(layout: StepLayout, start: int) -> tuple[Optional[np.ndarray], int]:
    return None, start + layout.tokens_per_step


def text_positions(start: int, n: int) -> Optional[np.ndarray]:
    return None


def preprocess(frames: np.ndarray, layout: StepLayout, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    return preprocess_frames(frames, image_size=layout.frame_size[0], mean=mean, std=std)
