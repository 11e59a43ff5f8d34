"""Qwen3-VL video prompts and multi-axis positions, as transformers' Qwen3-VL processor and model
make them.

Prompt (:func:`build_video_prompt`, :class:`VideoPromptBuilder`, both what the chat runs): the
Qwen3-VL chat template (:data:`CHAT_TEMPLATE`, rendered by :class:`statekv.text.ChatTemplate`) puts
``<|vision_start|><|video_pad|><|vision_end|>`` in the user turn, and the processor replaces the
``<|video_pad|>`` by, for each temporal patch, ``<{t:.1f} seconds>`` + ``<|vision_start|>`` +
``<|video_pad|>`` x rows + ``<|vision_end|>`` -- so the frame steps sit *inside* the template's
own ``<|vision_start|>`` ... ``<|vision_end|>`` (nested, as the processor produces them)::

    [<|im_start|>system\\n{system}<|im_end|>\\n]<|im_start|>user\\n<|vision_start|>   <- prefix
    <0.5 seconds><|vision_start|><|video_pad|>...<|vision_end|>                   <- step 1
    <2.5 seconds><|vision_start|><|video_pad|>...<|vision_end|>                   <- step 2
    ...
    <|vision_end|>{question}<|im_end|>\\n<|im_start|>assistant\\n                   <- question

One frame step = one temporal patch with its timestamp and wrapper tokens. Special tokens split
the text before BPE, so tokenizing the parts separately gives exactly the whole prompt's ids.

Positions (3 axes: t, h, w) are those of transformers' ``Qwen3VLModel.get_rope_index``: text
tokens take ``p, p, p`` and advance ``p`` by one; the ``gh x gw`` merged rows of a temporal patch
(grid split per temporal patch, t = 1) take ``(p, p + row, p + col)``, then ``p += max(gh, gw)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ...text.chat_template import ChatTemplate
from ..base import encode, split_video_prompt, token_id
from .preprocess import MERGE_SIZE, PATCH_SIZE

__all__ = [
    "CHAT_TEMPLATE", "VISION_START", "VISION_END", "VIDEO_PAD", "merged_grid", "timestamp_text", "text_positions", "step_positions",
    "Step", "VideoPrompt", "VideoPromptBuilder", "build_video_prompt", "video_prompt_text",
]

VISION_START, VISION_END, VIDEO_PAD = "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"

# The user/system/generation part of the released Qwen3-VL Instruct chat template (no tools).
CHAT_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].content is string %}{{- messages[0].content }}"
    "{%- else %}{%- for content in messages[0].content %}{%- if 'text' in content %}{{- content.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif content.type == 'video' or 'video' in content %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in content %}{{- content.text }}"
    "{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def merged_grid(height: int, width: int, patch_size: int = PATCH_SIZE, merge_size: int = MERGE_SIZE) -> tuple[int, int]:
    """(rows, cols) of visual rows of one temporal patch of ``height x width`` frames."""
    unit = patch_size * merge_size
    if height % unit or width % unit or height <= 0 or width <= 0:
        raise ValueError(f"frame size {height}x{width} is not a positive multiple of {unit}")
    return height // unit, width // unit


def timestamp_text(seconds: float) -> str:
    """``<{t:.1f} seconds>``: the text before each temporal patch."""
    return f"<{seconds:.1f} seconds>"


def text_positions(start: int, n: int) -> np.ndarray:
    """``(3, n)`` positions of ``n`` text tokens from ``start``: ``p, p, p``, one more each."""
    return np.tile(np.arange(start, start + n, dtype=np.int32), (3, 1))


def step_positions(start: int, text_before: int, grid: tuple[int, int], text_after: int) -> tuple[np.ndarray, int]:
    """Positions ``(3, text_before + gh * gw + text_after)`` of a step starting at ``start``, and
    the next step's start (``get_rope_index``): text tokens take ``(p, p, p)``; the merged rows
    take ``(p, p + row, p + col)``, then ``p`` advances by ``max(gh, gw)``."""
    gh, gw = int(grid[0]), int(grid[1])
    pos = np.empty((3, text_before + gh * gw + text_after), dtype=np.int32)
    pos[:, :text_before] = text_positions(start, text_before)
    p = start + text_before
    rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    visual = slice(text_before, text_before + gh * gw)
    pos[0, visual] = p
    pos[1, visual] = p + rows.ravel()
    pos[2, visual] = p + cols.ravel()
    p += max(gh, gw)
    pos[:, text_before + gh * gw:] = text_positions(p, text_after)
    return pos, p + text_after


@dataclass
class Step:
    """One frame step: ``ids`` (timestamp, ``<|vision_start|>``, the visual rows, ``<|vision_end|>``),
    ``rows`` the indices in ``ids`` of the ``<|video_pad|>`` tokens (row r of the temporal patch's
    ``encode_frames`` output goes to ``rows[r]``), ``positions`` (3, len(ids))."""

    ids: np.ndarray
    rows: np.ndarray
    positions: np.ndarray
    seconds: float


@dataclass
class VideoPrompt:
    """A video prompt cut for StateKV: ``prefix`` + steps + ``question`` is the whole prompt."""

    prefix_ids: np.ndarray
    prefix_positions: np.ndarray
    steps: list[Step]
    question_ids: np.ndarray
    question_positions: np.ndarray
    text: str = field(repr=False, default="")

    @property
    def ids(self) -> np.ndarray:
        return np.concatenate([self.prefix_ids] + [s.ids for s in self.steps] + [self.question_ids]).astype(np.int32)

    @property
    def positions(self) -> np.ndarray:
        return np.concatenate([self.prefix_positions] + [s.positions for s in self.steps] + [self.question_positions],
                              axis=1).astype(np.int32)

    def sequence_rows(self) -> np.ndarray:
        """Indices in :attr:`ids` of all visual rows, temporal patch by temporal patch."""
        rows, offset = [], len(self.prefix_ids)
        for s in self.steps:
            rows.append(s.rows + offset)
            offset += len(s.ids)
        return np.concatenate(rows).astype(np.int32) if rows else np.zeros(0, np.int32)


class VideoPromptBuilder:
    """Incremental Qwen3-VL video prompt: :meth:`prefix`, then :meth:`step` per temporal patch as
    frames arrive, and :meth:`question` at any moment (it does not advance the builder: a later
    step continues the video). Token ids and positions are those of the whole prompt."""

    def __init__(self, tokenizer: Any, grid: tuple[int, int], template: str = CHAT_TEMPLATE):
        self.tokenizer = tokenizer
        self.grid = (int(grid[0]), int(grid[1]))
        self.template = ChatTemplate(template)
        self.vision_start = token_id(tokenizer, VISION_START, "a Qwen3-VL")
        self.vision_end = token_id(tokenizer, VISION_END, "a Qwen3-VL")
        self.video_pad = token_id(tokenizer, VIDEO_PAD, "a Qwen3-VL")
        self.next_position = 0
        self._started = False

    def prefix(self, system: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Ids and positions of everything before the first timestamp (system turn, user header,
        the template's ``<|vision_start|>``)."""
        if self._started:
            raise ValueError("prefix() must come first")
        self._started = True
        before, _ = split_video_prompt(self.template, VIDEO_PAD, "", system)
        ids = np.asarray(encode(self.tokenizer, before), dtype=np.int32)
        pos = text_positions(self.next_position, len(ids))
        self.next_position += len(ids)
        return ids, pos

    def step(self, seconds: float) -> Step:
        """The next temporal patch, shown at ``seconds`` (see :func:`frame_timestamps`)."""
        if not self._started:
            raise ValueError("call prefix() before the first step")
        gh, gw = self.grid
        ts = encode(self.tokenizer, timestamp_text(seconds))
        n_text = len(ts) + 1
        ids = np.asarray(ts + [self.vision_start] + [self.video_pad] * (gh * gw) + [self.vision_end], dtype=np.int32)
        pos, self.next_position = step_positions(self.next_position, n_text, self.grid, 1)
        rows = np.arange(n_text, n_text + gh * gw, dtype=np.int32)
        return Step(ids=ids, rows=rows, positions=pos, seconds=float(seconds))

    def question(self, question: str, add_generation_prompt: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Ids and positions of the rest of the prompt after the steps so far: the template's
        ``<|vision_end|>``, the question, the end of the user turn and the assistant header."""
        _, after = split_video_prompt(self.template, VIDEO_PAD, question, None, add_generation_prompt)
        ids = np.asarray(encode(self.tokenizer, after), dtype=np.int32)
        return ids, text_positions(self.next_position, len(ids))

    def step_length(self, seconds: float) -> int:
        """Tokens of a step shown at ``seconds``."""
        return len(encode(self.tokenizer, timestamp_text(seconds))) + 2 + self.grid[0] * self.grid[1]


def video_prompt_text(timestamps: Sequence[float], grid: tuple[int, int], question: str,
                      system: str | None = None, add_generation_prompt: bool = True) -> str:
    """The whole prompt text (chat template + the processor's video expansion)."""
    n = int(grid[0]) * int(grid[1])
    video = "".join(timestamp_text(t) + VISION_START + VIDEO_PAD * n + VISION_END for t in timestamps)
    before, after = split_video_prompt(ChatTemplate(CHAT_TEMPLATE), VIDEO_PAD, question, system, add_generation_prompt)
    return before + video + after


def build_video_prompt(tokenizer: Any, timestamps: Sequence[float], grid: tuple[int, int], question: str,
                       system: str | None = None, add_generation_prompt: bool = True) -> VideoPrompt:
    """The prompt of one user turn ``[video, question]`` cut into prefix, one step per temporal
    patch (``timestamps`` from :func:`frame_timestamps`, ``grid`` from :func:`merged_grid`) and
    question, with the positions of ``get_rope_index``."""
    b = VideoPromptBuilder(tokenizer, grid)
    pids, ppos = b.prefix(system)
    steps = [b.step(t) for t in timestamps]
    qids, qpos = b.question(question, add_generation_prompt)
    return VideoPrompt(pids, ppos, steps, qids, qpos,
                       text=video_prompt_text(timestamps, grid, question, system, add_generation_prompt))
