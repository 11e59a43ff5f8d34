"""InternVL3 frames and video prompts, as transformers' InternVL processor makes them.

Preprocessing (:func:`preprocess_frames`): each frame is one tile, as the StateKV authors run
InternVL3 on videos: resized to ``image_size`` x ``image_size`` with PIL's bicubic filter (the
``GotOcr2ImageProcessor`` of the ``-hf`` checkpoints, ``crop_to_patches=False``), rescaled by
1/255 and normalized with the mmproj's mean/std (ImageNet's for InternVL3).

Prompt (:func:`video_prompt_text`, :func:`build_video_prompt`): the chat template of the ``-hf``
checkpoints puts ``<video>\\n`` in the user turn, and ``InternVLProcessor.replace_video_token``
replaces ``<video>`` by ``Frame1: <img><IMG_CONTEXT>*256</img>\\nFrame2: ...`` (frames joined by
newlines)::

    [<|im_start|>system\\n{system}<|im_end|>\\n]<|im_start|>user\\n
    Frame1: <img><IMG_CONTEXT>...</img>\\n
    Frame2: <img><IMG_CONTEXT>...</img>\\n
    ...
    {question}<|im_end|>\\n<|im_start|>assistant\\n

For StateKV the prompt is cut into a prefix (everything before ``Frame1``), one step per frame
(``Frame{i}: <img>``, the 256 visual rows, ``</img>`` and the newline after it) and the question
(the rest). The cut is made on the token ids of the whole prompt, so the concatenation is exactly
what the processor's tokenizer produces for the whole text.

Example::

    import statekv
    from statekv.tokenizer import tokenizer_from_gguf
    from statekv.vision import internvl

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
from typing import Any, Sequence

import numpy as np

__all__ = [
    "IMAGE_MEAN", "IMAGE_STD", "IMG_START", "IMG_END", "IMG_CONTEXT", "CHAT_TEMPLATE",
    "preprocess_frames", "video_frames_text", "video_prompt_text", "VideoPrompt", "build_video_prompt",
]

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
TOKENS_PER_FRAME = 256  # (448 / 14 / 2)^2

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


def preprocess_frames(frames, image_size: int = 448, mean: Sequence[float] = IMAGE_MEAN,
                      std: Sequence[float] = IMAGE_STD) -> np.ndarray:
    """RGB frames uint8 ``(n, H, W, 3)`` -> pixels float32 ``(n, 3, image_size, image_size)``.

    Per frame: PIL bicubic resize to ``image_size`` x ``image_size`` (any input size and aspect),
    ``x / 255``, ``(x - mean) / std`` -- transformers' ``GotOcr2ImageProcessor`` (PIL backend,
    one tile). Pass the model's ``info()["vision.image_mean"]`` / ``image_std`` to use the file's
    values."""
    from PIL import Image

    arr = np.asarray(frames)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must have shape (n, height, width, 3) (RGB), got {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB, got dtype {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"frames must be non-empty, got shape {arr.shape}")
    size = int(image_size)
    if size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    m = np.asarray(mean, dtype=np.float64).reshape(3, 1, 1)
    s = np.asarray(std, dtype=np.float64).reshape(3, 1, 1)
    if m.size != 3 or s.size != 3 or np.any(s <= 0):
        raise ValueError("mean and std must have 3 values, std positive")
    out = np.empty((arr.shape[0], 3, size, size), dtype=np.float32)
    for i, frame in enumerate(arr):
        img = Image.fromarray(np.ascontiguousarray(frame), mode="RGB")
        resized = np.asarray(img.resize((size, size), resample=Image.Resampling.BICUBIC), dtype=np.uint8)
        x = resized.transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255)
        out[i] = ((x - m.astype(np.float32)) / s.astype(np.float32))
    return out


def video_frames_text(n_frames: int, tokens_per_frame: int = TOKENS_PER_FRAME) -> str:
    """What ``InternVLProcessor.replace_video_token`` puts in place of ``<video>``."""
    if n_frames <= 0:
        raise ValueError(f"n_frames must be positive, got {n_frames}")
    return "\n".join(f"Frame{i + 1}: {IMG_START}{IMG_CONTEXT * tokens_per_frame}{IMG_END}" for i in range(n_frames))


def video_prompt_text(n_frames: int, question: str, system: str | None = None,
                      tokens_per_frame: int = TOKENS_PER_FRAME, add_generation_prompt: bool = True) -> str:
    """The whole prompt text of one user turn ``[video, question]`` (chat template of the ``-hf``
    checkpoints, ``<video>`` expanded as the processor does); ``system`` adds a system turn."""
    text = ""
    if system is not None:
        text += f"<|im_start|>system\n{system}<|im_end|>\n"
    text += f"<|im_start|>user\n{video_frames_text(n_frames, tokens_per_frame)}\n{question}<|im_end|>\n"
    if add_generation_prompt:
        text += "<|im_start|>assistant\n"
    return text


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` with special tokens parsed and nothing added, from a
    ``tokenizers.Tokenizer`` (statekv.tokenizer.tokenizer_from_gguf) or a transformers tokenizer."""
    enc = tokenizer.encode(text, add_special_tokens=False)
    return [int(i) for i in (enc.ids if hasattr(enc, "ids") else enc)]


