"""Gemma 3 video prompts: a video is a sequence of images, as Gemma 3's processor wraps them.

Gemma 3 has no video input of its own. statekv gives it a video the way its processor gives a
series of images: the user turn holds, per frame, its timestamp as text (``MM:SS``) and an image,
which the processor expands to ``\\n\\n<start_of_image>`` + 256 ``<image_soft_token>`` +
``<end_of_image>\\n\\n``; the question follows. The image tokens of one frame attend to each other
in both directions (transformers' ``token_type_ids``, llama.cpp's non-causal image batches): a
step's ``blocks`` mark them. Chat format (:data:`CHAT_TEMPLATE`, written here after the turn format
of Gemma 3's released template: ``<start_of_turn>user`` / ``model``, a system prompt prepended to
the first user turn, text items trimmed)::

    <bos><start_of_turn>user\\n[{system}\\n\\n]                               <- prefix
    00:00\\n\\n<start_of_image><image_soft_token>...<end_of_image>\\n\\n     <- step 1
    00:01\\n\\n<start_of_image>...<end_of_image>\\n\\n                       <- step 2
    {question}<end_of_turn>\\n<start_of_turn>model\\n                        <- question

Each part is tokenized on its own (its ids are the whole prompt's: the wrap tokens are special
tokens and ``\\n\\n`` one piece).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from ...text.chat_template import ChatTemplate
from ..base import encode, token_id

__all__ = ["CHAT_TEMPLATE", "START_OF_IMAGE", "END_OF_IMAGE", "IMAGE_SOFT_TOKEN", "TOKENS_PER_FRAME",
           "timestamp_text", "VideoPromptBuilder"]

START_OF_IMAGE, END_OF_IMAGE, IMAGE_SOFT_TOKEN = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
TOKENS_PER_FRAME = 256  # (896 / 14 / 4)^2

# statekv's Gemma 3 chat template (python/statekv/data/templates/gemma3-statekv.jinja; the turn
# format of Gemma 3's released template, plus a "video" item that marks where the frames go).
CHAT_TEMPLATE = (Path(__file__).resolve().parent.parent.parent / "data" / "templates" /
                 "gemma3-statekv.jinja").read_text(encoding="utf-8")


def timestamp_text(seconds: float) -> str:
    """``MM:SS`` of a frame's time (minutes grow past 59)."""
    s = max(0, int(round(float(seconds))))
    return f"{s // 60:02d}:{s % 60:02d}"


class VideoPromptBuilder:
    """The parts of a Gemma 3 video prompt: :meth:`prefix`, :meth:`step` per frame, :meth:`question`.
    ``tokenizer``: ``statekv.text.tokenizer_from_gguf(text_gguf)`` (a Gemma 3 vocabulary with the
    image tokens) or the checkpoint's transformers tokenizer."""

    def __init__(self, tokenizer: Any, tokens_per_frame: int = TOKENS_PER_FRAME, bos: str = "<bos>"):
        self.tokenizer = tokenizer
        self.tokens_per_frame = int(tokens_per_frame)
        self.template = ChatTemplate(CHAT_TEMPLATE, bos_token=bos)
        self.start, self.end, self.soft = (token_id(tokenizer, t, "a Gemma 3")
                                           for t in (START_OF_IMAGE, END_OF_IMAGE, IMAGE_SOFT_TOKEN))
        self.gap = encode(tokenizer, "\n\n")

    def _split(self, question: str, system: Optional[str]) -> tuple[str, str]:
        messages = [] if system is None else [{"role": "system", "content": system}]
        messages.append({"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "\x00q\x00"}]})
        before, after = self.template.render(messages, add_generation_prompt=True).split("<video>")
        return before, after.replace("\x00q\x00", question.strip())

    def prefix(self, system: Optional[str] = None) -> list[int]:
        return encode(self.tokenizer, self._split("", system)[0])

    def step(self, seconds: float) -> tuple[list[int], np.ndarray, np.ndarray]:
        """The frame at ``seconds``: its ids, where its visual rows go, and its blocks."""
        head = encode(self.tokenizer, timestamp_text(seconds)) + self.gap + [self.start]
        ids = head + [self.soft] * self.tokens_per_frame + [self.end] + self.gap
        rows = np.arange(len(head), len(head) + self.tokens_per_frame, dtype=np.int32)
        blocks = np.zeros(len(ids), dtype=np.int32)
        blocks[rows] = 1
        return ids, rows, blocks

    def step_length(self, seconds: float) -> int:
        return len(encode(self.tokenizer, timestamp_text(seconds))) + 2 * len(self.gap) + 2 + self.tokens_per_frame

    def question(self, question: str) -> list[int]:
        return encode(self.tokenizer, self._split(question, None)[1])
