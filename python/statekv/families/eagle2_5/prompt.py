"""Eagle 2.5 video prompts, as NVlabs' Eagle 2.5 processor writes them (read from its processing
code; the released ``chat_template.json`` could not be read here, so the turn format is ChatML with
the processor's default system prompt).

The processor replaces a video by ``The first video: `` followed, for each frame, by
``Frame {i} sample at {t:.2f}s: <img>`` + 256 ``<IMG_CONTEXT>`` + ``</img>`` (frames joined with
nothing; one tile per frame). statekv's steps::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\nThe first video:   <- prefix
    Frame 1 sample at 0.00s: <img><IMG_CONTEXT>...</img>                                              <- step 1
    Frame 2 sample at 1.00s: <img>...</img>                                                             <- step 2
    \\n{question}<|im_end|>\\n<|im_start|>assistant\\n                                                  <- question

(the newline between the video and the question is statekv's choice: the processor's template
puts content items one after another). Parts are tokenized on their own and give the whole
prompt's ids (``<img>``, ``</img>`` and ``<IMG_CONTEXT>`` are special tokens of Eagle's Qwen2.5
vocabulary; the space after ``The first video:`` goes with the first frame's text, where a
whole-prompt tokenization puts it).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ...text.chat_template import ChatTemplate
from ..base import encode, split_video_prompt, token_id

__all__ = ["IMG_START", "IMG_END", "IMG_CONTEXT", "TOKENS_PER_FRAME", "DEFAULT_SYSTEM", "CHAT_TEMPLATE",
           "frame_text", "VideoPromptBuilder"]

IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
TOKENS_PER_FRAME = 256  # (448 / 14 / 2)^2
DEFAULT_SYSTEM = "You are a helpful assistant."
# The space after the colon tokenizes with the first frame's "Frame" (one " Frame" token in a
# whole-prompt tokenization), so it belongs to the first step.
VIDEO_INTRO = "The first video:"
VIDEO_PLACEHOLDER = "<video>"
# ChatML with the processor's default system prompt; a video item renders as the `<video>` marker
# that the processor expands (followed by the newline before the question).
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif item['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def frame_text(number: int, seconds: float) -> str:
    """The text before frame ``number``'s (from 1) image (the first frame's starts with the space
    after ``The first video:``)."""
    return ("" if number > 1 else " ") + f"Frame {number} sample at {float(seconds):.2f}s: "


class VideoPromptBuilder:
    """The parts of an Eagle 2.5 video prompt: :meth:`prefix`, :meth:`step` per frame (numbered
    from 1 across the chat), :meth:`question`."""

    def __init__(self, tokenizer: Any, tokens_per_frame: int = TOKENS_PER_FRAME):
        self.tokenizer = tokenizer
        self.tokens_per_frame = int(tokens_per_frame)
        self.template = ChatTemplate(CHAT_TEMPLATE)
        self.img_start, self.img_context, self.img_end = (token_id(tokenizer, t, "an Eagle 2.5")
                                                          for t in (IMG_START, IMG_CONTEXT, IMG_END))

    def prefix(self, system: Optional[str] = None) -> list[int]:
        before, _ = split_video_prompt(self.template, VIDEO_PLACEHOLDER, "", system)
        return encode(self.tokenizer, before + VIDEO_INTRO)

    def step(self, number: int, seconds: float) -> tuple[list[int], np.ndarray]:
        head = encode(self.tokenizer, frame_text(number, seconds)) + [self.img_start]
        ids = head + [self.img_context] * self.tokens_per_frame + [self.img_end]
        return ids, np.arange(len(head), len(head) + self.tokens_per_frame, dtype=np.int32)

    def step_length(self, number: int, seconds: float) -> int:
        return len(encode(self.tokenizer, frame_text(number, seconds))) + 2 + self.tokens_per_frame

    def question(self, question: str) -> list[int]:
        _, after = split_video_prompt(self.template, VIDEO_PLACEHOLDER, question)
        return encode(self.tokenizer, after)