def _token_id(tokenizer: Any, token: str) -> int:
    tid = tokenizer.token_to_id(token) if hasattr(tokenizer, "token_to_id") else tokenizer.convert_tokens_to_ids(token)
    ids = _encode(tokenizer, token)
    if tid is None or ids != [tid]:
        raise ValueError(f"the tokenizer has no single token {token!r} (not an InternVL vocabulary)")
    return int(tid)


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
    """Tokenize :func:`video_prompt_text` and cut it into prefix, frame steps and question.

    ``tokenizer``: ``statekv.tokenizer.tokenizer_from_gguf(text_gguf)`` or the checkpoint's
    transformers tokenizer. Step i runs from the first token of ``Frame{i+1}: `` through
    ``</img>`` and the newline token after it (when the newline is a token of its own; a question
    that starts with more whitespace makes BPE merge it, and it then opens the question)."""
    text = video_prompt_text(n_frames, question, system, tokens_per_frame)
    ids = _encode(tokenizer, text)
    start, end, ctx = (_token_id(tokenizer, t) for t in (IMG_START, IMG_END, IMG_CONTEXT))
    nl = _encode(tokenizer, "\n")
    arr = np.asarray(ids)
    opens, closes = np.flatnonzero(arr == start), np.flatnonzero(arr == end)
    if len(opens) != n_frames or len(closes) != n_frames:
        raise ValueError(f"found {len(opens)} {IMG_START} / {len(closes)} {IMG_END} tokens for {n_frames} frames "
                         "(the question or system text must not contain them)")
    prefix_text = text[: text.index("Frame1: ")]
    prefix = _encode(tokenizer, prefix_text)
    if ids[: len(prefix)] != prefix:
        raise ValueError("the prompt's tokens do not start with the prefix's tokens")
    steps, rows = [], []
    pos = len(prefix)
    for i, (o, c) in enumerate(zip(opens, closes)):
        if c - o - 1 != tokens_per_frame or np.any(arr[o + 1:c] != ctx):
            raise ValueError(f"frame {i + 1}: expected {tokens_per_frame} {IMG_CONTEXT} tokens between "
                             f"{IMG_START} and {IMG_END}")
        stop = int(c) + 1
        if ids[stop: stop + len(nl)] == nl:
            stop += len(nl)
        steps.append(ids[pos:stop])
        rows.append(np.arange(o + 1 - pos, c - pos, dtype=np.int32))
        pos = stop
    return VideoPrompt(prefix=prefix, steps=steps, visual_rows=rows, question=ids[pos:], text=text)
