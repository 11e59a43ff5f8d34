"""InternVL3 video prompts, as transformers' InternVL processor makes them.

The chat template of the ``-hf`` checkpoints (:data:`CHAT_TEMPLATE`, rendered by
:class:`statekv.text.ChatTemplate`) puts ``<video>\\n`` in the user turn, and
``InternVLProcessor.replace_video_token`` replaces ``<video>`` by
``Frame1: <img><IMG_CONTEXT>*256</img>\\nFrame2: ...`` (frames joined by newlines)::

    [<|im_start|>system\\n{system}<|im_end|>\\n]<|im_start|>user\\n      <- prefix
    Frame1: <img><IMG_CONTEXT>...</img>\\n                              <- step 1
    Frame2: <img><IMG_CONTEXT>...</img>\\n                              <- step 2
    ...
    {question}<|im_end|>\\n<|im_start|>assistant\\n                      <- question

For StateKV the prompt is cut into a prefix (everything before ``Frame1``), one step per frame
(``Frame{i}: <img>``, the visual rows, ``</img>`` and the newline after it: the joiner, or the
template's newline after ``<video>`` for the last frame) and the question (the rest).
:class:`VideoPromptBuilder` makes the parts, each tokenized on its own; the chat
(:class:`statekv.VideoChat`) and :func:`build_video_prompt` both use it. The wrap tokens are
special tokens, so the parts' ids are the whole prompt's, except that a question beginning with
a newline would merge with the last step's newline in a whole-prompt tokenization.

Example::

    import statekv
    from statekv.families import internvl
    from statekv.text import tokenizer_from_gguf

    m = statekv.Model("InternVL3-1B-Q8_0.gguf", mmproj="mmproj-InternVL3-1B-Q8_0.gguf")
    pixels = internvl.preprocess_frames(frames)                 # uint8 (n, H, W, 3), 1 fps
    rows = m.encode_frames(pixels)                              # (n, 256, n_embd)
    p = internvl.build_video_prompt(tokenizer_from_gguf(m.path), len(frames), "What happens?")
    s = m.session(mode="statekv", budget=4096)
    s.prefill(p.prefix)
    for ids, r, feats in zip(p.steps, p.visual_rows, rows):
        s.add_step(ids, embeddings=feats, embedding_rows=r)
    answer = s.generate(p.question, max_tokens=64)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...text.chat_template import ChatTemplate
from ..base import encode, split_video_prompt, token_id

__all__ = [
    "IMG_START", "IMG_END", "IMG_CONTEXT", "TOKENS_PER_FRAME", "CHAT_TEMPLATE", "VIDEO_PLACEHOLDER",
    "VideoPromptBuilder", "video_frames_text", "video_prompt_text", "VideoPrompt", "build_video_prompt",
]

IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
TOKENS_PER_FRAME = 256  # (448 / 14 / 2)^2
# Where the template puts the video; the newline after it ends the last frame's step.
VIDEO_PLACEHOLDER = "<video>\n"

# The chat template of transformers' InternVL checkpoints (OpenGVLab/InternVL3-*-hf).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}"
    "{{ '<image>\n' }}"
    "{% elif content['type'] == 'video' %}"
    "{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{{'<|im_end|>\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{'<|im_start|>assistant\n' }}"
    "{% endif %}"
)


def _frame_text(number: int, tokens_per_frame: int) -> str:
    return f"Frame{number}: {IMG_START}{IMG_CONTEXT * tokens_per_frame}{IMG_END}"


def video_frames_text(n_frames: int, tokens_per_frame: int = TOKENS_PER_FRAME) -> str:
    """What ``InternVLProcessor.replace_video_token`` puts in place of ``<video>``."""
    if n_frames <= 0:
        raise ValueError(f"n_frames must be positive, got {n_frames}")
    return "\n".join(_frame_text(i + 1, tokens_per_frame) for i in range(n_frames))


def video_prompt_text(n_frames: int, question: str, system: str | None = None,
                      tokens_per_frame: int = TOKENS_PER_FRAME, add_generation_prompt: bool = True) -> str:
    """The whole prompt text of one user turn ``[video, question]`` (chat template of the ``-hf``
    checkpoints, ``<video>`` expanded as the processor does); ``system`` adds a system turn."""
    before, after = split_video_prompt(ChatTemplate(CHAT_TEMPLATE), VIDEO_PLACEHOLDER, question, system,
                                       add_generation_prompt)
    return before + video_frames_text(n_frames, tokens_per_frame) + "\n" + after


class VideoPromptBuilder:
    """The parts of an InternVL video prompt, each tokenized on its own: :meth:`prefix`, then
    :meth:`step` per frame (numbered from 1 across the whole chat), and :meth:`question`.

    ``tokenizer``: ``statekv.text.tokenizer_from_gguf(text_gguf)`` or the checkpoint's
    transformers tokenizer; ``tokens_per_frame``: visual rows per frame (the encoder's)."""

    def __init__(self, tokenizer: Any, tokens_per_frame: int = TOKENS_PER_FRAME, template: str = CHAT_TEMPLATE):
        self.tokenizer = tokenizer
        self.tokens_per_frame = int(tokens_per_frame)
        self.template = ChatTemplate(template)
        # Checks that the vocabulary has the image tokens, once.
        self.img_start, self.img_context, self.img_end = (token_id(tokenizer, t, "an InternVL")
                                                          for t in (IMG_START, IMG_CONTEXT, IMG_END))
        self.newline = encode(tokenizer, "\n")

    def prefix(self, system: str | None = None) -> list[int]:
        """Everything before the first frame (system turn, user header)."""
        before, _ = split_video_prompt(self.template, VIDEO_PLACEHOLDER, "", system)
        return encode(self.tokenizer, before)

    def step(self, number: int) -> tuple[list[int], np.ndarray]:
        """Frame ``number`` (from 1): its ids and where its visual rows go in them."""
        head = encode(self.tokenizer, f"Frame{number}: ")
        ids = head + [self.img_start] + [self.img_context] * self.tokens_per_frame + [self.img_end] + self.newline
        rows = np.arange(len(head) + 1, len(head) + 1 + self.tokens_per_frame, dtype=np.int32)
        return ids, rows

    def step_length(self, number: int) -> int:
        """Tokens of frame ``number``'s step."""
        return len(encode(self.tokenizer, f"Frame{number}: ")) + 2 + self.tokens_per_frame + len(self.newline)

    def question(self, question: str, add_generation_prompt: bool = True) -> list[int]:
        """The rest of the prompt: the question, the end of the user turn, the assistant header."""
        _, after = split_video_prompt(self.template, VIDEO_PLACEHOLDER, question, None, add_generation_prompt)
        return encode(self.tokenizer, after)


@dataclass
class VideoPrompt:
    """A video prompt cut for StateKV: ``prefix`` + ``steps[0]`` + ... + ``question`` is the whole
    prompt's token ids; ``visual_rows[i]`` are the indices, within ``steps[i]``, of frame i's
    ``<IMG_CONTEXT>`` tokens (where its visual rows go, in order)."""

    prefix: list[int]
    steps: list[list[int]]
    visual_rows: list[np.ndarray]
    question: list[int]
    text: str = field(repr=False, default="")

    @property
    def ids(self) -> list[int]:
        out = list(self.prefix)
        for s in self.steps:
            out += s
        return out + list(self.question)

    def sequence_rows(self) -> np.ndarray:
        """Indices of all visual rows in :attr:`ids`, frame by frame (for a whole-prompt forward)."""
        rows, offset = [], len(self.prefix)
        for s, r in zip(self.steps, self.visual_rows):
            rows.append(r + offset)
            offset += len(s)
        return np.concatenate(rows).astype(np.int32)

    def step_offsets(self) -> list[int]:
        """Index in :attr:`ids` of each step's first token."""
        out, offset = [], len(self.prefix)
        for s in self.steps:
            out.append(offset)
            offset += len(s)
        return out


def build_video_prompt(tokenizer: Any, n_frames: int, question: str, system: str | None = None,
                       tokens_per_frame: int = TOKENS_PER_FRAME) -> VideoPrompt:
    """The prompt of one user turn ``[video, question]`` cut into prefix, frame steps and question
    by :class:`VideoPromptBuilder` (what the chat runs)."""
    if n_frames <= 0:
        raise ValueError(f"n_frames must be positive, got {n_frames}")
    b = VideoPromptBuilder(tokenizer, tokens_per_frame)
    steps, rows = zip(*(b.step(i + 1) for i in range(n_frames)))
    return VideoPrompt(prefix=b.prefix(system), steps=list(steps), visual_rows=list(rows),
                       question=b.question(question),
                       text=video_prompt_text(n_frames, question, system, tokens_per_frame))
